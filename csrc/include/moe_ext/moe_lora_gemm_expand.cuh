// Expand stage of the multi-LoRA MoE GEMM: for every real (slot l, block b), slice s and tile of
// 128 output columns, tmp = round_to_T(sum over K chunks of the fp32 partials) (or the T
// intermediate of the standalone shrink op), d = tmp @ lora_b[s][l, e].T in fp32, times the
// routing weight, added to (or written into) output. The output tile is prefetched into
// registers while the weights arrive, then streamed once with 16-byte accesses.
#pragma once

#include "moe_ext/moe_lora_gemm_common.cuh"

namespace moe_ext {
namespace lora_gemm {

struct ExpandArgs {
  Routing rt;
  const float* partial;  // [ksplit, S, numel, RP] fp32, or nullptr when `inter` is used
  int ksplit;
  const void* inter;     // [S, numel, r] in T (standalone expand), or nullptr
  int RP, r, rb;         // padded k extent (multiple of 16), rank, columns of lora_b to read
  const void* b[kMaxSlices];  // lora_b[s]: [L, E, N, rb'] with unit stride on the rank
  int64_t b_sl[kMaxSlices], b_se[kMaxSlices], b_sn[kMaxSlices];
  int S, N, ntiles, top_k;
  const float* weights;  // [numel] routing weights, or nullptr (no multiply)
  void* out;             // element (t, j, c) at t*out_st + j*out_sj + c
  int64_t out_st, out_sj;
  int col0;              // offset
  bool add, vec;         // vec: 16-byte aligned rows and columns
};

constexpr int kExpandBN = 128;

template <int MI>
struct ExpandTile {
  static constexpr int BM = 16 * MI;
  static constexpr int LDA = 128 + 8;  // rank up to 128, +16 bytes per row
  static constexpr int LDC = kExpandBN + 4;
  static constexpr int kOps = (BM + kExpandBN) * LDA * 2;
  static constexpr int kCBytes = BM * LDC * 4;
  static constexpr int kHead = 4 * (kMaxLoras + 1) + 4 * 4 + 4 * BM + 4 * BM;
  static constexpr int kHeadAligned = (kHead + 127) / 128 * 128;
  static constexpr int kSmem = kHeadAligned + (kOps > kCBytes ? kOps : kCBytes);
};

template <typename T>
__device__ __forceinline__ void load8(const T* src, float* dst) {
  const uint4 v = *reinterpret_cast<const uint4*>(src);
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int q = 0; q < 8; ++q) dst[q] = to_f32(h[q]);
}

template <typename T, int MI>
__global__ void __launch_bounds__(kThreads) moe_lora_expand_kernel(const ExpandArgs p) {
  using Tile = ExpandTile<MI>;
  constexpr int BM = Tile::BM, LDA = Tile::LDA, LDC = Tile::LDC, BN = kExpandBN;
  constexpr int VPT = BM * (BN / 8) / kThreads;  // output vectors per thread per tile
  extern __shared__ __align__(128) unsigned char smem[];
  int* prefix = reinterpret_cast<int*>(smem);
  int* scratch = prefix + kMaxLoras + 1;
  int* ids = scratch + 4;
  float* wts = reinterpret_cast<float*>(ids + BM);
  T* as = reinterpret_cast<T*>(smem + Tile::kHeadAligned);  // [BM][LDA]
  T* bs = as + BM * LDA;                                      // [BN][LDA]
  float* cs = reinterpret_cast<float*>(smem + Tile::kHeadAligned);  // [BM][LDC], after the mma

  const Routing& rt = p.rt;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  T* out = static_cast<T*>(p.out);

  const int nblk = build_work_prefix(rt, prefix, scratch);
  const int total = nblk * p.S * p.ntiles;
  for (int w = blockIdx.x; w < total; w += gridDim.x) {
    const int wb = w % nblk, rest = w / nblk;
    const int nt = rest % p.ntiles, s = rest / p.ntiles;
    const int l = find_slot(prefix, rt.L, wb);
    const int b = wb - prefix[l];
    const int e = rt.block_experts[static_cast<int64_t>(l) * rt.NB + b];
    if (e < 0 || e >= rt.E) continue;
    const int n0 = nt * BN;
    const T* bw = static_cast<const T*>(p.b[s]) + l * p.b_sl[s] + e * p.b_se[s];
    const int32_t* block_ids = rt.sorted_ids + static_cast<int64_t>(l) * rt.P +
                               static_cast<int64_t>(b) * rt.BS;
    const int64_t col_base = p.col0 + static_cast<int64_t>(s) * p.N + n0;

    for (int m0 = 0; m0 < rt.BS; m0 += BM) {
      __syncthreads();  // the previous tile is done with shared memory
      int mine = -1;
      if (tid < BM && m0 + tid < rt.BS) {
        const int v = block_ids[m0 + tid];
        mine = (v >= 0 && v < rt.numel) ? v : -1;
      }
      if (tid < BM) {
        ids[tid] = mine;
        wts[tid] = (mine >= 0 && p.weights != nullptr) ? p.weights[mine] : 1.f;
      }
      if (!__syncthreads_or(mine >= 0)) continue;

      // B tile [BN x RP] (rows past N and ranks past rb zero-filled), in flight meanwhile.
      for (int c = tid; c < BN * (p.RP / 8); c += kThreads) {
        const int row = c / (p.RP / 8), col = (c % (p.RP / 8)) * 8;
        const bool ok = n0 + row < p.N && col < p.rb;
        cp_async16(bs + row * LDA + col, ok ? bw + (n0 + row) * p.b_sn[s] + col : bw, ok);
      }
      cp_async_commit();

      // Output prefetch: its latency overlaps the weights and the mma.
      uint4 prev[VPT];
      if (p.add && p.vec) {
#pragma unroll
        for (int v = 0; v < VPT; ++v) {
          const int c = v * kThreads + tid, row = c / (BN / 8), col = (c % (BN / 8)) * 8;
          const int id = ids[row];
          if (id >= 0 && n0 + col < p.N) {
            const T* src = out + (id / p.top_k) * p.out_st + (id % p.top_k) * p.out_sj +
                           col_base + col;
            prev[v] = *reinterpret_cast<const uint4*>(src);
          }
        }
      }

      // A tile [BM x RP]: the rank vectors, rounded to T exactly once.
      for (int c = tid; c < BM * (p.RP / 8); c += kThreads) {
        const int row = c / (p.RP / 8), col = (c % (p.RP / 8)) * 8;
        const int id = ids[row];
        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (id >= 0) {
          if (p.partial != nullptr) {
            for (int ks = 0; ks < p.ksplit; ++ks) {
              const float* src =
                  p.partial + ((static_cast<int64_t>(ks) * p.S + s) * rt.numel + id) * p.RP + col;
              const float4 lo = *reinterpret_cast<const float4*>(src);
              const float4 hi = *reinterpret_cast<const float4*>(src + 4);
              v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
              v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
            }
          } else {
            const T* src = static_cast<const T*>(p.inter) +
                           (static_cast<int64_t>(s) * rt.numel + id) * p.r;
#pragma unroll
            for (int q = 0; q < 8; ++q)
              if (col + q < p.r) v[q] = to_f32(src[col + q]);
          }
        }
        T* dst = as + row * LDA + col;
#pragma unroll
        for (int q = 0; q < 8; ++q) dst[q] = from_f32<T>(v[q]);
      }
      cp_async_wait<0>();
      __syncthreads();

      float acc[MI][4][4];
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int n = 0; n < 4; ++n) acc[i][n][0] = acc[i][n][1] = acc[i][n][2] = acc[i][n][3] = 0.f;
      for (int kb0 = 0; kb0 < p.RP; kb0 += 16) {
        const int kb = kb0 + 2 * t4;
        uint32_t bf[4][2];
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const T* brow = bs + (warp * 32 + n * 8 + g) * LDA;
          bf[n][0] = lds32(brow + kb);
          bf[n][1] = lds32(brow + kb + 8);
        }
#pragma unroll
        for (int i = 0; i < MI; ++i) {
          const T* arow = as + (i * 16 + g) * LDA;
          uint32_t af[4];
          af[0] = lds32(arow + kb);
          af[1] = lds32(arow + 8 * LDA + kb);
          af[2] = lds32(arow + kb + 8);
          af[3] = lds32(arow + 8 * LDA + kb + 8);
#pragma unroll
          for (int n = 0; n < 4; ++n) MmaOp<T>::run(acc[i][n], af, bf[n]);
        }
      }
      __syncthreads();  // operands consumed: the C staging area may overwrite them
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int r0 = i * 16 + g;
        const float w0 = wts[r0], w1 = wts[r0 + 8];
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          const int col = warp * 32 + n * 8 + 2 * t4;
          *reinterpret_cast<float2*>(cs + r0 * LDC + col) =
              make_float2(acc[i][n][0] * w0, acc[i][n][1] * w0);
          *reinterpret_cast<float2*>(cs + (r0 + 8) * LDC + col) =
              make_float2(acc[i][n][2] * w1, acc[i][n][3] * w1);
        }
      }
      __syncthreads();

