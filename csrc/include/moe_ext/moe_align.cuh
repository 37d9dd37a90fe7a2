// Torch-free CUDA kernels of the moe_align family: per adapter slot, a stable counting sort of
// the routes into expert segments padded to block_size.
//
// The routes are cut into chunks; inside a chunk each warp owns a contiguous range. A route's
// position is: start of its expert segment + routes of that (slot, expert) in earlier chunks +
// in earlier warps of its chunk + in earlier lanes of its warp (warp match) + in earlier
// batches of its warp. Positions therefore follow ascending route index and depend on nothing
// but the input: no global atomics, no ordering races, bit-identical results.
//
// Small inputs (one chunk) run in one kernel, one CTA per slot. Larger inputs run three
// kernels over a (chunk, slot) grid: count per chunk, scan per slot (segments, expert_ids,
// padding), scatter per chunk.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moe_ext {

struct AlignParams {
  const void* topk_ids;  // [numel] int32 or int64 (flattened [T, k])
  bool ids_are_int64;
  const int32_t* token_lora_mapping;  // [T] slot or -1; nullptr: every token in slot 0
  const void* adapter_enabled;        // [>= num_slots] int32 or bool; nullptr: all enabled
  bool enabled_is_bool;
  const int32_t* expert_map;  // [num_experts] global -> local or -1; nullptr: identity
  int32_t numel;
  int32_t top_k;
  int32_t num_experts;
  int32_t block_size;
  int32_t num_slots;
  int32_t padded_len;            // P: length of one slot's row of sorted_token_ids
  int32_t* sorted_token_ids;     // [num_slots, P]
  int32_t* expert_ids;           // [num_slots, P / block_size]
  int32_t* num_tokens_post_pad;  // [num_slots]
  // Workspace of the multi-chunk path (see align_workspace_ints): per (slot, chunk, expert)
  // route counts, their exclusive prefix over chunks, and per (slot, expert) segment starts.
  int32_t* workspace;
};

constexpr int kAlignChunk = 8192;  // routes per chunk (8 per thread)

// Chunks of the multi-kernel path (used when > 1).
inline int align_num_chunks(int numel) { return (numel + kAlignChunk - 1) / kAlignChunk; }

// int32 elements of AlignParams::workspace the caller provides (0: none needed).
inline int64_t align_workspace_ints(int numel, int num_experts, int num_slots) {
  const int chunks = align_num_chunks(numel);
  if (chunks <= 1) return 0;
  return static_cast<int64_t>(num_slots) * num_experts * (2 * int64_t{chunks} + 1);
}

namespace align_detail {

constexpr int kThreads = 1024;  // CTA size of every kernel
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = kAlignChunk;
constexpr int kRoutesPerLane = kChunk / kThreads;  // a warp's range fits in its registers
constexpr int kMaxChunkScan = 8;  // chunk counts loaded in flight per thread in the scan

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

// Exclusive scan of one value per thread over the CTA; *total receives the sum.
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
    warp_sums[lane] = s;
  }
  __syncthreads();
  *total = warp_sums[kWarps - 1];
  return inclusive - value + (warp > 0 ? warp_sums[warp - 1] : 0);
}

// The routes [begin, end) of a chunk (at most kChunk), one contiguous range per warp, each a
// multiple of 32 long and at most 32 * kRoutesPerLane.
struct WarpRange {
  int begin, end;
  __device__ WarpRange(int chunk_begin, int chunk_end) {
    const int per_warp = ((chunk_end - chunk_begin + kWarps - 1) / kWarps + 31) & ~31;
    begin = chunk_begin + (threadIdx.x >> 5) * per_warp;
    end = min(begin + per_warp, chunk_end);
  }
};

// Local expert (or -1) of each route of this lane: route range.begin + 32 * r + lane. All loads
// are issued before the first use, so their latencies overlap.
template <typename IdT>
__device__ __forceinline__ void load_lane_experts(const AlignParams& p, const IdT* ids,
                                                  int32_t slot, const WarpRange& range,
                                                  int (&experts)[kRoutesPerLane]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < kRoutesPerLane; ++r) {
    const int i = range.begin + 32 * r + lane;
    experts[r] = i < range.end ? route_expert(p, ids, slot, i) : -1;
  }
}

