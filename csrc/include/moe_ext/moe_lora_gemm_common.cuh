// Shared pieces of the multi-LoRA MoE grouped GEMM kernels: the (untrusted) alignment view, the
// compact work list built from num_tokens_post_pad, and the tensor-core / cp.async primitives.
// Torch-free; included by moe_lora_gemm.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace moe_ext {
namespace lora_gemm {

constexpr int kThreads = 128;  // 4 warps per CTA in every kernel of the family
constexpr int kMaxSlices = 4;
constexpr int kMaxLoras = 1024;

// CTAs per SM that `smem` bytes of dynamic shared memory allow (227 KB, 1 KB reserved per CTA).
__host__ __device__ constexpr int ctas_by_smem(int smem) { return (227 << 10) / (smem + 1024); }

// Parts of a CTA's shared memory start 128-byte aligned.
__host__ __device__ constexpr int align128(int bytes) { return (bytes + 127) / 128 * 128; }
// Head of the decode and stream-expand CTAs: work prefix [L + 1], scan scratch [4], route ids
// [16] and routing weights [16].
__host__ __device__ constexpr int routing_head_bytes(int L) {
  return align128(4 * (L + 1) + 4 * 4 + 4 * 16 + 4 * 16);
}

// Output of moe_lora_align_block_size for L slots. Every value is untrusted: route ids outside
// [0, numel), block experts outside [0, E) and totals outside [0, P] are ignored.
struct Routing {
  const int32_t* sorted_ids;     // [L, P]
  const int32_t* block_experts;  // [L, NB]
  const int32_t* post_pad;       // [L]
  const int32_t* enabled;        // [L] (0 = slot disabled) or nullptr
  int L, P, NB, BS, E, numel;
};

// Number of blocks slot l really holds (0 when disabled); bounded by NB whatever the data says.
__device__ __forceinline__ int slot_blocks(const Routing& rt, int l) {
  if (rt.enabled != nullptr && rt.enabled[l] == 0) return 0;
  int n = rt.post_pad[l];
  n = n < 0 ? 0 : (n > rt.P ? rt.P : n);
  return (n + rt.BS - 1) / rt.BS;
}

// Block-wide exclusive prefix of slot_blocks into prefix[0..L]; returns the total. Lets a CTA
// enumerate only real (slot, block) pairs: grids stay shape-only, and no program is spent on the
// empty tail of each slot.
__device__ __forceinline__ int build_work_prefix(const Routing& rt, int* prefix, int* scratch) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int carry = 0;
  for (int base = 0; base < rt.L; base += kThreads) {
    const int l = base + tid;
    int v = l < rt.L ? slot_blocks(rt, l) : 0;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, v, off);
      if (lane >= off) v += n;
    }
    if (lane == 31) scratch[warp] = v;
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) {
      before += w < warp ? scratch[w] : 0;
      total += scratch[w];
    }
    if (l < rt.L) prefix[l + 1] = carry + before + v;
    carry += total;
    __syncthreads();
  }
  if (tid == 0) prefix[0] = 0;
  __syncthreads();
  return carry;
}

