// Shrink stage of the multi-LoRA MoE GEMM: for every real (slot l, block b) of the alignment and
// every K chunk, partial[ks, s, i, :] = x[row(i), chunk] @ lora_a[s][l, e][:, chunk].T in fp32.
// The K split keeps all SMs streaming weights at decode sizes; the expand stage sums the chunks
// in a fixed order (deterministic, no atomics). Rows of x are gathered by route index.
#pragma once

#include "moe_ext/moe_lora_gemm_common.cuh"

namespace moe_ext {
namespace lora_gemm {

struct ShrinkArgs {
  Routing rt;
  const void* x;         // [T or numel, K], rows x_row_stride apart, 16-byte aligned rows
  int64_t x_row_stride;
  int K, top_k;
  bool x_per_route;      // x row = route i (down input) instead of i / top_k (gate/up input)
  const void* a[kMaxSlices];  // lora_a[s]: [L, E, r, K], unit stride on K
  int64_t a_sl[kMaxSlices], a_se[kMaxSlices], a_sr[kMaxSlices];
  int S, r, ksplit, kchunk;  // kchunk: multiple of the stage depth BK
  float* partial;            // [ksplit, S, numel, RP] fp32 (RP = rank padded to the tile), or
  void* tmp;                 // with ksplit == 1: [S, numel, RP] in T, already rounded
  int RP;
  bool max_shared;           // launch with the largest shared-memory carveout (overlap_expand)
};

// Tile: BM = 16*WM routes x RP ranks for NS slices at once (the x tile is loaded once for all
// of them), K in stages of BK. The 4 warps split M (WM of them) and the k16 steps of a stage
// (4/WM of them); split-k warps are summed through shared memory in a fixed order.
template <typename T, int RP, int WM, int BK, int STAGES, int NS>
struct ShrinkTile {
  static constexpr int BM = 16 * WM;
  static constexpr int WK = 4 / WM;
  static constexpr int LD = BK + 8;  // +16 bytes per row: conflict-free fragment loads
  static constexpr int XC = BK / 8;  // 16-byte chunks per row and stage
  static constexpr int X_PER_THREAD = BM * XC / kThreads;
  static constexpr int A_PER_THREAD = RP * XC / kThreads;  // per slice
  static_assert(BM * XC % kThreads == 0 && RP * XC % kThreads == 0, "whole chunks per thread");
  static constexpr int kPipeBytes = STAGES * (BM + NS * RP) * LD * 2;
  static constexpr int kRedBytes = WK > 1 ? NS * WK * BM * RP * 4 : 0;
  // x row pointers, work prefix, scan scratch, ids
  static constexpr int kHead = 8 * BM + 4 * (kMaxLoras + 1) + 4 * 4 + 4 * BM;
  static constexpr int kHeadAligned = align128(kHead);
  static constexpr int kSmem = kHeadAligned + (kPipeBytes > kRedBytes ? kPipeBytes : kRedBytes);
  // CTAs per SM that shared memory allows: registers are capped to match, so they never are
  // the tighter limit.
  static constexpr int kFit = ctas_by_smem(kSmem);
  static constexpr int kMinBlocks = kFit < 1 ? 1 : kFit > 8 ? 8 : kFit;
};

// Two adjacent ranks of route id: fp32 partials, or (single K chunk) the rounded T values.
template <typename T>
__device__ __forceinline__ void store_pair(const ShrinkArgs& p, float* partial_slice, int s,
                                           int id, int col, float v0, float v1) {
  if (p.partial != nullptr) {
    *reinterpret_cast<float2*>(partial_slice + static_cast<int64_t>(id) * p.RP + col) =
        make_float2(v0, v1);
  } else {
    T* dst = static_cast<T*>(p.tmp) + (static_cast<int64_t>(s) * p.rt.numel + id) * p.RP + col;
    *reinterpret_cast<uint32_t*>(dst) = pack2<T>(v0, v1);
  }
}

template <typename T, int RP, int WM, int BK, int STAGES, int NS>
__global__ void __launch_bounds__(kThreads, (ShrinkTile<T, RP, WM, BK, STAGES, NS>::kMinBlocks))
    moe_lora_shrink_kernel(const ShrinkArgs p) {
  using Tile = ShrinkTile<T, RP, WM, BK, STAGES, NS>;
  constexpr int BM = Tile::BM, WK = Tile::WK, LD = Tile::LD, NF = RP / 8, XC = Tile::XC;
  extern __shared__ __align__(128) unsigned char smem[];
  const T** xrows = reinterpret_cast<const T**>(smem);  // [BM] x row of each route, or nullptr
  int* prefix = reinterpret_cast<int*>(xrows + BM);
  int* scratch = prefix + kMaxLoras + 1;
  int* ids = scratch + 4;
  T* xs = reinterpret_cast<T*>(smem + Tile::kHeadAligned);  // [STAGES][BM][LD]
  T* as = xs + STAGES * BM * LD;                             // [STAGES][NS][RP][LD]
  float* red = reinterpret_cast<float*>(smem + Tile::kHeadAligned);

  const Routing& rt = p.rt;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int wm = warp % WM, wk = warp / WM;
  const T* x = static_cast<const T*>(p.x);
  // Each thread copies the same 16-byte column of its rows at every stage: row = chunk / XC.
  const int ccol = (tid % XC) * 8, crow = tid / XC;
  constexpr int kRowStep = kThreads / XC;

  // The down input's rows are read once (the gate/up input's by the top_k routes of their
  // token): up to rank 32 they are marked evict-first, which keeps lora_a in L2 for the other
  // blocks of its pair (H100, down r16 T = 1024 / 4096: 1-6 % faster; rank 64 did not gain).
  const bool x_once = p.x_per_route && RP <= 32;
  const uint64_t x_policy = evict_first_policy();
  pdl_launch_dependents();  // the expand grid may start prefetching now
  const int nblk = build_work_prefix(rt, prefix, scratch);
  const int groups = p.S / NS;
  const int total = nblk * groups * p.ksplit;
  // Consecutive CTAs take consecutive blocks of one (slice, chunk): blocks of the same
  // (adapter, expert) pair then read the same weights close in time (L2 hits).
  for (int w = blockIdx.x; w < total; w += gridDim.x) {
    const int wb = w % nblk, rest = w / nblk;
    const int ks = rest % p.ksplit, s0 = (rest / p.ksplit) * NS;
    const WorkBlock blk = locate_block(rt, prefix, wb, BM);
    const int l = blk.l, e = blk.e;
    if (e < 0 || e >= rt.E) continue;
    const int k_begin = ks * p.kchunk;
    const int k_end = min(p.K, k_begin + p.kchunk);
    if (k_begin >= k_end) continue;
    const int nk = (k_end - k_begin + BK - 1) / BK;
    // This thread's first lora_a row of each slice (rows crow + i * kRowStep), at its column.
    const T* a_row[NS];
#pragma unroll
    for (int j = 0; j < NS; ++j)
      a_row[j] = static_cast<const T*>(p.a[s0 + j]) + l * p.a_sl[s0 + j] + e * p.a_se[s0 + j] +
                 crow * p.a_sr[s0 + j] + ccol;

    for (int m0 = 0; m0 < rt.BS; m0 += BM) {
      __syncthreads();  // the previous tile is done with ids, row pointers and the stages
      const int mine = tile_route(rt, blk, m0, BM);
      if (tid < BM) {
        ids[tid] = mine;
        const int64_t xr = p.x_per_route ? mine : mine / p.top_k;
        xrows[tid] = mine >= 0 ? x + xr * p.x_row_stride : nullptr;
      }
      if (!__syncthreads_or(mine >= 0)) continue;
      // This thread's x rows, read once per tile: from shared memory at every stage they were
      // a dependent load in front of each request.
      const T* xsrc[Tile::X_PER_THREAD];
#pragma unroll
      for (int i = 0; i < Tile::X_PER_THREAD; ++i) xsrc[i] = xrows[crow + i * kRowStep];

      auto load_stage = [&](int stage, int kt) {
        const int k0 = k_begin + kt * BK;
        const bool k_ok = k0 + ccol < k_end;
        T* xd = xs + stage * BM * LD + crow * LD + ccol;
#pragma unroll
        for (int i = 0; i < Tile::X_PER_THREAD; ++i) {
          const T* src = xsrc[i];
          const bool ok = src != nullptr && k_ok;
          if (x_once)
            cp_async16_stream(xd + i * kRowStep * LD, ok ? src + k0 + ccol : x, ok, x_policy);
          else
            cp_async16(xd + i * kRowStep * LD, ok ? src + k0 + ccol : x, ok);
        }
#pragma unroll
        for (int j = 0; j < NS; ++j) {
          T* ad = as + (stage * NS + j) * RP * LD + crow * LD + ccol;
          const T* src = a_row[j] + k0;
          const int64_t step = kRowStep * p.a_sr[s0 + j];
#pragma unroll
          for (int i = 0; i < Tile::A_PER_THREAD; ++i, src += step) {
            const bool ok = crow + i * kRowStep < p.r && k_ok;
            cp_async16(ad + i * kRowStep * LD, ok ? src : x, ok);
          }
        }
      };

      float acc[NS][NF][4];
#pragma unroll
      for (int j = 0; j < NS; ++j)
#pragma unroll
        for (int n = 0; n < NF; ++n) acc[j][n][0] = acc[j][n][1] = acc[j][n][2] = acc[j][n][3] = 0.f;
      const bool warp_rows = ids[wm * 16 + g] >= 0 || ids[wm * 16 + g + 8] >= 0;
      const bool warp_live = __any_sync(0xffffffffu, warp_rows);
      const int a_lane = a_frag_offset(lane, LD), b_lane = b_frag_offset(lane, LD);

#pragma unroll
      for (int st = 0; st < STAGES - 1; ++st) {
        if (st < nk) load_stage(st, st);
        cp_async_commit();
      }
      for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int nt = kt + STAGES - 1;
        if (nt < nk) load_stage(nt % STAGES, nt);
        cp_async_commit();
        if (!warp_live) continue;
        const T* xt = xs + (kt % STAGES) * BM * LD + (wm * 16) * LD + a_lane;
        const T* at = as + (kt % STAGES) * NS * RP * LD + b_lane;
#pragma unroll
        for (int kk = wk; kk < BK / 16; kk += WK) {
          uint32_t af[4];
          ldmatrix_x4(af, xt + kk * 16);
#pragma unroll
          for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int n = 0; n < NF; n += 2) {
              uint32_t bf[4];
              ldmatrix_x4(bf, at + (j * RP + n * 8) * LD + kk * 16);
              MmaOp<T>::run(acc[j][n], af, bf);
              MmaOp<T>::run(acc[j][n + 1], af, bf + 2);
            }
        }
      }
      cp_async_wait<0>();
      __syncthreads();

      const int r0 = wm * 16 + g;
#pragma unroll
      for (int j = 0; j < NS; ++j) {
        float* dst = p.partial + (static_cast<int64_t>(ks) * p.S + s0 + j) * rt.numel * RP;
        if (WK == 1) {
          const int id0 = ids[r0], id1 = ids[r0 + 8];
#pragma unroll
          for (int n = 0; n < NF; ++n) {
            const int col = n * 8 + 2 * t4;
            if (id0 >= 0) store_pair<T>(p, dst, s0 + j, id0, col, acc[j][n][0], acc[j][n][1]);
            if (id1 >= 0) store_pair<T>(p, dst, s0 + j, id1, col, acc[j][n][2], acc[j][n][3]);
          }
        } else {
          float* mine_red = red + (j * WK + wk) * BM * RP;
#pragma unroll
          for (int n = 0; n < NF; ++n) {
            const int col = n * 8 + 2 * t4;
            *reinterpret_cast<float2*>(mine_red + r0 * RP + col) =
                make_float2(acc[j][n][0], acc[j][n][1]);
            *reinterpret_cast<float2*>(mine_red + (r0 + 8) * RP + col) =
                make_float2(acc[j][n][2], acc[j][n][3]);
          }
        }
      }
      if (WK > 1) {
        __syncthreads();
        for (int c = tid; c < NS * BM * RP / 4; c += kThreads) {
          const int j = c / (BM * RP / 4), rc = c % (BM * RP / 4);
          const int row = rc / (RP / 4), col = (rc % (RP / 4)) * 4;
          const int id = ids[row];
          if (id < 0) continue;
          const float* base = red + j * WK * BM * RP + row * RP + col;
          float4 sum = *reinterpret_cast<const float4*>(base);
#pragma unroll
          for (int q = 1; q < WK; ++q) {
            const float4 v = *reinterpret_cast<const float4*>(base + q * BM * RP);
            sum.x += v.x; sum.y += v.y; sum.z += v.z; sum.w += v.w;
          }
          float* dst = p.partial + (static_cast<int64_t>(ks) * p.S + s0 + j) * rt.numel * RP;
          store_pair<T>(p, dst, s0 + j, id, col, sum.x, sum.y);
          store_pair<T>(p, dst, s0 + j, id, col + 2, sum.z, sum.w);
        }
      }
    }
  }
}

}  // namespace lora_gemm
}  // namespace moe_ext
