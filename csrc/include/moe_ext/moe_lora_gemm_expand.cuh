// Expand stage of the multi-LoRA MoE GEMM: for every real (slot l, block b), slice s and tile of
// 128 output columns, tmp = round_to_T(sum over K chunks of the fp32 partials) (or the T
// intermediate of the standalone shrink op), d = tmp @ lora_b[s][l, e].T in fp32, times the
// routing weight, added to (or written into) output. The output tile comes into shared memory
// (cp.async) while the weights arrive, the epilogue updates it there, and it leaves in 16-byte
// coalesced stores: each output element is read and written once.
#pragma once

#include "moe_ext/moe_lora_gemm_common.cuh"

namespace moe_ext {
namespace lora_gemm {

struct ExpandArgs {
  Routing rt;
  const float* partial;  // [ksplit, S, numel, RP] fp32, or nullptr when `inter` is used
  int ksplit, G;         // G: chunk groups summed in parallel (see reduce_partials)
  const void* inter;     // [S, numel, inter_ld] in T (rank vectors already rounded), or nullptr
  int64_t inter_ld;
  bool inter_vec;        // inter rows 16-byte aligned and r a multiple of 8: cp.async rows
  int RP, r, rb;         // padded k extent (multiple of 16), rank, columns of lora_b to read
  const void* b[kMaxSlices];  // lora_b[s]: [L, E, N, rb'] with unit stride on the rank
  int64_t b_sl[kMaxSlices], b_se[kMaxSlices], b_sn[kMaxSlices];
  int S, N, ntiles;      // ntiles: 128-column tiles of N
  int group;             // tiles per item of the stream expand (blocks of <= 16 rows)
  const float* weights;  // [numel] routing weights, or nullptr (no multiply)
  void* out;             // element (route i, column c) at i * out_row + c
  int64_t out_row;
  int col0;              // offset
  bool add, vec;         // vec: 16-byte output chunks (base, row stride and offset aligned)
  bool max_shared;       // stream expand: largest shared-memory carveout (overlap_expand)
};

constexpr int kExpandBN = 128;

// 128-column tiles of an N-column slice.
__host__ __device__ constexpr int column_tiles(int N) { return (N + kExpandBN - 1) / kExpandBN; }

// B tile of lora_b[s][l, e] from column n0: the rows of the 128-column tiles live below n_end, at
// most max_rows (one 16-byte chunk per cp.async; rows at or past n_end and ranks past rb
// zero-filled). rc_shift: log2 of the chunks per row (RP / 8).
template <typename T>
__device__ __forceinline__ void load_b_tile(T* bs, int lda, int rc_shift, const T* bw,
                                            int64_t row_stride, int n0, int max_rows, int n_end,
                                            int rb) {
  const int rows = min(max_rows, column_tiles(n_end - n0) * kExpandBN);
  for (int c = threadIdx.x; c < (rows << rc_shift); c += kThreads) {
    const int row = c >> rc_shift, col = (c & ((1 << rc_shift) - 1)) * 8;
    const bool ok = n0 + row < n_end && col < rb;
    cp_async16(bs + row * lda + col, ok ? bw + (n0 + row) * row_stride + col : bw, ok);
  }
}

// Rank vectors of the tile's routes from p.inter [S, numel, inter_ld] into as [BM][lda], one
// element at a time (any rank, any row stride); ranks past r and rows without a route are 0.
template <typename T, int BM>
__device__ __forceinline__ void copy_rank_vectors(const ExpandArgs& p, int s, const int* ids,
                                                  T* as, int lda) {
  const T* inter = static_cast<const T*>(p.inter);
  for (int c = threadIdx.x; c < BM * p.RP; c += kThreads) {
    const int row = c / p.RP, col = c % p.RP, id = ids[row];
    const T* src = inter + (static_cast<int64_t>(s) * p.rt.numel + id) * p.inter_ld;
    as[row * lda + col] = (id >= 0 && col < p.r) ? src[col] : from_f32<T>(0.f);
  }
}

// Calls f(row, id, col) for each 16-byte chunk (8 columns from col) of the output tile
// [BM x BW] whose row has a route and whose columns start below n_end - n0. Where whole rows fit
// a pass of the CTA, each thread keeps one column and steps over rows.
template <int BM, int BW, typename F>
__device__ __forceinline__ void for_each_out_chunk(const int* ids, int n0, int n_end, F f) {
  constexpr int CPR = BW / 8;
  if constexpr (kThreads % CPR == 0) {
    const int col = (threadIdx.x % CPR) * 8;
    if (n0 + col >= n_end) return;
#pragma unroll
    for (int row = threadIdx.x / CPR; row < BM; row += kThreads / CPR)
      if (ids[row] >= 0) f(row, ids[row], col);
  } else {
    for (int c = threadIdx.x; c < BM * CPR; c += kThreads) {
      const int row = c / CPR, col = (c % CPR) * 8;
      if (ids[row] >= 0 && n0 + col < n_end) f(row, ids[row], col);
    }
  }
}

// Output tile [BM x BW] of the routes ids[] into shared memory (row stride BW + 8), columns
// [n0, n_end) of the slice starting at col_base: 16-byte cp.async (vec) or element copies. Rows
// without a route are never touched.
template <typename T, int BM, int BW>
__device__ __forceinline__ void load_out_tile(T* os, const T* out, int64_t out_row,
                                              int64_t col_base, const int* ids, int n0, int n_end,
                                              bool vec) {
  for_each_out_chunk<BM, BW>(ids, n0, n_end, [&](int row, int id, int col) {
    const T* src = out + static_cast<int64_t>(id) * out_row + col_base + col;
    T* dst = os + row * (BW + 8) + col;
    if (vec) {
      cp_async16(dst, src, true);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) dst[q] = src[q];
    }
  });
}

// The finished output tile back to global memory: 16 bytes per thread, whole rows per warp.
template <typename T, int BM, int BW>
__device__ __forceinline__ void store_out_tile(T* out, int64_t out_row, int64_t col_base,
                                               const T* os, const int* ids, int n0, int n_end,
                                               bool vec) {
  for_each_out_chunk<BM, BW>(ids, n0, n_end, [&](int row, int id, int col) {
    T* dst = out + static_cast<int64_t>(id) * out_row + col_base + col;
    const T* src = os + row * (BW + 8) + col;
    if (vec) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) dst[q] = src[q];
    }
  });
}

