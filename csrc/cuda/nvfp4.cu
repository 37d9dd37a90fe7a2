// CUDA bindings of the nvfp4 family: argument checks (shared with CPU), allocation, launch on the
// current stream. Kernels are in moe_ext/nvfp4.cuh.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "moe_ext/nvfp4.cuh"
#include "ops.h"

namespace moe_ext {

namespace {

// The kernels move 16-byte vectors; a tensor that is not aligned (a view with an odd storage
// offset) is copied first.
at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

const uint8_t* bytes(const at::Tensor& t) { return static_cast<const uint8_t*>(t.data_ptr()); }
uint8_t* mutable_bytes(const at::Tensor& t) { return static_cast<uint8_t*>(t.data_ptr()); }

template <typename F>
void dispatch_float(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kBFloat16:
      f(static_cast<__nv_bfloat16*>(nullptr));
      break;
    case at::kHalf:
      f(static_cast<__half*>(nullptr));
      break;
    default:
      f(static_cast<float*>(nullptr));
      break;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> nvfp4_quantize_cuda(const at::Tensor& x,
                                                       const at::Tensor& global_scale,
                                                       bool swizzle) {
  const Nvfp4Shape shape = check_nvfp4_quantize_args(x, global_scale);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = aligned_contiguous(x);
  auto packed_shape = x.sizes().vec();
  packed_shape.back() = shape.k / 2;
  at::Tensor packed = at::empty(packed_shape, x.options().dtype(at::kByte));
  at::Tensor scales = nvfp4_new_scales(x, shape, swizzle);
  const int64_t col_tiles = swizzle ? nvfp4_col_tiles(shape.k / nvfp4::kBlock) : 0;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const float* gs = global_scale.const_data_ptr<float>();
  cudaError_t err = cudaSuccess;
  dispatch_float(x.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    err = nvfp4::launch_quantize<T>(static_cast<const T*>(xc.const_data_ptr()), gs,
                                    mutable_bytes(packed), mutable_bytes(scales), shape.rows,
                                    shape.k, col_tiles, stream);
  });
  MOE_EXT_CHECK_CUDA_LAUNCH(err);
  return {packed, scales};
}

at::Tensor nvfp4_dequantize_cuda(const at::Tensor& packed, const at::Tensor& scales,
                                 const at::Tensor& global_scale, at::ScalarType dtype,
                                 bool swizzled) {
  const Nvfp4Shape shape =
      check_nvfp4_dequantize_args(packed, scales, global_scale, dtype, swizzled);
  const c10::cuda::CUDAGuard guard(packed.device());
  const at::Tensor pc = aligned_contiguous(packed);
  const at::Tensor sc = scales.contiguous();
  auto out_shape = packed.sizes().vec();
  out_shape.back() = shape.k;
  at::Tensor out = at::empty(out_shape, packed.options().dtype(dtype));
  const int64_t col_tiles = swizzled ? nvfp4_col_tiles(shape.k / nvfp4::kBlock) : 0;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  dispatch_float(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    err = nvfp4::launch_dequantize<T>(bytes(pc), bytes(sc), global_scale.const_data_ptr<float>(),
                                      static_cast<T*>(out.data_ptr()), shape.rows, shape.k,
                                      col_tiles, stream);
  });
  MOE_EXT_CHECK_CUDA_LAUNCH(err);
  return out;
}

at::Tensor nvfp4_swizzle_scales_cuda(const at::Tensor& scales) {
  MOE_EXT_CHECK_DIM(scales, 2);
  MOE_EXT_CHECK_DTYPE(scales, at::kFloat8_e4m3fn);
  const c10::cuda::CUDAGuard guard(scales.device());
  const at::Tensor sc = scales.contiguous();
  const int64_t rows = scales.size(0), cols = scales.size(1);
  const int64_t padded_cols = nvfp4_col_tiles(cols) * nvfp4::kTileCols;
  const int64_t padded_rows = (rows + nvfp4::kTileRows - 1) / nvfp4::kTileRows * nvfp4::kTileRows;
  // Every byte, padding included, is written by the kernel.
  at::Tensor out = at::empty({padded_rows, padded_cols}, scales.options());
  MOE_EXT_CHECK_CUDA_LAUNCH(nvfp4::launch_swizzle_scales(bytes(sc), mutable_bytes(out), rows, cols,
                                                         at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor nvfp4_unswizzle_scales_cuda(const at::Tensor& swizzled, int64_t rows, int64_t cols) {
  check_nvfp4_unswizzle_args(swizzled, rows, cols);
  const c10::cuda::CUDAGuard guard(swizzled.device());
  const at::Tensor sc = swizzled.contiguous();
  at::Tensor out = at::empty({rows, cols}, swizzled.options());
  MOE_EXT_CHECK_CUDA_LAUNCH(nvfp4::launch_unswizzle_scales(
      bytes(sc), mutable_bytes(out), rows, cols, at::cuda::getCurrentCUDAStream()));
  return out;
}

TORCH_LIBRARY_IMPL(moe_ext, CUDA, m) {
  m.impl("nvfp4_quantize", &nvfp4_quantize_cuda);
  m.impl("nvfp4_dequantize", &nvfp4_dequantize_cuda);
  m.impl("nvfp4_swizzle_scales", &nvfp4_swizzle_scales_cuda);
  m.impl("nvfp4_unswizzle_scales", &nvfp4_unswizzle_scales_cuda);
}

}  // namespace moe_ext
