# Finds libtorch for a CMake build of moe_ext (find_package(Torch)).
#
# Torch is taken from CMAKE_PREFIX_PATH / Torch_DIR, else from the torch of a Python interpreter:
# MOE_EXT_PYTHON (which, when given, wins), else the first python3 on the PATH. A CUDA build of
# torch makes find_package(Torch) require the CUDA toolkit even for a CPU-only build of moe_ext:
# CUDA_HOME (default /usr/local/cuda) names it, so that an nvcc wrapper elsewhere on the PATH does
# not make CMake guess the wrong root. With no GPU to detect, the CUDA arch list defaults to 9.0
# (Hopper), as in setup.py; TORCH_CUDA_ARCH_LIST overrides it.

macro(moe_ext_find_torch)
  if(NOT CUDA_TOOLKIT_ROOT_DIR)
    if(DEFINED ENV{CUDA_HOME})
      set(_moe_ext_cuda_home "$ENV{CUDA_HOME}")
    else()
      set(_moe_ext_cuda_home "/usr/local/cuda")
    endif()
    if(EXISTS "${_moe_ext_cuda_home}/bin/nvcc")
      set(CUDA_TOOLKIT_ROOT_DIR "${_moe_ext_cuda_home}")
      set(CUDAToolkit_ROOT "${_moe_ext_cuda_home}")
      if(NOT CMAKE_CUDA_COMPILER)
        set(CMAKE_CUDA_COMPILER "${_moe_ext_cuda_home}/bin/nvcc")
      endif()
    endif()
  endif()
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(TORCH_CUDA_ARCH_LIST "9.0")
  endif()

  if(NOT MOE_EXT_PYTHON)
    find_package(Torch QUIET)
    if(NOT Torch_FOUND)
      find_program(MOE_EXT_PYTHON NAMES python3 python REQUIRED)
    endif()
  endif()
  if(NOT Torch_FOUND)
    execute_process(
      COMMAND "${MOE_EXT_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE _moe_ext_torch_prefix
      OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE _moe_ext_torch_rc)
    if(NOT _moe_ext_torch_rc EQUAL 0)
      message(FATAL_ERROR "Torch not found: set CMAKE_PREFIX_PATH to libtorch, or MOE_EXT_PYTHON "
                          "to a Python with torch installed (tried ${MOE_EXT_PYTHON})")
    endif()
    list(PREPEND CMAKE_PREFIX_PATH "${_moe_ext_torch_prefix}")
    find_package(Torch REQUIRED)
  endif()
endmacro()
