// Torch-free CUDA kernel of the moe_align family: per adapter slot, a stable counting sort of
// the routes into expert segments padded to block_size.
//
// One CTA per slot. Each warp owns a contiguous range of routes: pass 1 counts the slot's
// routes per (warp, expert) in shared memory; a scan over warps and experts gives every warp
// its first position inside each expert segment; pass 2 walks the same range in order and
// scatters the route indices. Positions therefore follow ascending route index, and the result
// depends on nothing but the input (no atomics on global memory, no ordering races).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moe_ext {

struct AlignParams {
  const void* topk_ids;             // [numel] int32 or int64 (flattened [T, k])
  bool ids_are_int64;
  const int32_t* token_lora_mapping;  // [T] slot or -1; nullptr: every token in slot 0
  const void* adapter_enabled;      // [>= num_slots] int32 or bool; nullptr: all enabled
  bool enabled_is_bool;
  const int32_t* expert_map;        // [num_experts] global -> local or -1; nullptr: identity
  int32_t numel;
  int32_t top_k;
  int32_t num_experts;
  int32_t block_size;
  int32_t num_slots;
  int32_t padded_len;  // P: length of one slot's row of sorted_token_ids
  int32_t* sorted_token_ids;     // [num_slots, P]
  int32_t* expert_ids;           // [num_slots, P / block_size]
  int32_t* num_tokens_post_pad;  // [num_slots]
};

namespace align_detail {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

template <typename IdT>
__device__ __forceinline__ int route_expert(const AlignParams& p, const IdT* ids, int32_t slot,
                                            int32_t i) {
  if (p.token_lora_mapping != nullptr && __ldg(p.token_lora_mapping + i / p.top_k) != slot)
    return -1;
  const int64_t e = static_cast<int64_t>(__ldg(ids + i));
  if (e < 0 || e >= p.num_experts) return -1;
  if (p.expert_map == nullptr) return static_cast<int>(e);
  const int32_t local = __ldg(p.expert_map + e);
  return local >= 0 && local < p.num_experts ? local : -1;
}

__device__ __forceinline__ bool slot_enabled(const AlignParams& p, int32_t slot) {
  if (p.adapter_enabled == nullptr) return true;
  return p.enabled_is_bool ? static_cast<const uint8_t*>(p.adapter_enabled)[slot] != 0
                           : static_cast<const int32_t*>(p.adapter_enabled)[slot] != 0;
}

// Exclusive scan of one value per thread over the CTA; also returns the total.
__device__ __forceinline__ int block_exclusive_scan(int value, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = value;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int s = warp_sums[lane];
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, s, d);
      if (lane >= d) s += up;
    }
    warp_sums[lane] = s;  // inclusive prefix of warp totals
  }
  __syncthreads();
  *total = warp_sums[kWarps - 1];
  return inclusive - value + (warp > 0 ? warp_sums[warp - 1] : 0);
}

// Shared memory: hist[kWarps][E] (per-warp counts, then per-warp start offsets), seg_start[E+1].
template <typename IdT>
__global__ void __launch_bounds__(kThreads) align_kernel(AlignParams p) {
  extern __shared__ int smem[];
  const int num_experts = p.num_experts;
  int* hist = smem;
  int* seg_start = hist + kWarps * num_experts;
  __shared__ int warp_sums[kWarps];

  const int32_t slot = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const IdT* ids = static_cast<const IdT*>(p.topk_ids);
  const bool active = slot_enabled(p, slot);
  // Warp w owns routes [w * chunk, (w + 1) * chunk), chunk a multiple of 32.
  const int chunk = ((p.numel + kWarps - 1) / kWarps + 31) & ~31;
  const int begin = warp * chunk;
  const int end = min(begin + chunk, p.numel);

  for (int j = threadIdx.x; j < kWarps * num_experts; j += kThreads) hist[j] = 0;
  __syncthreads();
  if (active) {
    int* my_hist = hist + warp * num_experts;
    for (int i = begin + lane; i < end; i += 32) {
      const int e = route_expert(p, ids, slot, i);
      if (e >= 0) atomicAdd(my_hist + e, 1);
    }
  }
  __syncthreads();

  // Per expert: turn the warp counts into start offsets inside the segment; pad the total.
  const int e = threadIdx.x;  // num_experts <= kThreads
  int padded = 0;
  if (e < num_experts) {
    int running = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int c = hist[w * num_experts + e];
      hist[w * num_experts + e] = running;
      running += c;
    }
    padded = (running + p.block_size - 1) / p.block_size * p.block_size;
  }
  int total;
  const int start = block_exclusive_scan(padded, warp_sums, &total);
  if (e < num_experts) seg_start[e] = start;
  if (threadIdx.x == 0) {
    seg_start[num_experts] = total;
    p.num_tokens_post_pad[slot] = total;
  }
  __syncthreads();

  // Block b belongs to the last expert whose segment starts at or before b * block_size.
  const int num_blocks = p.padded_len / p.block_size;
  int32_t* row_experts = p.expert_ids + static_cast<int64_t>(slot) * num_blocks;
  for (int b = threadIdx.x; b < num_blocks; b += kThreads) {
    const int pos = b * p.block_size;
    int expert = -1;
    if (pos < total) {
      int lo = 0, hi = num_experts - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (seg_start[mid] <= pos) lo = mid; else hi = mid - 1;
      }
      expert = lo;
    }
    row_experts[b] = expert;
  }

  // Sentinel everywhere, then the routes on top (the barrier orders the two writes).
  int32_t* row = p.sorted_token_ids + static_cast<int64_t>(slot) * p.padded_len;
  if ((p.padded_len & 3) == 0) {
    const int4 fill = make_int4(p.numel, p.numel, p.numel, p.numel);
    int4* row4 = reinterpret_cast<int4*>(row);
    for (int j = threadIdx.x; j < p.padded_len / 4; j += kThreads) row4[j] = fill;
  } else {
    for (int j = threadIdx.x; j < p.padded_len; j += kThreads) row[j] = p.numel;
  }
  __syncthreads();
  if (!active) return;

  int* my_start = hist + warp * num_experts;
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (int base = begin; base < end; base += 32) {
    const int i = base + lane;
    const int expert = i < end ? route_expert(p, ids, slot, i) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, expert);
    const int rank = __popc(peers & lower_lanes);
    int offset = 0;
    if (expert >= 0) offset = my_start[expert];
    __syncwarp();
    if (expert >= 0) {
      row[seg_start[expert] + offset + rank] = i;
      if (rank == 0) my_start[expert] = offset + __popc(peers);
    }
    __syncwarp();
  }
}

}  // namespace align_detail

inline size_t align_smem_bytes(int num_experts) {
  return sizeof(int) * (static_cast<size_t>(align_detail::kWarps) * num_experts + num_experts + 1);
}

// Launches one CTA per slot on `stream`. Requires num_experts <= 1024 and numel < 2^30.
inline cudaError_t launch_moe_align(const AlignParams& p, cudaStream_t stream) {
  const size_t smem = align_smem_bytes(p.num_experts);
  auto kernel = p.ids_are_int64 ? align_detail::align_kernel<int64_t>
                                : align_detail::align_kernel<int32_t>;
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<p.num_slots, align_detail::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace moe_ext
