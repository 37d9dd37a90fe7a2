// Multi-LoRA MoE grouped GEMM (DESIGN 4.2), torch-free entry points.
//
//   shrink:  partial[ks, s, i, :] = x[row(i), chunk ks] @ lora_a[s][l, e][:, chunk ks].T   (fp32)
//   expand:  out[i, offset + s*N + n] (+)= w_i * (round_T(sum_ks partial[ks, s, i])
//                                                 @ lora_b[s][l, e].T)
//
// for every route i listed in a real block (l, b) of the alignment, e = expert of the block.
// At decode sizes (plan_decode) both run in one launch of thread-block clusters instead
// (moe_lora_gemm_decode.cuh); elsewhere, blocks of 16 rows expand through the stream kernel
// (moe_lora_gemm_expand_stream.cuh) where use_stream_expand says so, and split-K partials
// bound for the tiled expand are summed once by the reduce kernel (reduce_before_expand). Grids
// depend on shapes only; each CTA walks the compact list of real blocks built from
// num_tokens_post_pad, so CUDA-graph replays with new routing stay correct.
#pragma once

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "moe_ext/moe_lora_gemm_decode.cuh"
#include "moe_ext/moe_lora_gemm_expand_stream.cuh"

namespace moe_ext {
namespace lora_gemm {

// Rank padded to the shrink tile: 16, 32, 64 or 128.
inline int padded_rank(int r) { return r <= 16 ? 16 : r <= 32 ? 32 : r <= 64 ? 64 : 128; }
// Shrink stage depth along K: 128 up to rank 32, except 64-row tiles of two slices; else 64
// (half the shared memory per stage). The down input's 64-row tiles at rank 16/32 stream fewer,
// longer stages (3 x 128 instead of 6 x 64, the same shared memory): half the per-stage waits
// and barriers per byte (H100: T = 256 / 4096 1-2 % faster).
constexpr int shrink_bk(int rp, int bs, int ns) {
  return rp <= 32 && (bs <= 32 || ns == 1) ? 128 : 64;
}
// Stages in flight: 4 for the down input's 64-row tiles above rank 32 (every x row read once
// from DRAM, more in flight at about the same CTAs per SM); everything else 3.
constexpr int shrink_stages(int rp, int bs, int ns) {
  return bs > 32 && ns == 1 && rp > 32 ? 4 : 3;
}
// Slices one shrink CTA handles: at prefill sizes two slices (gate/up) share one x tile (up to
// rank 64: accumulator registers); at decode sizes separate CTAs give more streams of weights.
inline int shrink_slices_per_cta(int S, int r, int64_t numel) {
  return S == 2 && padded_rank(r) <= 64 && numel >= 1024 ? 2 : 1;
}

// Upper bound on the real blocks of a valid alignment: every non-empty (slot, expert) segment
// wastes at most one partial block. Only sizes grids; the kernels loop over whatever is real.
inline int64_t max_real_blocks(int64_t numel, int64_t L, int64_t NB, int64_t BS, int64_t E) {
  return std::max<int64_t>(1, std::min(L * NB, numel / BS + std::min(numel, L * E)));
}

struct ShrinkPlan {
  int ksplit, kchunk, grid;
};

// Split K until about 4 CTAs per SM stream weights (2 from rank 64, where a CTA streams 4x the
// bytes per K column, and no chunk longer than 192 KB of lora_a), keeping at least two stages
// per chunk, and only while the fp32 partials stay small (<= 256 KB, but see long K below): they
// are summed at least once more, so at prefill sizes one chunk (rank vectors rounded in the
// shrink) is cheaper. (H100, rank 64 at T = 16-64, 2 instead of 4 per SM: down 5-10 % faster,
// gate/up 0-3 %; kept at 4 for Mixtral's long K, where fewer chunks were 5 % slower.)
inline ShrinkPlan plan_shrink(int64_t numel, int L, int NB, int BS, int E, int S, int K, int r,
                              int num_sms) {
  const int ns = shrink_slices_per_cta(S, r, numel);
  const int bk = shrink_bk(padded_rank(r), BS, ns);
  const int64_t items = max_real_blocks(numel, L, NB, BS, E) * (S / ns);
  const int64_t per_sm = padded_rank(r) >= 64 && K < 8192 ? 2 : 4;
  const int64_t chunk_cap = (int64_t{K} * padded_rank(r) * 2 + (192 << 10) - 1) / (192 << 10);
  const int64_t want = std::max((per_sm * num_sms + items - 1) / items, chunk_cap);
  const int64_t partial_row = int64_t{4} * S * numel * padded_rank(r);
  int64_t by_partials = (int64_t{256} << 10) / partial_row;
  // Long K (Mixtral's down input, K = 14336): where the cap would leave few CTAs streaming K
  // for long, up to 8 chunks and 2 MB of partials cost less (Mixtral down r64 T = 1024:
  // 273 -> 135 us).
  if (K >= 8192 && by_partials < want)
    by_partials =
        std::max<int64_t>(by_partials, std::min<int64_t>(8, (int64_t{2} << 20) / partial_row));
  const int max_split =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(K / (2 * bk), by_partials)));
  int ksplit = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, max_split)));
  const int kchunk = ((K + ksplit - 1) / ksplit + bk - 1) / bk * bk;
  ksplit = (K + kchunk - 1) / kchunk;
  const int64_t grid = std::min<int64_t>(items * ksplit, 8LL * num_sms);
  return {ksplit, kchunk, static_cast<int>(std::max<int64_t>(1, grid))};
}

