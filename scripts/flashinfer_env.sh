# Sourced by the device scripts: unpack the carried FlashInfer (trimmed, see DESIGN 4.4) and
# apache-tvm-ffi into /tmp/site, reuse a carried pre-built all-to-all module, and keep NVLink
# multicast off everywhere.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
export FLASHINFER_WORKSPACE_BASE=/tmp/fi
WHL="${WHL:-../../.whl}"
if [ -f "$WHL/flashinfer_trim.tar.xz" ]; then
  mkdir -p /tmp/site
  tar -xJf "$WHL/flashinfer_trim.tar.xz" -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$WHL"/apache_tvm_ffi-*.whl
  if [ -f "$WHL/mnnvl_moe_alltoall.so" ]; then
    mkdir -p /tmp/site/flashinfer/data/aot/mnnvl_moe_alltoall
    cp "$WHL/mnnvl_moe_alltoall.so" /tmp/site/flashinfer/data/aot/mnnvl_moe_alltoall/
  fi
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
