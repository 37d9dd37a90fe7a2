// Decode path of the multi-LoRA MoE GEMM (blocks of at most 16 rows): shrink and expand in one
// launch, with the rank vectors kept on chip. A thread-block cluster of C CTAs owns one
// (block, slice) item at a time: CTA c multiplies the block's x rows by lora_a over K chunk c
// (an fp32 partial in its shared memory), every CTA sums the C partials in rank order through
// distributed shared memory and rounds them once, and CTA c applies them to its own column tiles
// of lora_b. Without an output (the standalone shrink op) CTA 0 writes the rounded rank vectors
// instead, so shrink + expand stays bit-identical to the fused op.
#pragma once

#include "moe_ext/moe_lora_gemm_expand.cuh"
#include "moe_ext/moe_lora_gemm_shrink.cuh"

namespace moe_ext {
namespace lora_gemm {

constexpr unsigned kMaxCluster = 8;  // portable cluster size

struct DecodeArgs {
  ShrinkArgs sh;  // routing, x, lora_a, K, r, RP, S; kchunk = K chunk of one CTA (multiple of
                  // 16); tmp = intermediate [S, numel, r] for the standalone shrink
  ExpandArgs ex;  // lora_b, N, ntiles, weights, output; out == nullptr: shrink only
  int tiles;      // 128-column tiles per CTA, at most SPAN (C * tiles >= ntiles)
  bool late_out;  // the output tile shares the operands' space (DecodeLayout)
};

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ unsigned cluster_size() {
  unsigned n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return n;
}
// Split cluster barrier: arrive (release) publishes this CTA's shared-memory writes, wait
// acquires the others'; the relaxed arrive only says "done reading" (the values read are
// already consumed). Every thread alternates arrive and wait.
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// 16 bytes at the same shared-memory offset as `local`, in CTA `rank` of the cluster (ordered
// by the cluster barrier before it, so no compiler barrier: loads from several CTAs overlap).
__device__ __forceinline__ float4 load_peer_f4(const float* local, unsigned rank) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(local));
  unsigned peer;
  asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(peer) : "r"(a), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(peer));
  return v;
}

// Shared memory of one CTA (bytes, 128-aligned parts from 0): work prefix [L + 1], scan scratch,
// ids and weights, then partial [16][RP] fp32 (read by the cluster), operands x [16][KC + 8] and
// lora_a [RP][KC + 8] (once consumed: the warps' fp32 sums [4][16][RP], and with late_out the
// output tile [16][SPAN * 128 + 8]), rank vectors [16][RP + 8], the expand's B tile
// [SPAN * 128][RP + 8], then (without late_out) the output tile.
struct DecodeLayout {
  int partial, operands, otile, rank, btile, total;
  __host__ __device__ DecodeLayout(int L, int RP, int KC, int span, int elem, bool late_out) {
    partial = routing_head_bytes(L);
    operands = partial + align128(16 * RP * 4);
    const int ops = align128((16 + RP) * (KC + 8) * elem), red = align128(4 * 16 * RP * 4);
    const int out = span > 0 ? align128(16 * (span * kExpandBN + 8) * elem) : 0;
    const int reuse = red + (late_out ? out : 0);
    rank = operands + (ops > reuse ? ops : reuse);
    btile = rank + align128(16 * (RP + 8) * elem);
    const int end = btile + align128(span * kExpandBN * (RP + 8) * elem);
    otile = late_out ? operands + red : end;
    total = late_out ? end : end + out;
  }
};