// hist[w][e] = routes of expert e in warp w's range, then each warp's start inside the chunk's
// part of segment e. Returns, for thread e < num_experts, the chunk's count of expert e.
__device__ int count_and_scan_warps(const AlignParams& p, const int (&experts)[kRoutesPerLane],
                                    int* hist) {
  const int num_experts = p.num_experts;
  for (int j = threadIdx.x; j < kWarps * num_experts; j += kThreads) hist[j] = 0;
  __syncthreads();
  int* my_hist = hist + (threadIdx.x >> 5) * num_experts;
#pragma unroll
  for (int r = 0; r < kRoutesPerLane; ++r)
    if (experts[r] >= 0) atomicAdd(my_hist + experts[r], 1);
  __syncthreads();
  int running = 0;
  const int e = threadIdx.x;
  if (e < num_experts) {
    int counts[kWarps];
#pragma unroll
    for (int w = 0; w < kWarps; ++w) counts[w] = hist[w * num_experts + e];
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      hist[w * num_experts + e] = running;
      running += counts[w];
    }
  }
  __syncthreads();
  return running;
}

// Writes every route of the warp's range at seg_base[e] + warp start + earlier routes.
__device__ void scatter_warp_range(const WarpRange& range, const int (&experts)[kRoutesPerLane],
                                   int* warp_start, const int* seg_base, int32_t* row) {
  const int lane = threadIdx.x & 31;
  const unsigned lower_lanes = (1u << lane) - 1u;
#pragma unroll
  for (int r = 0; r < kRoutesPerLane; ++r) {
    if (range.begin + 32 * r >= range.end) break;  // warp-uniform
    const int expert = experts[r];
    const unsigned peers = __match_any_sync(0xffffffffu, expert);
    const int rank = __popc(peers & lower_lanes);
    const int offset = expert >= 0 ? warp_start[expert] : 0;
    __syncwarp();
    if (expert >= 0) {
      row[seg_base[expert] + offset + rank] = range.begin + 32 * r + lane;
      if (rank == 0) warp_start[expert] = offset + __popc(peers);
    }
    __syncwarp();
  }
}

// expert_ids of one slot: block b belongs to the last expert whose segment starts at or before
// b * block_size (empty experts share their start with the next one); -1 past the total.
__device__ void write_block_experts(const AlignParams& p, int32_t slot, const int* seg_start,
                                    int total) {
  const int num_blocks = p.padded_len / p.block_size;
  int32_t* row_experts = p.expert_ids + static_cast<int64_t>(slot) * num_blocks;
  for (int b = threadIdx.x; b < num_blocks; b += kThreads) {
    const int pos = b * p.block_size;
    int expert = -1;
    if (pos < total) {
      int lo = 0, hi = p.num_experts - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (seg_start[mid] <= pos) lo = mid; else hi = mid - 1;
      }
      expert = lo;
    }
    row_experts[b] = expert;
  }
}

__device__ __forceinline__ void fill_sentinel(int32_t* dst, int begin, int end, int value) {
  for (int j = begin + static_cast<int>(threadIdx.x); j < end; j += kThreads) dst[j] = value;
}

// Segment starts of one slot from per-expert counts (thread e holds count e): pads, scans,
// writes num_tokens_post_pad and expert_ids. Returns the padded total.
__device__ int lay_out_segments(const AlignParams& p, int32_t slot, int count, int* seg_start,
                                int* warp_sums) {
  const int e = threadIdx.x;
  const int padded = e < p.num_experts ? (count + p.block_size - 1) / p.block_size * p.block_size
                                       : 0;
  int total;
  const int start = block_exclusive_scan(padded, warp_sums, &total);
  if (e < p.num_experts) seg_start[e] = start;
  if (threadIdx.x == 0) p.num_tokens_post_pad[slot] = total;
  __syncthreads();
  write_block_experts(p, slot, seg_start, total);
  return total;
}