#pragma unroll
      for (int v = 0; v < VPT; ++v) {
        const int c = v * kThreads + tid, row = c / (BN / 8), col = (c % (BN / 8)) * 8;
        const int id = ids[row];
        if (id < 0 || n0 + col >= p.N) continue;
        T* dst = out + (id / p.top_k) * p.out_st + (id % p.top_k) * p.out_sj + col_base + col;
        const float* d = cs + row * LDC + col;
        if (p.vec) {
          float o[8];
          if (p.add) {
            const T* h = reinterpret_cast<const T*>(&prev[v]);
#pragma unroll
            for (int q = 0; q < 8; ++q) o[q] = to_f32(h[q]) + d[q];
          } else {
#pragma unroll
            for (int q = 0; q < 8; ++q) o[q] = d[q];
          }
          uint4 packed;
          T* ph = reinterpret_cast<T*>(&packed);
#pragma unroll
          for (int q = 0; q < 8; ++q) ph[q] = from_f32<T>(o[q]);
          *reinterpret_cast<uint4*>(dst) = packed;
        } else {
#pragma unroll
          for (int q = 0; q < 8; ++q)
            dst[q] = from_f32<T>(p.add ? to_f32(dst[q]) + d[q] : d[q]);
        }
      }
    }
  }
}

