// NVFP4 quantization: E2M1 values in blocks of 16 along the last dim, one E4M3 scale per block,
// one FP32 global scale gs. Torch-free: the scalar helpers below are shared by the CPU
// implementation (plain C++) and the CUDA kernels, so both produce the same bytes.
//
// Arithmetic, all float32 with IEEE division (the reference in moe_ext/reference.py mirrors it):
//   amax = max |x| over the block;  sf = e4m3(min(gs * amax / 6, 448))  (round to nearest even)
//   r = sf > 0 ? gs / sf : 0;       code = sign(x * r) | e2m1_rne(|x * r|) (saturates at 6)
//   dequantize: x' = e2m1(code) * (sf / gs)
// Non-finite inputs: NaN is left out of amax and encodes as +0; +-inf gives the largest scale
// (448) and saturates to +-6 (or, in a block of scale 0, encodes as +0).
// Packing: element 2i in the low nibble of byte i. Swizzled scales: 128x4 tiles, see
// swizzled_offset().
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define MOE_EXT_HD __host__ __device__ __forceinline__
#else
#define MOE_EXT_HD inline
#endif

namespace moe_ext {
namespace nvfp4 {

constexpr int kBlock = 16;         // elements per scale
constexpr float kE2M1Max = 6.0f;
constexpr float kE4M3Max = 448.0f;
constexpr int kTileRows = 128;     // swizzled layout: rows per tile
constexpr int kTileCols = 4;       // swizzled layout: scale columns per tile
constexpr int kTileBytes = kTileRows * kTileCols;

// Non-negative finite float -> E4M3 (fn) code, round to nearest even, saturating at 448.
MOE_EXT_HD uint8_t e4m3_from_float(float a) {
  a = fminf(a, kE4M3Max);
  if (!(a > 0.0f)) return 0;
  if (a < 0.015625f) {  // below 2^-6: subnormal grid m * 2^-9; m == 8 is the smallest normal
    return static_cast<uint8_t>(rintf(a * 512.0f));
  }
  int e;
  const float frac = frexpf(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
  int m = static_cast<int>(rintf(frac * 16.0f));  // in [8, 16]
  int biased = e - 1 + 7;
  if (m == 16) {
    m = 8;
    ++biased;
  }
  return static_cast<uint8_t>((biased << 3) | (m - 8));
}

MOE_EXT_HD float e4m3_to_float(uint8_t c) {
  const int e = (c >> 3) & 0xF;
  const int m = c & 0x7;
  const float mag = e == 0 ? ldexpf(static_cast<float>(m), -9)
                           : ldexpf(static_cast<float>(8 + m), e - 10);
  return (c & 0x80) ? -mag : mag;
}

// |v| -> E2M1 magnitude code 0..7 (values 0, .5, 1, 1.5, 2, 3, 4, 6), ties to the even code.
MOE_EXT_HD uint8_t e2m1_code(float a) {
  return static_cast<uint8_t>((a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) +
                              (a > 2.5f) + (a >= 3.5f) + (a > 5.0f));
}

MOE_EXT_HD float e2m1_to_float(uint8_t code) {
  const uint8_t mag = code & 0x7;
  const float v = mag < 4 ? 0.5f * mag : (mag == 7 ? 6.0f : static_cast<float>(mag - 2));
  return (code & 0x8) ? -v : v;
}

// Scale code of a block from its amax.
MOE_EXT_HD uint8_t block_scale(float amax, float gs) { return e4m3_from_float(gs * amax / 6.0f); }

// Multiplier that maps x onto the E2M1 grid of a block with scale code sf.
MOE_EXT_HD float block_multiplier(uint8_t sf, float gs) {
  const float s = e4m3_to_float(sf);
  return s > 0.0f ? gs / s : 0.0f;
}

MOE_EXT_HD bool negative(float v) {
#if defined(__CUDA_ARCH__)
  return signbit(v);
#else
  return std::signbit(v);
#endif
}

// A negative value that rounds to zero keeps its sign (code 0x8). NaN encodes as +0 (code 0): a
// NaN's sign bit differs between CPU and GPU arithmetic, the bytes must not.
MOE_EXT_HD uint8_t quantize_value(float x, float mult) {
  const float v = x * mult;
  if (v != v) return 0;
  return static_cast<uint8_t>((negative(v) ? 0x8 : 0x0) | e2m1_code(fabsf(v)));
}

// Byte offset of scale (m, c) in the 128x4 swizzled layout with ceil(cols / 4) column tiles.
MOE_EXT_HD int64_t swizzled_offset(int64_t m, int64_t c, int64_t col_tiles) {
  return (m / 128) * (col_tiles * kTileBytes) + (c / 4) * kTileBytes + (m % 32) * 16 +
         ((m % 128) / 32) * 4 + (c % 4);
}

#if defined(__CUDACC__)

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};
template <>
struct Elem<__half> {
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

// One thread per block of 16 values: 16-byte vector loads of the block, one 8-byte store of its
// codes, one byte of scale. Adjacent threads touch adjacent blocks, so accesses coalesce.
template <typename T>
__global__ void quantize_kernel(const T* __restrict__ x, const float* __restrict__ gs_ptr,
                                uint8_t* __restrict__ packed, uint8_t* __restrict__ scales,
                                int64_t rows, int64_t blocks_per_row, int64_t col_tiles) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= rows * blocks_per_row) return;
  const float gs = *gs_ptr;
  float v[kBlock];
  const uint4* src = reinterpret_cast<const uint4*>(x + b * kBlock);
#pragma unroll
  for (int i = 0; i < kBlock / kVec; ++i) {
    const uint4 raw = __ldg(src + i);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[i * kVec + j] = Elem<T>::load(e[j]);
  }
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kBlock; ++i) amax = fmaxf(amax, fabsf(v[i]));
  const uint8_t sf = block_scale(amax, gs);
  const float mult = block_multiplier(sf, gs);
  uint32_t word[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < kBlock; ++i) {
    word[i / 8] |= static_cast<uint32_t>(quantize_value(v[i], mult)) << (4 * (i % 8));
  }
  reinterpret_cast<uint2*>(packed)[b] = make_uint2(word[0], word[1]);
  if (col_tiles > 0) {
    scales[swizzled_offset(b / blocks_per_row, b % blocks_per_row, col_tiles)] = sf;
  } else {
    scales[b] = sf;
  }
}