// ---- one chunk: one CTA per slot does everything ----
// Shared memory: hist[kWarps][E], seg_start[E].
template <typename IdT>
__global__ void __launch_bounds__(kThreads) align_single_kernel(AlignParams p) {
  extern __shared__ int smem[];
  __shared__ int warp_sums[kWarps];
  int* hist = smem;
  int* seg_start = hist + kWarps * p.num_experts;
  const int32_t slot = blockIdx.x;
  const IdT* ids = static_cast<const IdT*>(p.topk_ids);
  const bool active = slot_enabled(p, slot);
  const WarpRange range(0, active ? p.numel : 0);
  int experts[kRoutesPerLane];
  load_lane_experts(p, ids, slot, range, experts);
  const int count = count_and_scan_warps(p, experts, hist);
  lay_out_segments(p, slot, count, seg_start, warp_sums);
  // Sentinel everywhere, then the routes on top (the barrier orders the two writes). 16-byte
  // stores only where every row starts 16-byte aligned: an _out buffer may be an offset view.
  int32_t* row = p.sorted_token_ids + static_cast<int64_t>(slot) * p.padded_len;
  if ((p.padded_len & 3) == 0 && (reinterpret_cast<uintptr_t>(p.sorted_token_ids) & 15) == 0) {
    const int4 fill = make_int4(p.numel, p.numel, p.numel, p.numel);
    int4* row4 = reinterpret_cast<int4*>(row);
    for (int j = threadIdx.x; j < p.padded_len / 4; j += kThreads) row4[j] = fill;
  } else {
    fill_sentinel(row, 0, p.padded_len, p.numel);
  }
  __syncthreads();
  scatter_warp_range(range, experts, hist + (threadIdx.x >> 5) * p.num_experts, seg_start, row);
}

// ---- several chunks: grid (chunk, slot) ----
struct Workspace {
  int32_t* counts;     // [slots, chunks, E]
  int32_t* prefix;     // [slots, chunks, E]: routes of (slot, e) in earlier chunks
  int32_t* seg_start;  // [slots, E]
  __device__ Workspace(const AlignParams& p, int chunks) {
    const int64_t per_chunk = static_cast<int64_t>(p.num_slots) * chunks * p.num_experts;
    counts = p.workspace;
    prefix = counts + per_chunk;
    seg_start = prefix + per_chunk;
  }
};

// 1. counts[slot][chunk][e] = routes of (slot, e) in the chunk.
template <typename IdT>
__global__ void __launch_bounds__(kThreads) align_count_kernel(AlignParams p) {
  extern __shared__ int hist[];  // [E]
  const int32_t slot = blockIdx.y;
  const int chunk = blockIdx.x;
  const IdT* ids = static_cast<const IdT*>(p.topk_ids);
  for (int e = threadIdx.x; e < p.num_experts; e += kThreads) hist[e] = 0;
  __syncthreads();
  if (slot_enabled(p, slot)) {
    const WarpRange range(chunk * kChunk, min((chunk + 1) * kChunk, p.numel));
    int experts[kRoutesPerLane];
    load_lane_experts(p, ids, slot, range, experts);
#pragma unroll
    for (int r = 0; r < kRoutesPerLane; ++r)
      if (experts[r] >= 0) atomicAdd(hist + experts[r], 1);
  }
  __syncthreads();
  const Workspace ws(p, gridDim.x);
  int32_t* out = ws.counts + (static_cast<int64_t>(slot) * gridDim.x + chunk) * p.num_experts;
  for (int e = threadIdx.x; e < p.num_experts; e += kThreads) out[e] = hist[e];
}

