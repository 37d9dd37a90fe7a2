// Expand stage for blocks of at most 16 rows (decode sizes, one or two routes per block): a work
// item is (block, slice, group of adjacent 128-column tiles). The item's block lookup and rank
// vectors are paid once; its tiles then stream through a ring of NS shared-memory slots (B tile
// and output tile each), NS - 1 of them in flight while one is applied. One tile per item (the
// tiled expand) leaves each CTA a chain of dependent round trips per 4-16 KB of weights, far
// from enough bytes in flight per SM to stream lora_b at DRAM speed.
#pragma once

#include "moe_ext/moe_lora_gemm_expand.cuh"

namespace moe_ext {
namespace lora_gemm {

// Shared memory (bytes, 128-aligned parts): work prefix [L + 1], scan scratch, ids and weights;
// rank vectors [16][RP + 8]; then NS slots of B tile [128][RP + 8] and output tile [16][136].
// The chunk-group sums of the rank vectors ([G][16][RP] fp32) use the last slot, which the ring
// fills only after them.
struct StreamLayout {
  int rank, slots, slot, total;
  __host__ __device__ static int slot_bytes(int RP, int elem) {
    return align128(kExpandBN * (RP + 8) * elem) + align128(16 * (kExpandBN + 8) * elem);
  }
  __host__ __device__ StreamLayout(int L, int RP, int NS, int elem) {
    rank = routing_head_bytes(L);
    slots = rank + align128(16 * (RP + 8) * elem);
    slot = slot_bytes(RP, elem);
    total = slots + NS * slot;
  }
};

// Slots in the ring: one B tile of rank 128 is 34 KB.
__host__ __device__ constexpr int stream_slots(int RP) { return RP <= 64 ? 3 : 2; }

template <typename T, int NS>
__global__ void __launch_bounds__(kThreads) moe_lora_expand_stream_kernel(const ExpandArgs p) {
  constexpr int BM = 16, BN = kExpandBN;
  extern __shared__ __align__(128) unsigned char smem[];
  const Routing& rt = p.rt;
  const StreamLayout lay(rt.L, p.RP, NS, static_cast<int>(sizeof(T)));
  int* prefix = reinterpret_cast<int*>(smem);
  int* scratch = prefix + rt.L + 1;
  int* ids = scratch + 4;
  float* wts = reinterpret_cast<float*>(ids + BM);
  const int LDA = p.RP + 8;  // +16 bytes per row: conflict-free fragment loads
  const int rc_shift = __ffs(p.RP) - 4;  // log2 of the 16-byte chunks per operand row (RP / 8)
  T* as = reinterpret_cast<T*>(smem + lay.rank);  // [BM][LDA]
  const int b_bytes = align128(BN * LDA * static_cast<int>(sizeof(T)));
  auto slot_b = [&](int j) { return reinterpret_cast<T*>(smem + lay.slots + (j % NS) * lay.slot); };
  auto slot_o = [&](int j) {
    return reinterpret_cast<T*>(smem + lay.slots + (j % NS) * lay.slot + b_bytes);
  };
  float* red = reinterpret_cast<float*>(smem + lay.slots + (NS - 1) * lay.slot);

  const int tid = threadIdx.x;
  T* out = static_cast<T*>(p.out);
  bool waited = false;

  const int nblk = build_work_prefix(rt, prefix, scratch);
  const int groups = (p.ntiles + p.group - 1) / p.group;
  const int total = nblk * p.S * groups;
  for (int w = blockIdx.x; w < total; w += gridDim.x) {
    const int wb = w % nblk, rest = w / nblk;
    const int t0 = (rest % groups) * p.group, s = rest / groups;
    const int nt = min(p.group, p.ntiles - t0);
    const WorkBlock blk = locate_block(rt, prefix, wb, BM);
    const int l = blk.l, e = blk.e;
    if (e < 0 || e >= rt.E) continue;
    const T* bw = static_cast<const T*>(p.b[s]) + l * p.b_sl[s] + e * p.b_se[s];
    const int64_t col_slice = p.col0 + static_cast<int64_t>(s) * p.N;

    __syncthreads();  // the previous item is done with shared memory
    const int mine = tile_route(rt, blk, 0, BM);
    if (tid < BM) ids[tid] = mine;
    if (!__syncthreads_or(mine >= 0)) continue;
    const float wmine = mine >= 0 && p.weights != nullptr ? p.weights[mine] : 1.f;

    // Tile j of the item into slot j % NS: its B rows and its output rows (one commit group).
    auto issue = [&](int j) {
      if (j < nt) {
        const int n0 = (t0 + j) * BN;
        load_b_tile(slot_b(j), LDA, rc_shift, bw, p.b_sn[s], n0, BN, p.N, p.rb);
        if (p.add) load_out_tile<T, BM, BN>(slot_o(j), out, p.out_row, col_slice + n0, ids, n0,
                                            p.N, p.vec);
      }
      cp_async_commit();  // empty groups too: the ring counts one group per tile
    };
    for (int j = 0; j < NS - 1; ++j) issue(j);

    // Rank vectors [BM x RP], rounded to T exactly once (plain loads: no commit group).
    if (!waited) {
      pdl_wait_primary();  // partials / rank vectors come from the shrink
      waited = true;
    }
    if (p.partial != nullptr) {
      // Eight chunk loads in flight: long K splits (Mixtral's down input: 112 chunks at T = 1).
      reduce_partials<BM, 8>(p.partial, p.ksplit, p.S, s, rt.numel, p.RP, p.G, ids, red,
                          [&](int row, int col, float4 v) {
                            store_rounded4(as + row * LDA + col, v);
                          });
    } else {
      copy_rank_vectors<T, BM>(p, s, ids, as, LDA);
    }
    if (tid < BM) wts[tid] = wmine;

    for (int j = 0; j < nt; ++j) {
      cp_async_wait<NS - 2>();  // tile j has landed (NS - 2 younger groups may be in flight)
      __syncthreads();          // ... for every thread; slot (j - 1) % NS is stored and free
      issue(j + NS - 1);
      const int n0 = (t0 + j) * BN;
      T* os = slot_o(j);
      apply_expand_tiles<T, 1, 1>(as, slot_b(j), LDA, p.RP, os, n0, p.N, wts, p.add);
      __syncthreads();
      store_out_tile<T, BM, BN>(out, p.out_row, col_slice + n0, os, ids, n0, p.N, p.vec);
    }
  }
}

}  // namespace lora_gemm
}  // namespace moe_ext
