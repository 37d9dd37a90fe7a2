"""Build of the moe_ext extension.

CUDA kernels are built whenever torch has CUDA and nvcc is found (CUDA_HOME), with or without a
visible GPU. MOE_EXT_BUILD_CUDA=auto|0|1 overrides the choice. The extension uses only the Python
limited API (abi3), so one build serves every Python >= 3.9 of the same torch.
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def cuda_library_includes() -> list[str]:
    """Headers of the CUDA libraries torch's wheels ship (cusparse.h, cublas_v2.h, ...), which a
    compiler-only CUDA install lacks and ATen/cuda/CUDAContext.h includes."""
    site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    return sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))


class BuildExt(BuildExtension.with_options(no_python_abi_suffix=False)):
    """Compiles into one fixed folder, build/temp, whatever the front end (an editable install
    otherwise uses a throw-away folder): ninja then reuses the objects of the previous build, so a
    `pip wheel .` after `pip install -e .` links without compiling the CUDA kernels again."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")


def want_cuda() -> bool:
    mode = os.environ.get("MOE_EXT_BUILD_CUDA", "auto").lower()
    available = bool(torch.version.cuda) and CUDA_HOME is not None
    if mode in ("1", "true", "yes"):
        if not available:
            raise RuntimeError("MOE_EXT_BUILD_CUDA=1 but torch has no CUDA or nvcc was not found")
        return True
    if mode in ("0", "false", "no"):
        return False
    return available


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extensions():
    with_cuda = want_cuda()
    # py_limited_api=True makes torch define Py_LIMITED_API (abi3) for every source.
    cxx = ["-O3", "-std=c++17"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    srcs = ["csrc/torch_bindings.cpp"] + sources("csrc/cpu/*.cpp")
    if not with_cuda:
        return [
            CppExtension(
                "moe_ext._C",
                srcs,
                include_dirs=include_dirs,
                extra_compile_args={"cxx": cxx},
                py_limited_api=True,
            )
        ]
    # torch raises when no GPU is visible and no arch list is given: default to Hopper.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    nvcc = [
        "-O3",
        "-std=c++17",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        "-DMOE_EXT_WITH_CUDA",
    ]
    if os.environ.get("NVCC_THREADS"):
        nvcc.append(f"--threads={os.environ['NVCC_THREADS']}")
    return [
        CUDAExtension(
            "moe_ext._C",
            srcs + sources("csrc/cuda/*.cu"),
            include_dirs=include_dirs + cuda_library_includes(),
            extra_compile_args={"cxx": cxx + ["-DMOE_EXT_WITH_CUDA"], "nvcc": nvcc},
            py_limited_api=True,
        )
    ]


setup(
    packages=find_packages(include=["moe_ext", "moe_ext.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