// d = A[BM x RP] @ B[tile rows x RP].T for the 128-column tiles of the span below n_end, one
// 16-row fragment of one tile at a time (16 accumulators per thread), applied to the output tile
// in shared memory: out = round(fma(d, w, out)) (or round(d * w)). The tile moves between shared
// memory and the accumulator layout by ldmatrix / stmatrix (four 8x8 blocks per instruction);
// rows without a route hold garbage that is never stored. Every caller runs this very sequence,
// so the fused and the standalone paths round identically.
template <typename T, int MI, int SPAN>
__device__ __forceinline__ void apply_expand_tiles(const T* as, const T* bs, int lda, int RP,
                                                   T* os, int n0, int n_end, const float* wts,
                                                   bool add) {
  constexpr int BN = kExpandBN, LDO = SPAN * BN + 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int a_lane = a_frag_offset(lane, lda), b_lane = b_frag_offset(lane, lda);
  // This lane's row of the x4 matrices (q = lane / 8): rows + 8 * (q & 1), columns + 8 * (q >> 1).
  const int o_lane = ((lane & 7) + ((lane >> 3) & 1) * 8) * LDO + warp * 32 + (lane >> 4) * 8;
  for (int tile = 0; tile < SPAN && n0 + tile * BN < n_end; ++tile) {
    const T* bt = bs + (tile * BN + warp * 32) * lda + b_lane;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
      float acc[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
      const T* at = as + i * 16 * lda + a_lane;
      for (int kb = 0; kb < RP; kb += 16) {
        uint32_t af[4], bf[4];
        ldmatrix_x4(af, at + kb);
#pragma unroll
        for (int n = 0; n < 4; n += 2) {
          ldmatrix_x4(bf, bt + n * 8 * lda + kb);
          MmaOp<T>::run(acc[n], af, bf);
          MmaOp<T>::run(acc[n + 1], af, bf + 2);
        }
      }
      const float w_row[2] = {wts[i * 16 + g], wts[i * 16 + 8 + g]};
      T* ot = os + i * 16 * LDO + tile * BN + o_lane;
#pragma unroll
      for (int n = 0; n < 4; n += 2) {
        // frag[q]: rows g + 8 * (q & 1), columns of n block n + (q >> 1): accumulator pairs.
        uint32_t frag[4];
        if (add) ldmatrix_x4(frag, ot + n * 8);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float* d = acc[n + (q >> 1)] + 2 * (q & 1);
          const float wt = w_row[q & 1];
          float2 v = make_float2(d[0] * wt, d[1] * wt);
          if (add) {
            const float2 o = unpack2<T>(frag[q]);
            v = make_float2(fmaf(d[0], wt, o.x), fmaf(d[1], wt, o.y));
          }
          frag[q] = pack2<T>(v.x, v.y);
        }
        stmatrix_x4(ot + n * 8, frag);
      }
    }
  }
}

