// CPU implementation of the nvfp4 family and the argument checks shared with CUDA. The scalar
// arithmetic comes from moe_ext/nvfp4.cuh, so CPU and CUDA produce the same bytes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "moe_ext/nvfp4.cuh"
#include "ops.h"

namespace moe_ext {

namespace {

constexpr int64_t kBlock = nvfp4::kBlock;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Product of every dim but the last: the rows M of the [M, K] view.
int64_t leading_rows(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

void check_global_scale(const at::Tensor& global_scale, const at::Tensor& like) {
  MOE_EXT_CHECK(global_scale.numel() == 1, "global_scale must have exactly 1 element, got ",
                global_scale.numel(), " (shape ", global_scale.sizes(), ")");
  MOE_EXT_CHECK_DTYPE(global_scale, at::kFloat);
  MOE_EXT_CHECK_SAME_DEVICE(global_scale, like);
}

}  // namespace

Nvfp4Shape check_nvfp4_quantize_args(const at::Tensor& x, const at::Tensor& global_scale) {
  MOE_EXT_CHECK(x.dim() >= 1, "x must have at least 1 dimension, got ", x.dim());
  MOE_EXT_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf ||
                    x.scalar_type() == at::kFloat,
                "x must have dtype bfloat16, float16 or float32, got ", x.scalar_type());
  const int64_t k = x.size(-1);
  MOE_EXT_CHECK(k % kBlock == 0, "x.size(-1) must be a multiple of 16, got ", k);
  check_global_scale(global_scale, x);
  return {leading_rows(x), k};
}

Nvfp4Shape check_nvfp4_dequantize_args(const at::Tensor& packed, const at::Tensor& scales,
                                       const at::Tensor& global_scale, at::ScalarType dtype,
                                       bool swizzled) {
  MOE_EXT_CHECK(packed.dim() >= 1, "packed must have at least 1 dimension, got ", packed.dim());
  MOE_EXT_CHECK_DTYPE(packed, at::kByte);
  MOE_EXT_CHECK_DTYPE(scales, at::kFloat8_e4m3fn);
  MOE_EXT_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat,
                "dtype must be bfloat16, float16 or float32, got ", dtype);
  MOE_EXT_CHECK_SAME_DEVICE(scales, packed);
  check_global_scale(global_scale, packed);
  const int64_t k = packed.size(-1) * 2;
  MOE_EXT_CHECK(k % kBlock == 0, "packed.size(-1) must be a multiple of 8, got ",
                packed.size(-1));
  const int64_t rows = leading_rows(packed);
  if (swizzled) {
    const int64_t need = round_up(rows, nvfp4::kTileRows) * round_up(k / kBlock, nvfp4::kTileCols);
    MOE_EXT_CHECK(scales.numel() == need, "swizzled scales must have round_up(", rows,
                  ", 128) * round_up(", k / kBlock, ", 4) = ", need, " elements, got ",
                  scales.numel(), " (shape ", scales.sizes(), ")");
  } else {
    MOE_EXT_CHECK(scales.dim() == packed.dim(), "scales must have ", packed.dim(),
                  " dimensions like packed, got ", scales.dim());
    for (int64_t d = 0; d + 1 < packed.dim(); ++d) MOE_EXT_CHECK_SIZE(scales, d, packed.size(d));
    MOE_EXT_CHECK_SIZE(scales, -1, k / kBlock);
  }
  return {rows, k};
}

void check_nvfp4_unswizzle_args(const at::Tensor& swizzled, int64_t rows, int64_t cols) {
  MOE_EXT_CHECK_DTYPE(swizzled, at::kFloat8_e4m3fn);
  MOE_EXT_CHECK(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got ", rows, " and ", cols);
  const int64_t need = round_up(rows, nvfp4::kTileRows) * round_up(cols, nvfp4::kTileCols);
  MOE_EXT_CHECK(swizzled.numel() == need, "swizzled must have round_up(", rows,
                ", 128) * round_up(", cols, ", 4) = ", need, " elements, got ", swizzled.numel(),
                " (shape ", swizzled.sizes(), ")");
}

namespace {

template <typename T>
void quantize_rows(const T* x, float gs, uint8_t* packed, uint8_t* scales, int64_t rows,
                   int64_t k, int64_t col_tiles) {
  const int64_t blocks_per_row = k / kBlock;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t c = 0; c < blocks_per_row; ++c) {
        const int64_t b = m * blocks_per_row + c;
        float v[kBlock];
        float amax = 0.0f;
        for (int i = 0; i < kBlock; ++i) {
          v[i] = static_cast<float>(x[b * kBlock + i]);
          amax = std::fmax(amax, std::fabs(v[i]));
        }
        const uint8_t sf = nvfp4::block_scale(amax, gs);
        const float mult = nvfp4::block_multiplier(sf, gs);
        for (int i = 0; i < kBlock; i += 2) {
          packed[b * kBlock / 2 + i / 2] = static_cast<uint8_t>(
              nvfp4::quantize_value(v[i], mult) | (nvfp4::quantize_value(v[i + 1], mult) << 4));
        }
        scales[col_tiles > 0 ? nvfp4::swizzled_offset(m, c, col_tiles) : b] = sf;
      }
    }
  });
}