// Adjacent 128-column tiles per item of the tiled expand (blocks of 16 rows: ranks above 32 past
// use_stream_expand). With blocks of 16 or 32 rows (a few routes each) two tiles share one
// block lookup and one partial sum and their weights arrive together, wherever that leaves an
// item per SM. Blocks of 64+ rows keep one tile: shared memory per CTA stays small. (H100:
// decode sizes 10-20 % faster than one tile per item; rank 64 with four tiles was slower.)
inline int expand_span(int64_t numel, int L, int NB, int BS, int E, int S, int r, int ntiles,
                       int num_sms) {
  const int64_t rows = max_real_blocks(numel, L, NB, BS, E) * S;
  if (BS > 32) return padded_rank(r) <= 32 && ntiles >= 2 ? 2 : 1;
  return rows * ((ntiles + 1) / 2) < num_sms ? 1 : 2;
}

// One CTA per (block, tile span) item up to 16 per SM: about 6 are resident at once (80
// registers per thread), the rest queue and the scheduler balances them; past that each CTA
// walks several items one after the other.
inline int expand_grid(int64_t numel, int L, int NB, int BS, int E, int S, int ntiles, int span,
                       int num_sms) {
  const int64_t items = max_real_blocks(numel, L, NB, BS, E) * S * ((ntiles + span - 1) / span);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(items, 16LL * num_sms)));
}

// Chunk groups summed in parallel by the expand stage: up to 8, within 32 KB of scratch (blocks
// of 16 rows: within one slot of the stream expand's ring, where the sums live).
inline int reduce_groups(int ksplit, int BS, int RP) {
  if (BS <= 16)
    return std::max(1, std::min({ksplit, 8, StreamLayout::slot_bytes(RP, 2) / (16 * RP * 4)}));
  const int bm = BS <= 32 ? 32 : 64;
  return std::max(1, std::min({ksplit, 8, 8192 / (bm * RP)}));
}

// Blocks of <= 16 rows take the stream expand at ranks <= 32, and at larger ranks up to 2 routes
// per SM (H100, rank 64: 10-25 % faster at T = 16-64 up to 256 routes, 5-15 % slower than the
// tiled expand at 384-2048 routes, where its long items run in more than one wave).
inline bool use_stream_expand(int64_t numel, int BS, int r, int num_sms) {
  return BS <= 16 && (padded_rank(r) <= 32 || numel <= 2LL * num_sms);
}

// Whether a fused call sums its K-chunk partials once (the reduce kernel, then the expand from
// rounded rank vectors) instead of in the expand: the tiled expand would sum them again for
// every column tile of a block, in front of each tile's products (H100, Mixtral down at
// T = 1024: rank 64 131 -> 103 us, rank 16 62 -> 54 us; T = 4096 rank 16 197 -> 172 us). The
// stream expand sums them once per group of tiles already: there the extra launch lost.
inline bool reduce_before_expand(int ksplit, int64_t numel, int BS, int r, int num_sms) {
  return ksplit > 1 && !use_stream_expand(numel, BS, r, num_sms);
}

// Whether the shrink and the stream expand of a fused call both ask for the largest
// shared-memory carveout: an SM hosts CTAs of two kernels at once only under one carveout, so
// the expand's CTAs then start behind programmatic dependent launch and have lora_b in flight
// while the shrink runs, instead of waiting for its SMs to drain (H100, Mixtral T = 1 rank 64:
// 15.1 -> 13.4 and 14.2 -> 12.6 us). Only where the shrink grid leaves room (at most 2 CTAs per
// SM): where it fills the SMs, expand CTAs resident early slowed it (T = 16-64 rank 64 gate_up
// 1-4 %, and the default carveout was faster at prefill).
inline bool overlap_expand(int shrink_grid, int64_t numel, int BS, int r, int num_sms) {
  return use_stream_expand(numel, BS, r, num_sms) && shrink_grid <= 2 * num_sms;
}