// Work item: BM = 16*MI routes x BW = SPAN adjacent 128-column tiles of one slice.
template <int MI, int SPAN = 1>
struct ExpandTile {
  static constexpr int BM = 16 * MI, BW = SPAN * kExpandBN;
  static constexpr int LDO = BW + 8;  // output tile row: +16 bytes, no bank conflicts
  static constexpr int kHead = 4 * (kMaxLoras + 1) + 4 * 4 + 4 * BM + 4 * BM;
  static constexpr int kHeadAligned = align128(kHead);
  // Operands [BM + BW][RP + 8] and the output tile [BM][LDO] in T, then the chunk-group
  // scratch [G][BM][RP] fp32.
  static int smem(int RP, int G, int elem) {
    return kHeadAligned + ((BM + BW) * (RP + 8) + BM * LDO) * elem +
           (G > 1 ? G * BM * RP * 4 : 0);
  }
};

template <typename T, int MI, int SPAN>
__global__ void __launch_bounds__(kThreads) moe_lora_expand_kernel(const ExpandArgs p) {
  using Tile = ExpandTile<MI, SPAN>;
  constexpr int BM = Tile::BM, BN = kExpandBN, BW = Tile::BW, LDO = Tile::LDO;
  extern __shared__ __align__(128) unsigned char smem[];
  int* prefix = reinterpret_cast<int*>(smem);
  int* scratch = prefix + kMaxLoras + 1;
  int* ids = scratch + 4;
  float* wts = reinterpret_cast<float*>(ids + BM);
  const int LDA = p.RP + 8;  // +16 bytes per row: conflict-free fragment loads
  const int rc_shift = __ffs(p.RP) - 4;  // log2 of the 16-byte chunks per operand row (RP / 8)
  T* as = reinterpret_cast<T*>(smem + Tile::kHeadAligned);  // [BM][LDA]
  T* bs = as + BM * LDA;                                      // [BW][LDA]
  T* os = bs + BW * LDA;                                      // [BM][LDO] output tile
  float* red = reinterpret_cast<float*>(os + BM * LDO);

  const Routing& rt = p.rt;
  const int tid = threadIdx.x;
  T* out = static_cast<T*>(p.out);
  bool waited = false;

  const int nblk = build_work_prefix(rt, prefix, scratch);
  const int spans = (p.ntiles + SPAN - 1) / SPAN;
  const int total = nblk * p.S * spans;
  for (int w = blockIdx.x; w < total; w += gridDim.x) {
    const int wb = w % nblk, rest = w / nblk;
    const int nt = (rest % spans) * SPAN, s = rest / spans;
    const WorkBlock blk = locate_block(rt, prefix, wb, BM);
    const int l = blk.l, e = blk.e;
    if (e < 0 || e >= rt.E) continue;
    const int n0 = nt * BN;
    const T* bw = static_cast<const T*>(p.b[s]) + l * p.b_sl[s] + e * p.b_se[s];
    const int64_t col_base = p.col0 + static_cast<int64_t>(s) * p.N + n0;

    for (int m0 = 0; m0 < rt.BS; m0 += BM) {
      __syncthreads();  // the previous tile is done with shared memory
      const int mine = tile_route(rt, blk, m0, BM);
      if (tid < BM) ids[tid] = mine;
      if (!__syncthreads_or(mine >= 0)) continue;
      // Routing weight: issued now, stored to shared memory once the operands are in flight.
      const float wmine = mine >= 0 && p.weights != nullptr ? p.weights[mine] : 1.f;

      // B tile [BW x RP] (rows past N in a live tile and ranks past rb zero-filled), in flight
      // meanwhile.
      load_b_tile(bs, LDA, rc_shift, bw, p.b_sn[s], n0, BW, p.N, p.rb);
      cp_async_commit();

      // Output tile into shared memory (16-byte cp.async, no registers held): its latency
      // overlaps the weights and the partial sums. Rows without a route are never touched.
      if (p.add) {
        load_out_tile<T, BM, BW>(os, out, p.out_row, col_base, ids, n0, p.N, p.vec);
        cp_async_commit();
      }

      // A tile [BM x RP]: the rank vectors, rounded to T exactly once.
      if (!waited) {
        pdl_wait_primary();  // partials / rank vectors come from the shrink
        waited = true;
      }
      if (p.partial != nullptr) {
        reduce_partials<BM>(p.partial, p.ksplit, p.S, s, rt.numel, p.RP, p.G, ids, red,
                            [&](int row, int col, float4 v) {
                              store_rounded4(as + row * LDA + col, v);
                            });
      } else if (p.inter_vec) {
        const T* inter = static_cast<const T*>(p.inter);
        for (int c = tid; c < (BM << rc_shift); c += kThreads) {
          const int row = c >> rc_shift, col = (c & ((1 << rc_shift) - 1)) * 8, id = ids[row];
          const bool ok = id >= 0 && col < p.r;
          const T* src = inter + (static_cast<int64_t>(s) * rt.numel + id) * p.inter_ld + col;
          cp_async16(as + row * LDA + col, ok ? src : inter, ok);
        }
        cp_async_commit();
      } else {
        copy_rank_vectors<T, BM>(p, s, ids, as, LDA);
      }
      if (tid < BM) wts[tid] = wmine;
      cp_async_wait<0>();
      __syncthreads();

      apply_expand_tiles<T, MI, SPAN>(as, bs, LDA, p.RP, os, n0, p.N, wts, p.add);
      __syncthreads();
      store_out_tile<T, BM, BW>(out, p.out_row, col_base, os, ids, n0, p.N, p.vec);
    }
  }
}