template <typename T>
void dequantize_rows(const uint8_t* packed, const uint8_t* scales, float gs, T* out,
                     int64_t rows, int64_t k, int64_t col_tiles) {
  const int64_t blocks_per_row = k / kBlock;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t c = 0; c < blocks_per_row; ++c) {
        const int64_t b = m * blocks_per_row + c;
        const uint8_t sf = scales[col_tiles > 0 ? nvfp4::swizzled_offset(m, c, col_tiles) : b];
        const float factor = nvfp4::e4m3_to_float(sf) / gs;
        for (int i = 0; i < kBlock; ++i) {
          const uint8_t byte = packed[b * kBlock / 2 + i / 2];
          const uint8_t code = (i % 2 == 0) ? (byte & 0xF) : (byte >> 4);
          out[b * kBlock + i] = static_cast<T>(nvfp4::e2m1_to_float(code) * factor);
        }
      }
    }
  });
}

const uint8_t* bytes(const at::Tensor& t) { return static_cast<const uint8_t*>(t.data_ptr()); }
uint8_t* mutable_bytes(const at::Tensor& t) { return static_cast<uint8_t*>(t.data_ptr()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> nvfp4_quantize_cpu(const at::Tensor& x,
                                                      const at::Tensor& global_scale,
                                                      bool swizzle) {
  const Nvfp4Shape shape = check_nvfp4_quantize_args(x, global_scale);
  const at::Tensor xc = x.contiguous();
  auto packed_shape = x.sizes().vec();
  packed_shape.back() = shape.k / 2;
  at::Tensor packed = at::empty(packed_shape, x.options().dtype(at::kByte));
  at::Tensor scales = nvfp4_new_scales(x, shape, swizzle);
  const float gs = global_scale.to(at::kFloat).reshape({}).item<float>();
  const int64_t col_tiles = swizzle ? nvfp4_col_tiles(shape.k / kBlock) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "nvfp4_quantize", [&] {
    quantize_rows(xc.const_data_ptr<scalar_t>(), gs, mutable_bytes(packed), mutable_bytes(scales),
                  shape.rows, shape.k, col_tiles);
  });
  return {packed, scales};
}

at::Tensor nvfp4_dequantize_cpu(const at::Tensor& packed, const at::Tensor& scales,
                                const at::Tensor& global_scale, at::ScalarType dtype,
                                bool swizzled) {
  const Nvfp4Shape shape =
      check_nvfp4_dequantize_args(packed, scales, global_scale, dtype, swizzled);
  const at::Tensor pc = packed.contiguous();
  const at::Tensor sc = scales.contiguous();
  auto out_shape = packed.sizes().vec();
  out_shape.back() = shape.k;
  at::Tensor out = at::empty(out_shape, packed.options().dtype(dtype));
  const float gs = global_scale.reshape({}).item<float>();
  const int64_t col_tiles = swizzled ? nvfp4_col_tiles(shape.k / kBlock) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "nvfp4_dequantize", [&] {
    dequantize_rows(bytes(pc), bytes(sc), gs, out.mutable_data_ptr<scalar_t>(), shape.rows,
                    shape.k, col_tiles);
  });
  return out;
}

at::Tensor nvfp4_swizzle_scales_cpu(const at::Tensor& scales) {
  MOE_EXT_CHECK_DIM(scales, 2);
  MOE_EXT_CHECK_DTYPE(scales, at::kFloat8_e4m3fn);
  const at::Tensor sc = scales.contiguous();
  const int64_t rows = scales.size(0), cols = scales.size(1);
  at::Tensor out = at::zeros({round_up(rows, nvfp4::kTileRows), round_up(cols, nvfp4::kTileCols)},
                             scales.options());
  const int64_t col_tiles = nvfp4_col_tiles(cols);
  const uint8_t* src = bytes(sc);
  uint8_t* dst = mutable_bytes(out);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t c = 0; c < cols; ++c) dst[nvfp4::swizzled_offset(m, c, col_tiles)] = src[m * cols + c];
  }
  return out;
}

at::Tensor nvfp4_unswizzle_scales_cpu(const at::Tensor& swizzled, int64_t rows, int64_t cols) {
  check_nvfp4_unswizzle_args(swizzled, rows, cols);
  const at::Tensor sc = swizzled.contiguous();
  at::Tensor out = at::empty({rows, cols}, swizzled.options());
  const int64_t col_tiles = nvfp4_col_tiles(cols);
  const uint8_t* src = bytes(sc);
  uint8_t* dst = mutable_bytes(out);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t c = 0; c < cols; ++c) dst[m * cols + c] = src[nvfp4::swizzled_offset(m, c, col_tiles)];
  }
  return out;
}

at::Tensor nvfp4_new_scales(const at::Tensor& x, const Nvfp4Shape& shape, bool swizzle) {
  const auto options = x.options().dtype(at::kFloat8_e4m3fn);
  if (swizzle) {
    // Padding bytes of the swizzled layout are 0; the kernels write only real scales.
    return at::zeros({round_up(shape.rows, nvfp4::kTileRows),
                      round_up(shape.k / kBlock, nvfp4::kTileCols)},
                     options);
  }
  auto scale_shape = x.sizes().vec();
  scale_shape.back() = shape.k / kBlock;
  return at::empty(scale_shape, options);
}

int64_t nvfp4_col_tiles(int64_t cols) { return (cols + nvfp4::kTileCols - 1) / nvfp4::kTileCols; }

TORCH_LIBRARY_IMPL(moe_ext, CPU, m) {
  m.impl("nvfp4_quantize", &nvfp4_quantize_cpu);
  m.impl("nvfp4_dequantize", &nvfp4_dequantize_cpu);
  m.impl("nvfp4_swizzle_scales", &nvfp4_swizzle_scales_cpu);
  m.impl("nvfp4_unswizzle_scales", &nvfp4_unswizzle_scales_cpu);
}

}  // namespace moe_ext