// intermediate[s, i, :r] = round_to_T(sum over K chunks of partial[., s, i, :r]) for the routes
// of every real block: the standalone shrink op, bit-identical to what the expand stage uses.
template <typename T>
__global__ void __launch_bounds__(kThreads) moe_lora_reduce_kernel(const Routing rt,
                                                                    const float* partial,
                                                                    int ksplit, int S, int RP,
                                                                    int r, T* inter) {
  __shared__ int prefix[kMaxLoras + 1];
  __shared__ int scratch[4];
  const int nblk = build_work_prefix(rt, prefix, scratch);
  for (int w = blockIdx.x; w < nblk * S; w += gridDim.x) {
    const int wb = w % nblk, s = w / nblk;
    const int l = find_slot(prefix, rt.L, wb);
    const int b = wb - prefix[l];
    const int e = rt.block_experts[static_cast<int64_t>(l) * rt.NB + b];
    if (e < 0 || e >= rt.E) continue;
    const int32_t* block_ids = rt.sorted_ids + static_cast<int64_t>(l) * rt.P +
                               static_cast<int64_t>(b) * rt.BS;
    for (int c = threadIdx.x; c < rt.BS * r; c += kThreads) {
      const int m = c / r, q = c % r;
      const int id = block_ids[m];
      if (id < 0 || id >= rt.numel) continue;
      float v = 0.f;
      for (int ks = 0; ks < ksplit; ++ks)
        v += partial[((static_cast<int64_t>(ks) * S + s) * rt.numel + id) * RP + q];
      inter[(static_cast<int64_t>(s) * rt.numel + id) * r + q] = from_f32<T>(v);
    }
  }
}

}  // namespace lora_gemm
}  // namespace moe_ext