// Tiles per item of the stream expand: the items of the bound on real blocks about fill the
// resident CTAs once (long items keep the ring full).
inline int stream_group(int64_t numel, int L, int NB, int BS, int E, int S, int ntiles,
                        int64_t resident) {
  const int64_t rows = max_real_blocks(numel, L, NB, BS, E) * S;
  const int64_t groups =
      std::max<int64_t>(1, std::min<int64_t>(ntiles, (resident + rows - 1) / rows));
  return static_cast<int>((ntiles + groups - 1) / groups);
}

// Decode path (moe_lora_gemm_decode.cuh: rank vectors on chip) for blocks of at most 16 rows,
// ranks up to 64 and few items: a cluster of C <= 8 CTAs splits K into chunks of 128 to 384
// (multiples of 16; one CTA streams its chunk in one go, longer ones were slower: Mixtral's
// K = 4096 gate_up rank 16 at T = 1, 8.1 -> 9.4 us), and all clusters fit in one wave of at
// most 4 CTAs per SM (CTAs walking several items in turn were slower than the two kernels).
// The largest such C is taken, K chunks of 128 first. Shared memory is sized for the widest CTA
// (kDecodeMaxTiles column tiles): the plan depends on the shrink's shapes only, so the
// standalone shrink op takes the same path (and the same sums) as the fused op.
struct DecodePlan {
  int C, kchunk;  // C == 0: not on the decode path
};
// (block, slice) items of the decode path: blocks also hold a route each, at most numel.
inline int64_t decode_items(int64_t numel, int L, int NB, int BS, int E, int S) {
  return std::min(max_real_blocks(numel, L, NB, BS, E), numel) * S;
}
constexpr int kDecodeMaxTiles = 4;
inline DecodePlan plan_decode(int64_t numel, int L, int NB, int BS, int E, int S, int K, int r,
                              int num_sms) {
  const int RP = padded_rank(r);
  if (BS > 16 || RP > 64) return {0, 0};
  const int64_t items = decode_items(numel, L, NB, BS, E, S);
  for (int C = std::min(static_cast<int>(kMaxCluster), (K + 127) / 128); C >= 1; --C) {
    const int kchunk = ((K + C - 1) / C + 15) / 16 * 16;
    if (kchunk > 384) break;
    const int fit = ctas_by_smem(DecodeLayout(L, RP, kchunk, kDecodeMaxTiles, 2, true).total);
    if (items * C <= static_cast<int64_t>(std::min(fit, 4)) * num_sms) return {C, kchunk};
  }
  return {0, 0};
}

// Column tiles per CTA of a decode cluster; the fused op runs in one launch up to 4 (shared
// memory), else as the decode shrink then the expand kernel.
inline int decode_tiles(int ntiles, int C) { return (ntiles + C - 1) / C; }

// Clusters: one per (block, slice) item up to what is resident (CTAs that shared memory allows
// per SM, at most 16).
inline int decode_grid(int64_t items, int C, int smem, int num_sms) {
  const int fit = std::max(1, std::min(16, ctas_by_smem(smem)));
  const int64_t clusters = std::max<int64_t>(1, std::min<int64_t>(items, fit * num_sms / C));
  return static_cast<int>(clusters * C);
}

// Raises the dynamic shared memory of `kernel` on the current device to at least smem and, with
// fit, gives the CTAs per SM that fit at smem. Both are driver calls that an eager call would
// otherwise pay at every launch: done once per (kernel, device, smem).
inline cudaError_t prepare_kernel(const void* kernel, int smem, int* fit = nullptr) {
  struct Entry {
    int raised = 0;
    std::map<int, int> fit;
  };
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, Entry> cache;
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mu);
  Entry& e = cache[{kernel, dev}];
  if (smem > e.raised) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    e.raised = smem;
  }
  if (fit == nullptr) return cudaSuccess;
  auto it = e.fit.find(smem);
  if (it == e.fit.end()) {
    int n = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem);
    if (err != cudaSuccess) return err;
    it = e.fit.emplace(smem, n).first;
  }
  *fit = it->second;
  return cudaSuccess;
}