template <typename T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ packed,
                                  const uint8_t* __restrict__ scales,
                                  const float* __restrict__ gs_ptr, T* __restrict__ out,
                                  int64_t rows, int64_t blocks_per_row, int64_t col_tiles) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= rows * blocks_per_row) return;
  const uint8_t sf = col_tiles > 0
                         ? scales[swizzled_offset(b / blocks_per_row, b % blocks_per_row,
                                                  col_tiles)]
                         : scales[b];
  const float factor = e4m3_to_float(sf) / *gs_ptr;
  const uint2 codes = __ldg(reinterpret_cast<const uint2*>(packed) + b);
  const uint32_t word[2] = {codes.x, codes.y};
  uint4* dst = reinterpret_cast<uint4*>(out + b * kBlock);
#pragma unroll
  for (int i = 0; i < kBlock / kVec; ++i) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int n = i * kVec + j;
      const uint8_t code = (word[n / 8] >> (4 * (n % 8))) & 0xF;
      e[j] = Elem<T>::store(e2m1_to_float(code) * factor);
    }
    dst[i] = raw;
  }
}

// One thread per byte of the swizzled layout, padding included (written as 0).
static __global__ void swizzle_kernel(const uint8_t* __restrict__ scales,
                                      uint8_t* __restrict__ out, int64_t rows, int64_t cols,
                                      int64_t col_tiles, int64_t total) {
  const int64_t o = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (o >= total) return;
  const int64_t tile_row = o / (col_tiles * kTileBytes);
  const int64_t in_row_tile = o % (col_tiles * kTileBytes);
  const int64_t r = in_row_tile % kTileBytes;
  const int64_t m = tile_row * kTileRows + ((r % 16) / 4) * 32 + r / 16;
  const int64_t c = (in_row_tile / kTileBytes) * kTileCols + r % 4;
  out[o] = (m < rows && c < cols) ? scales[m * cols + c] : uint8_t{0};
}

static __global__ void unswizzle_kernel(const uint8_t* __restrict__ swizzled,
                                        uint8_t* __restrict__ out, int64_t rows, int64_t cols,
                                        int64_t col_tiles) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  out[i] = swizzled[swizzled_offset(i / cols, i % cols, col_tiles)];
}

constexpr int kThreads = 256;

inline unsigned grid_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// x [M, K] (T = float, __half, __nv_bfloat16; 16-byte aligned, K % 16 == 0), gs [1] float32 on
// the device. Outputs: packed [M, K/2] uint8; scales [M, K/16] E4M3 codes, or, when
// col_tiles = ceil(K/64) > 0, the swizzled layout (whose padding the caller has zeroed).
template <typename T>
cudaError_t launch_quantize(const T* x, const float* gs, uint8_t* packed, uint8_t* scales,
                            int64_t rows, int64_t k, int64_t col_tiles, cudaStream_t stream) {
  const int64_t n = rows * (k / kBlock);
  if (n == 0) return cudaSuccess;
  quantize_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(x, gs, packed, scales, rows,
                                                           k / kBlock, col_tiles);
  return cudaGetLastError();
}

// packed [M, K/2] uint8, scales [M, K/16] (or swizzled when col_tiles > 0), gs [1] float32
// -> out [M, K] (16-byte aligned).
template <typename T>
cudaError_t launch_dequantize(const uint8_t* packed, const uint8_t* scales, const float* gs,
                              T* out, int64_t rows, int64_t k, int64_t col_tiles,
                              cudaStream_t stream) {
  const int64_t n = rows * (k / kBlock);
  if (n == 0) return cudaSuccess;
  dequantize_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(packed, scales, gs, out, rows,
                                                             k / kBlock, col_tiles);
  return cudaGetLastError();
}

// scales [rows, cols] -> out [round_up(rows, 128), round_up(cols, 4)] swizzled, padding zeroed.
inline cudaError_t launch_swizzle_scales(const uint8_t* scales, uint8_t* out, int64_t rows,
                                         int64_t cols, cudaStream_t stream) {
  const int64_t col_tiles = (cols + kTileCols - 1) / kTileCols;
  const int64_t total = (rows + kTileRows - 1) / kTileRows * col_tiles * kTileBytes;
  if (total == 0) return cudaSuccess;
  swizzle_kernel<<<grid_for(total), kThreads, 0, stream>>>(scales, out, rows, cols, col_tiles,
                                                           total);
  return cudaGetLastError();
}

// swizzled [round_up(rows, 128) * round_up(cols, 4) bytes] -> out [rows, cols].
inline cudaError_t launch_unswizzle_scales(const uint8_t* swizzled, uint8_t* out, int64_t rows,
                                           int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  const int64_t col_tiles = (cols + kTileCols - 1) / kTileCols;
  unswizzle_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(swizzled, out, rows, cols,
                                                                   col_tiles);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace nvfp4
}  // namespace moe_ext