// 2. One CTA per slot: prefix of the counts over chunks, segment starts, expert_ids,
// num_tokens_post_pad, and the sentinel in every position no route will take (segment padding
// and the tail).
__global__ void __launch_bounds__(kThreads) align_scan_kernel(AlignParams p, int num_chunks) {
  extern __shared__ int smem[];  // seg_start[E], seg_count[E]
  __shared__ int warp_sums[kWarps];
  int* seg_start = smem;
  int* seg_count = smem + p.num_experts;
  const int32_t slot = blockIdx.x;
  const int e = threadIdx.x;
  const Workspace ws(p, num_chunks);
  const int64_t slot_base = static_cast<int64_t>(slot) * num_chunks * p.num_experts;
  const int32_t* __restrict__ counts = ws.counts + slot_base;
  int32_t* __restrict__ prefix = ws.prefix + slot_base;
  int count = 0;
  if (e < p.num_experts) {
    for (int c0 = 0; c0 < num_chunks; c0 += kMaxChunkScan) {
      int batch[kMaxChunkScan];
#pragma unroll
      for (int j = 0; j < kMaxChunkScan; ++j)
        batch[j] = c0 + j < num_chunks ? counts[(c0 + j) * p.num_experts + e] : 0;
#pragma unroll
      for (int j = 0; j < kMaxChunkScan; ++j) {
        if (c0 + j < num_chunks) prefix[(c0 + j) * p.num_experts + e] = count;
        count += batch[j];
      }
    }
  }
  if (e < p.num_experts) seg_count[e] = count;
  const int total = lay_out_segments(p, slot, count, seg_start, warp_sums);
  if (e < p.num_experts) ws.seg_start[slot * p.num_experts + e] = seg_start[e];
  // Padding after each expert's routes, one warp per expert so the stores coalesce.
  int32_t* row = p.sorted_token_ids + static_cast<int64_t>(slot) * p.padded_len;
  const int lane = threadIdx.x & 31;
  for (int x = threadIdx.x >> 5; x < p.num_experts; x += kWarps) {
    const int end = x + 1 < p.num_experts ? seg_start[x + 1] : total;
    for (int j = seg_start[x] + seg_count[x] + lane; j < end; j += 32) row[j] = p.numel;
  }
  fill_sentinel(row, total, p.padded_len, p.numel);
}

// 3. Scatter of each chunk's routes from segment start + earlier chunks' routes.
// Shared memory: hist[kWarps][E], base[E].
template <typename IdT>
__global__ void __launch_bounds__(kThreads) align_scatter_kernel(AlignParams p) {
  extern __shared__ int smem[];
  const int32_t slot = blockIdx.y;
  if (!slot_enabled(p, slot)) return;
  int* hist = smem;
  int* base = hist + kWarps * p.num_experts;
  const int chunk = blockIdx.x;
  const Workspace ws(p, gridDim.x);
  const int32_t* prefix =
      ws.prefix + (static_cast<int64_t>(slot) * gridDim.x + chunk) * p.num_experts;
  for (int e = threadIdx.x; e < p.num_experts; e += kThreads)
    base[e] = ws.seg_start[slot * p.num_experts + e] + prefix[e];
  const IdT* ids = static_cast<const IdT*>(p.topk_ids);
  const WarpRange range(chunk * kChunk, min((chunk + 1) * kChunk, p.numel));
  int experts[kRoutesPerLane];
  load_lane_experts(p, ids, slot, range, experts);
  count_and_scan_warps(p, experts, hist);  // its barriers also publish base[]
  int32_t* row = p.sorted_token_ids + static_cast<int64_t>(slot) * p.padded_len;
  scatter_warp_range(range, experts, hist + (threadIdx.x >> 5) * p.num_experts, base, row);
}

inline cudaError_t allow_smem(const void* kernel, size_t smem) {
  if (smem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(smem));
}

template <typename IdT>
cudaError_t launch(const AlignParams& p, cudaStream_t stream) {
  const int E = p.num_experts;
  const size_t warp_hist = sizeof(int) * kWarps * E;
  const int chunks = align_num_chunks(p.numel);
  cudaError_t err;
  if (chunks <= 1) {
    const size_t smem = warp_hist + sizeof(int) * E;
    if ((err = allow_smem(reinterpret_cast<const void*>(align_single_kernel<IdT>), smem)))
      return err;
    align_single_kernel<IdT><<<p.num_slots, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
  }
  const dim3 grid(chunks, p.num_slots);
  align_count_kernel<IdT><<<grid, kThreads, sizeof(int) * E, stream>>>(p);
  align_scan_kernel<<<p.num_slots, kThreads, 2 * sizeof(int) * E, stream>>>(p, chunks);
  const size_t scatter_smem = warp_hist + sizeof(int) * E;
  if ((err = allow_smem(reinterpret_cast<const void*>(align_scatter_kernel<IdT>), scatter_smem)))
    return err;
  align_scatter_kernel<IdT><<<grid, kThreads, scatter_smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace align_detail

// Launches on `stream`. Requires num_experts <= 1024 and numel < 2^30.
inline cudaError_t launch_moe_align(const AlignParams& p, cudaStream_t stream) {
  return p.ids_are_int64 ? align_detail::launch<int64_t>(p, stream)
                         : align_detail::launch<int32_t>(p, stream);
}

}  // namespace moe_ext