template <typename Kernel>
cudaError_t launch_with_smem(Kernel kernel, int grid, int smem, cudaStream_t stream,
                             const void* args_ptr, bool dependent = false, int cluster = 1,
                             bool max_shared = false) {
  cudaError_t err = prepare_kernel(reinterpret_cast<const void*>(kernel), smem);
  if (err != cudaSuccess) return err;
  void* args[] = {const_cast<void*>(args_ptr)};
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[3];
  unsigned n = 0;
  if (max_shared) {
    attr[n].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
    attr[n++].val.sharedMemCarveout = cudaSharedmemCarveoutMaxShared;
  }
  if (dependent) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n++].val.clusterDim = {static_cast<unsigned>(cluster), 1, 1};
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelExC(&cfg, reinterpret_cast<const void*>(kernel), args);
}

template <typename T, int RP, int WM, int NS>
cudaError_t launch_shrink_ns(const ShrinkArgs& a, int grid, cudaStream_t stream) {
  constexpr int BK = shrink_bk(RP, 16 * WM, NS);  // rows of the tile: the block size rounded up
  constexpr int STAGES = shrink_stages(RP, 16 * WM, NS);
  using Tile = ShrinkTile<T, RP, WM, BK, STAGES, NS>;
  return launch_with_smem(moe_lora_shrink_kernel<T, RP, WM, BK, STAGES, NS>, grid, Tile::kSmem,
                          stream, &a, false, 1, a.max_shared);
}

template <typename T, int RP, int WM>
cudaError_t launch_shrink_rp_wm(const ShrinkArgs& a, int grid, cudaStream_t stream) {
  if (shrink_slices_per_cta(a.S, a.r, a.rt.numel) == 2)
    return launch_shrink_ns<T, RP, WM, 2>(a, grid, stream);
  return launch_shrink_ns<T, RP, WM, 1>(a, grid, stream);
}

template <typename T, int RP>
cudaError_t launch_shrink_rp(const ShrinkArgs& a, int grid, cudaStream_t stream) {
  if (a.rt.BS <= 16) return launch_shrink_rp_wm<T, RP, 1>(a, grid, stream);
  if (a.rt.BS <= 32) return launch_shrink_rp_wm<T, RP, 2>(a, grid, stream);
  return launch_shrink_rp_wm<T, RP, 4>(a, grid, stream);
}