template <typename T, int RP, int SPAN>
__global__ void __launch_bounds__(kThreads) moe_lora_decode_kernel(const DecodeArgs p) {
  constexpr int BM = 16, NF = RP / 8, BW = SPAN * kExpandBN, LDA = RP + 8;
  extern __shared__ __align__(128) unsigned char smem[];
  const ShrinkArgs& sh = p.sh;
  const ExpandArgs& ex = p.ex;
  const Routing& rt = sh.rt;
  const int KC = sh.kchunk, LDX = KC + 8, XC = KC / 8;
  // The shrink-only mode (no output) is launched with the layout of no column tiles.
  const DecodeLayout lay(rt.L, RP, KC, ex.out != nullptr ? SPAN : 0, static_cast<int>(sizeof(T)),
                         p.late_out);
  int* prefix = reinterpret_cast<int*>(smem);
  int* scratch = prefix + rt.L + 1;
  int* ids = scratch + 4;
  float* wts = reinterpret_cast<float*>(ids + BM);
  float* partial = reinterpret_cast<float*>(smem + lay.partial);  // [BM][RP]
  T* xs = reinterpret_cast<T*>(smem + lay.operands);              // [BM][LDX]
  T* as = xs + BM * LDX;                                          // [RP][LDX]
  float* red = reinterpret_cast<float*>(smem + lay.operands);     // [4][BM][RP]
  T* rank_vec = reinterpret_cast<T*>(smem + lay.rank);            // [BM][LDA]
  T* bs = reinterpret_cast<T*>(smem + lay.btile);                 // [BW][LDA]
  T* os = reinterpret_cast<T*>(smem + lay.otile);                 // [BM][BW + 8]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const unsigned C = cluster_size(), c = cluster_rank();
  const int cluster = blockIdx.x / C, clusters = gridDim.x / C;
  const int k_begin = c * KC, k_end = min(sh.K, k_begin + KC);
  const int nks = k_end > k_begin ? (k_end - k_begin + 15) / 16 : 0;
  const T* x = static_cast<const T*>(sh.x);
  T* out = static_cast<T*>(ex.out);
  const bool expand = out != nullptr;
  // This CTA's columns of each slice: [n0, n_end), at most SPAN tiles.
  const int n0 = c * p.tiles * kExpandBN, n_end = min(ex.N, n0 + p.tiles * kExpandBN);
  const int rc_shift = __ffs(RP) - 4;
  bool reading = false;  // the cluster may still read this CTA's partial

  // Launched behind the stream's previous kernel (programmatic dependent launch): the grid is
  // scheduled while that kernel runs and reads nothing before it completes. Back-to-back decode
  // calls then overlap one call's launch with the previous call's tail.
  pdl_wait_primary();
  pdl_launch_dependents();  // the next kernel may be scheduled now (it waits for this one)
  const int nblk = build_work_prefix(rt, prefix, scratch);
  for (int w = cluster; w < nblk * sh.S; w += clusters) {
    const int wb = w % nblk, s = w / nblk;
    const WorkBlock blk = locate_block(rt, prefix, wb, BM);
    const int l = blk.l, e = blk.e;
    if (e < 0 || e >= rt.E) continue;  // the same data for the whole cluster: it skips together
    __syncthreads();  // the previous item is done with shared memory
    const int mine = tile_route(rt, blk, 0, BM);
    if (tid < BM) ids[tid] = mine;
    if (!__syncthreads_or(mine >= 0)) continue;
    const float wmine = mine >= 0 && ex.weights != nullptr ? ex.weights[mine] : 1.f;

    // Operands of K chunk c, all in flight at once: x rows of the routes and lora_a rows (ranks
    // past r and columns past K zero-filled; rows without a route are left as they are: they
    // only reach partial rows that are never summed).
    for (int q = tid; q < BM * XC; q += kThreads) {
      const int row = q / XC, col = (q % XC) * 8, id = ids[row];
      if (id < 0) continue;
      const bool ok = k_begin + col < k_end;
      const int64_t xr = sh.x_per_route ? id : id / sh.top_k;
      cp_async16(xs + row * LDX + col, ok ? x + xr * sh.x_row_stride + k_begin + col : x, ok);
    }
    const T* a = static_cast<const T*>(sh.a[s]) + l * sh.a_sl[s] + e * sh.a_se[s] + k_begin;
    for (int q = tid; q < RP * XC; q += kThreads) {
      const int row = q / XC, col = (q % XC) * 8;
      const bool ok = row < sh.r && k_begin + col < k_end;
      cp_async16(as + row * LDX + col, ok ? a + row * sh.a_sr[s] + col : x, ok);
    }
    cp_async_commit();
    // This CTA's B and output tiles come meanwhile.
    const int64_t col_base = ex.col0 + static_cast<int64_t>(s) * ex.N + n0;
    if (expand && n0 < n_end) {
      const T* bw = static_cast<const T*>(ex.b[s]) + l * ex.b_sl[s] + e * ex.b_se[s];
      load_b_tile(bs, LDA, rc_shift, bw, ex.b_sn[s], n0, BW, n_end, ex.rb);
      if (ex.add && !p.late_out)
        load_out_tile<T, BM, BW>(os, out, ex.out_row, col_base, ids, n0, n_end, ex.vec);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    // This CTA's partial: the warps take interleaved k16 steps, then are summed in warp order.
    float acc[NF][4];
#pragma unroll
    for (int n = 0; n < NF; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    const T* xt = xs + a_frag_offset(lane, LDX);
    const T* at = as + b_frag_offset(lane, LDX);
    for (int kk = warp; kk < nks; kk += 4) {
      uint32_t af[4];
      ldmatrix_x4(af, xt + kk * 16);
#pragma unroll
      for (int n = 0; n < NF; n += 2) {
        uint32_t bf[4];
        ldmatrix_x4(bf, at + n * 8 * LDX + kk * 16);
        MmaOp<T>::run(acc[n], af, bf);
        MmaOp<T>::run(acc[n + 1], af, bf + 2);
      }
    }
    __syncthreads();  // operands consumed: red (and with late_out the output tile) reuse them
    // The output rows arrive while the cluster sums the partials.
    if (expand && n0 < n_end && ex.add && p.late_out) {
      load_out_tile<T, BM, BW>(os, out, ex.out_row, col_base, ids, n0, n_end, ex.vec);
      cp_async_commit();
    }
#pragma unroll
    for (int n = 0; n < NF; ++n) {
      const int col = n * 8 + 2 * t4;
      *reinterpret_cast<float2*>(red + (warp * BM + g) * RP + col) =
          make_float2(acc[n][0], acc[n][1]);
      *reinterpret_cast<float2*>(red + (warp * BM + g + 8) * RP + col) =
          make_float2(acc[n][2], acc[n][3]);
    }
    __syncthreads();
    if (reading) cluster_wait();  // the cluster is done with the previous partial
    for (int u = tid; u < BM * RP / 4; u += kThreads) {
      float4 v = reinterpret_cast<const float4*>(red)[u];
#pragma unroll
      for (int q = 1; q < 4; ++q) {
        const float4 o = reinterpret_cast<const float4*>(red + q * BM * RP)[u];
        v.x += o.x; v.y += o.y; v.z += o.z; v.w += o.w;
      }
      reinterpret_cast<float4*>(partial)[u] = v;
    }
    cluster_arrive();
    cluster_wait();

    // Rank vectors: the C partials summed in rank order, rounded once.
    if (expand || c == 0) {
      for (int u = tid; u < BM * RP / 4; u += kThreads) {
        const int row = u / (RP / 4), col = (u % (RP / 4)) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (ids[row] >= 0) {
          float4 o[kMaxCluster];  // all C loads in flight, then summed in rank order
#pragma unroll
          for (unsigned q = 0; q < kMaxCluster; ++q)
            if (q < C) o[q] = load_peer_f4(partial + row * RP + col, q);
#pragma unroll
          for (unsigned q = 0; q < kMaxCluster; ++q)
            if (q < C) {
              v.x += o[q].x; v.y += o[q].y; v.z += o[q].z; v.w += o[q].w;
            }
        }
        store_rounded4(rank_vec + row * LDA + col, v);
      }
    }
    cluster_arrive_relaxed();
    reading = true;

    if (!expand) {
      if (c == 0) {
        __syncthreads();
        T* inter = static_cast<T*>(sh.tmp);
        for (int u = tid; u < BM * sh.r; u += kThreads) {
          const int row = u / sh.r, col = u % sh.r, id = ids[row];
          if (id >= 0)
            inter[(static_cast<int64_t>(s) * rt.numel + id) * sh.r + col] =
                rank_vec[row * LDA + col];
        }
      }
      continue;
    }
    if (n0 >= n_end) continue;
    if (tid < BM) wts[tid] = wmine;
    cp_async_wait<0>();
    __syncthreads();
    apply_expand_tiles<T, 1, SPAN>(rank_vec, bs, LDA, RP, os, n0, n_end, wts, ex.add);
    __syncthreads();
    store_out_tile<T, BM, BW>(out, ex.out_row, col_base, os, ids, n0, n_end, ex.vec);
  }
  if (reading) cluster_wait();  // no CTA leaves while the cluster reads its shared memory
}

}  // namespace lora_gemm
}  // namespace moe_ext