// Slot owning work block wb: the last l with prefix[l] <= wb.
__device__ __forceinline__ int find_slot(const int* prefix, int L, int wb) {
  int lo = 0, hi = L - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (prefix[mid] <= wb) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Work block wb of the compact list: slot l, block b of the slot, its expert e (untrusted) and
// route ids. The first `rows` ids (one per thread) load together with the expert: one round
// trip, not two.
struct WorkBlock {
  int l, b, e, first;
  const int32_t* ids;
};
__device__ __forceinline__ WorkBlock locate_block(const Routing& rt, const int* prefix, int wb,
                                                  int rows) {
  WorkBlock k;
  k.l = find_slot(prefix, rt.L, wb);
  k.b = wb - prefix[k.l];
  k.ids = rt.sorted_ids + static_cast<int64_t>(k.l) * rt.P + static_cast<int64_t>(k.b) * rt.BS;
  const int tid = threadIdx.x;
  k.first = tid < rows && tid < rt.BS ? k.ids[tid] : -1;
  k.e = rt.block_experts[static_cast<int64_t>(k.l) * rt.NB + k.b];
  return k;
}

// This thread's route in tile rows [m0, m0 + rows) of block blk: the id of row m0 + threadIdx.x,
// or -1 for threads past the tile or the block and for ids outside [0, numel).
__device__ __forceinline__ int tile_route(const Routing& rt, const WorkBlock& blk, int m0,
                                          int rows) {
  const int tid = threadIdx.x;
  if (tid >= rows || m0 + tid >= rt.BS) return -1;
  const int v = m0 == 0 ? blk.first : blk.ids[m0 + tid];
  return v >= 0 && v < rt.numel ? v : -1;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;  // 0 bytes read: the 16 destination bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
// L2 policy for bytes read once: evicted first, so that the LoRA weights, read again by every
// block of their (adapter, expert) pair, stay.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ void cp_async16_stream(void* smem, const void* gmem, bool pred,
                                                  uint64_t policy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(s),
               "l"(gmem), "r"(n), "l"(policy));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Programmatic dependent launch: the shrink lets the expand grid start early (it prefetches
// weights and output), and the expand waits for the shrink's partials only where it reads them;
// the decode kernel waits for the stream's previous kernel before its first read.
__device__ __forceinline__ void pdl_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
__device__ __forceinline__ void pdl_wait_primary() {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

// sum over ks = first, first + step, ... < count of src[ks * stride .. + 4], in that order
// (a fixed order: bit-identical results run to run, whatever the loads in flight at a time).
// The leftover chunks (fewer than kInFlight) are loaded together too, zeros past count
// (x + 0 == x; only a zero sum's sign can change): one at a time they cost a round trip each
// (H100, Mixtral down T = 1: 7 of them, ~1 us).
// The compiler fence keeps their loads from being hoisted into the last full pass, which
// doubled the registers held and cost the expand kernels their occupancy.
template <int kInFlight>
__device__ __forceinline__ float4 sum_chunks(const float* src, int64_t stride, int first, int step,
                                             int count) {
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  int ks = first;
  for (; ks + (kInFlight - 1) * step < count; ks += kInFlight * step) {
    float4 v[kInFlight];
#pragma unroll
    for (int q = 0; q < kInFlight; ++q)
      v[q] = *reinterpret_cast<const float4*>(src + (ks + q * step) * stride);
#pragma unroll
    for (int q = 0; q < kInFlight; ++q) {
      acc.x += v[q].x; acc.y += v[q].y; acc.z += v[q].z; acc.w += v[q].w;
    }
  }
  if (ks < count) {
    asm volatile("" ::: "memory");
    float4 v[kInFlight - 1];
#pragma unroll
    for (int q = 0; q < kInFlight - 1; ++q)
      v[q] = ks + q * step < count
                 ? *reinterpret_cast<const float4*>(src + (ks + q * step) * stride)
                 : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int q = 0; q < kInFlight - 1; ++q) {
      acc.x += v[q].x; acc.y += v[q].y; acc.z += v[q].z; acc.w += v[q].w;
    }
  }
  return acc;
}

// Sums the fp32 K-chunk partials of the BM routes ids[0..BM) (slice s) and hands each group of
// 4 ranks to sink(row, col, float4); rows with id < 0 get zeros. With G > 1 the chunks are split
// into G interleaved groups summed by different threads (parallel at decode, where a block holds
// one or two routes and ksplit is large), then combined in group order through red
// [G][BM][RP] floats. The order depends on (G, ksplit) only, so every caller using the same G
// gets bit-identical sums. InFlight: chunk loads per thread in flight (registers).
template <int BM, int InFlight = 4, typename Sink>
__device__ __forceinline__ void reduce_partials(const float* partial, int ksplit, int S, int s,
                                                int numel, int RP, int G, const int* ids,
                                                float* red, Sink sink) {
  const int c4 = RP / 4;
  const int64_t stride = static_cast<int64_t>(S) * numel * RP;
  const float* base = partial + static_cast<int64_t>(s) * numel * RP;
  if (G == 1) {
    for (int u = threadIdx.x; u < BM * c4; u += kThreads) {
      const int row = u / c4, col = (u % c4) * 4, id = ids[row];
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (id >= 0)
        v = sum_chunks<InFlight>(base + static_cast<int64_t>(id) * RP + col, stride, 0, 1, ksplit);
      sink(row, col, v);
    }
    return;
  }
  for (int u = threadIdx.x; u < G * BM * c4; u += kThreads) {
    const int q = u % G, rc = u / G, row = rc / c4, col = (rc % c4) * 4, id = ids[row];
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (id >= 0)
      v = sum_chunks<InFlight>(base + static_cast<int64_t>(id) * RP + col, stride, q, G, ksplit);
    *reinterpret_cast<float4*>(red + (q * BM + row) * RP + col) = v;
  }
  __syncthreads();
  for (int u = threadIdx.x; u < BM * c4; u += kThreads) {
    const int row = u / c4, col = (u % c4) * 4;
    float4 v = *reinterpret_cast<const float4*>(red + row * RP + col);
    for (int q = 1; q < G; ++q) {
      const float4 w = *reinterpret_cast<const float4*>(red + (q * BM + row) * RP + col);
      v.x += w.x; v.y += w.y; v.z += w.z; v.w += w.w;
    }
    sink(row, col, v);
  }
}

template <typename T>
struct MmaOp;
template <>
struct MmaOp<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
template <>
struct MmaOp<__half> {
  __device__ __forceinline__ static void run(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// Four 8x8 b16 matrices from shared memory, one 16-byte row address per lane (lanes 8j..8j+7
// give the rows of matrix j): a whole m16k16 A fragment, or the B fragments of two n8 blocks,
// in one instruction.
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem_row) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
// The inverse of ldmatrix_x4: four 8x8 b16 matrices to shared memory, same lane addressing.
__device__ __forceinline__ void stmatrix_x4(void* smem_row, const uint32_t* r) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(s),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}
// This lane's row address inside a [16][ld] tile for ldmatrix_x4: as an A fragment (rows 0-15,
// k halves 0/8) or as the B fragments of n blocks 0-7 and 8-15 (k halves 0/8).
__device__ __forceinline__ int a_frag_offset(int lane, int ld) {
  return (lane & 15) * ld + (lane >> 4) * 8;
}
__device__ __forceinline__ int b_frag_offset(int lane, int ld) {
  return ((lane & 7) + ((lane >> 4) << 3)) * ld + ((lane >> 3) & 1) * 8;
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32(float v) { return __float2half_rn(v); }

// Two T values packed in 32 bits (element 0 in the low half) to fp32, and back (rounded once).
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t v);
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t v) {
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
}
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t v) {
  return __half22float2(*reinterpret_cast<const __half2*>(&v));
}
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  T pair[2] = {from_f32<T>(lo), from_f32<T>(hi)};
  return *reinterpret_cast<const uint32_t*>(pair);
}

// Four fp32 values rounded to T once, at dst[0..4).
template <typename T>
__device__ __forceinline__ void store_rounded4(T* dst, float4 v) {
  dst[0] = from_f32<T>(v.x);
  dst[1] = from_f32<T>(v.y);
  dst[2] = from_f32<T>(v.z);
  dst[3] = from_f32<T>(v.w);
}

}  // namespace lora_gemm
}  // namespace moe_ext