// intermediate[s, i, :r] = round_to_T(sum over K chunks of partial[., s, i, :r]) for the routes
// of every real block, summed exactly as the expand stage sums them: the standalone shrink op,
// and the fused op where the tiled expand would otherwise sum the chunks once per column tile.
struct ReduceArgs {
  Routing rt;
  const float* partial;  // [ksplit, S, numel, RP] fp32
  int ksplit, G, S, RP, r;
  void* inter;           // [S, numel, r] in T
};

template <typename T, int MI>
__global__ void __launch_bounds__(kThreads) moe_lora_reduce_kernel(const ReduceArgs p) {
  constexpr int BM = 16 * MI;
  extern __shared__ __align__(128) unsigned char smem[];
  int* prefix = reinterpret_cast<int*>(smem);
  int* scratch = prefix + kMaxLoras + 1;
  int* ids = scratch + 4;
  float* red = reinterpret_cast<float*>(smem + ExpandTile<MI>::kHeadAligned);
  const Routing& rt = p.rt;
  T* inter = static_cast<T*>(p.inter);
  // Launched behind the shrink (programmatic dependent launch): the routing was written before
  // it, the partials are read after its grid completes; the expand may start prefetching now.
  pdl_launch_dependents();
  const int nblk = build_work_prefix(rt, prefix, scratch);
  pdl_wait_primary();
  for (int w = blockIdx.x; w < nblk * p.S; w += gridDim.x) {
    const int wb = w % nblk, s = w / nblk;
    const WorkBlock blk = locate_block(rt, prefix, wb, BM);
    if (blk.e < 0 || blk.e >= rt.E) continue;
    for (int m0 = 0; m0 < rt.BS; m0 += BM) {
      __syncthreads();
      if (threadIdx.x < BM) ids[threadIdx.x] = tile_route(rt, blk, m0, BM);
      __syncthreads();
      reduce_partials<BM>(p.partial, p.ksplit, p.S, s, rt.numel, p.RP, p.G, ids, red,
                          [&](int row, int col, float4 v) {
                            const int id = ids[row];
                            if (id < 0) return;
                            T* dst = inter + (static_cast<int64_t>(s) * rt.numel + id) * p.r;
                            const float vals[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                            for (int q = 0; q < 4; ++q)
                              if (col + q < p.r) dst[col + q] = from_f32<T>(vals[q]);
                          });
    }
  }
}

}  // namespace lora_gemm
}  // namespace moe_ext