// a.partial must hold ksplit * S * numel * RP floats; a.RP == padded_rank(a.r).
template <typename T>
cudaError_t launch_moe_lora_shrink(const ShrinkArgs& a, int grid, cudaStream_t stream) {
  switch (a.RP) {
    case 16: return launch_shrink_rp<T, 16>(a, grid, stream);
    case 32: return launch_shrink_rp<T, 32>(a, grid, stream);
    case 64: return launch_shrink_rp<T, 64>(a, grid, stream);
    case 128: return launch_shrink_rp<T, 128>(a, grid, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T, int MI, int SPAN>
cudaError_t launch_expand_span(const ExpandArgs& a, int grid, bool dependent,
                               cudaStream_t stream) {
  return launch_with_smem(moe_lora_expand_kernel<T, MI, SPAN>, grid,
                          ExpandTile<MI, SPAN>::smem(a.RP, a.G, static_cast<int>(sizeof(T))),
                          stream, &a, dependent);
}

// span: from expand_span; dependent: launched right behind the shrink (programmatic dependent
// launch).
template <typename T>
cudaError_t launch_moe_lora_expand(const ExpandArgs& a, int span, int grid, bool dependent,
                                   cudaStream_t stream) {
  if (a.rt.BS <= 16) {
    if (span == 2) return launch_expand_span<T, 1, 2>(a, grid, dependent, stream);
    return launch_expand_span<T, 1, 1>(a, grid, dependent, stream);
  }
  if (a.rt.BS <= 32) {
    if (span >= 2) return launch_expand_span<T, 2, 2>(a, grid, dependent, stream);
    return launch_expand_span<T, 2, 1>(a, grid, dependent, stream);
  }
  if (span >= 2) return launch_expand_span<T, 4, 2>(a, grid, dependent, stream);
  return launch_expand_span<T, 4, 1>(a, grid, dependent, stream);
}

template <typename T, int NS>
cudaError_t launch_expand_stream_ns(const ExpandArgs& args, bool dependent, cudaStream_t stream,
                                    int num_sms) {
  const Routing& rt = args.rt;
  const int smem = StreamLayout(rt.L, args.RP, NS, static_cast<int>(sizeof(T))).total;
  const auto kernel = moe_lora_expand_stream_kernel<T, NS>;
  int fit = 0;
  const cudaError_t err = prepare_kernel(reinterpret_cast<const void*>(kernel), smem, &fit);
  if (err != cudaSuccess) return err;
  const int64_t resident = static_cast<int64_t>(std::max(1, fit)) * num_sms;
  ExpandArgs a = args;
  a.group = stream_group(rt.numel, rt.L, rt.NB, rt.BS, rt.E, a.S, a.ntiles, resident);
  // One CTA per item (a group of tiles), at most the resident CTAs (<= 16 per SM).
  const int grid = static_cast<int>(std::min<int64_t>(
      expand_grid(rt.numel, rt.L, rt.NB, rt.BS, rt.E, a.S, a.ntiles, a.group, num_sms),
      resident));
  return launch_with_smem(kernel, grid, smem, stream, &a, dependent, 1, a.max_shared);
}

// The expand for blocks of at most 16 rows (a.G from reduce_groups); dependent as above.
template <typename T>
cudaError_t launch_moe_lora_expand_stream(const ExpandArgs& a, bool dependent,
                                          cudaStream_t stream, int num_sms) {
  if (stream_slots(a.RP) == 3) return launch_expand_stream_ns<T, 3>(a, dependent, stream, num_sms);
  return launch_expand_stream_ns<T, 2>(a, dependent, stream, num_sms);
}

template <typename T, int RP, int SPAN>
cudaError_t launch_decode_rp_span(const DecodeArgs& args, int C, int span, cudaStream_t stream,
                                  int num_sms) {
  const Routing& rt = args.sh.rt;
  const int64_t items = decode_items(rt.numel, rt.L, rt.NB, rt.BS, rt.E, args.sh.S);
  const int elem = static_cast<int>(sizeof(T));
  // The output tile shares the operands' space only where that is needed for one wave: it is
  // then loaded once they are consumed, a round trip later than with them.
  const int fit_apart =
      ctas_by_smem(DecodeLayout(rt.L, RP, args.sh.kchunk, span, elem, false).total);
  DecodeArgs a = args;
  a.late_out = span > 0 && items * C > static_cast<int64_t>(fit_apart) * num_sms;
  const DecodeLayout lay(rt.L, RP, a.sh.kchunk, span, elem, a.late_out);
  return launch_with_smem(moe_lora_decode_kernel<T, RP, SPAN>,
                          decode_grid(items, C, lay.total, num_sms), lay.total, stream, &a,
                          true, C);
}

template <typename T, int RP>
cudaError_t launch_decode_rp(const DecodeArgs& a, int C, cudaStream_t stream, int num_sms) {
  if (a.ex.out == nullptr) return launch_decode_rp_span<T, RP, 1>(a, C, 0, stream, num_sms);
  switch (a.tiles) {
    case 1: return launch_decode_rp_span<T, RP, 1>(a, C, 1, stream, num_sms);
    case 2: return launch_decode_rp_span<T, RP, 2>(a, C, 2, stream, num_sms);
    case 3: return launch_decode_rp_span<T, RP, 3>(a, C, 3, stream, num_sms);
    default: return launch_decode_rp_span<T, RP, 4>(a, C, 4, stream, num_sms);
  }
}

// Fused decode path (or, with a.ex.out == nullptr, the shrink alone writing a.sh.tmp).
// a.sh.kchunk and C from plan_decode; a.tiles from decode_tiles, 1..kDecodeMaxTiles.
template <typename T>
cudaError_t launch_moe_lora_decode(const DecodeArgs& a, int C, cudaStream_t stream,
                                   int num_sms) {
  switch (a.sh.RP) {
    case 16: return launch_decode_rp<T, 16>(a, C, stream, num_sms);
    case 32: return launch_decode_rp<T, 32>(a, C, stream, num_sms);
    case 64: return launch_decode_rp<T, 64>(a, C, stream, num_sms);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T, int MI>
cudaError_t launch_reduce_mi(const ReduceArgs& a, int grid, cudaStream_t stream) {
  const int smem = ExpandTile<MI>::kHeadAligned + (a.G > 1 ? a.G * 16 * MI * a.RP * 4 : 0);
  return launch_with_smem(moe_lora_reduce_kernel<T, MI>, grid, smem, stream, &a, true);
}

// intermediate [S, numel, r] from the partials, summed as the expand stage sums them (same G),
// launched right behind the shrink that writes them.
template <typename T>
cudaError_t launch_moe_lora_reduce(const ReduceArgs& a, int grid, cudaStream_t stream) {
  if (a.rt.BS <= 16) return launch_reduce_mi<T, 1>(a, grid, stream);
  if (a.rt.BS <= 32) return launch_reduce_mi<T, 2>(a, grid, stream);
  return launch_reduce_mi<T, 4>(a, grid, stream);
}

}  // namespace lora_gemm
}  // namespace moe_ext
