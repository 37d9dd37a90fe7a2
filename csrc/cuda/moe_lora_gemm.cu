// CUDA binding of the multi-LoRA MoE grouped GEMM (kernels in moe_ext/moe_lora_gemm.cuh).
// Checks arguments, brings operands into the layout the kernels read with 16-byte copies (a
// copy is made only for unaligned or non-unit-stride inputs), allocates the fp32 split-K
// workspace from torch's allocator (graph-capture safe) and launches on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "moe_ext/moe_lora_gemm.cuh"
#include "ops.h"

namespace moe_ext {
namespace {

namespace lg = lora_gemm;

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// Keeps t when its rows (dim -2) start on 16 bytes and its last dim is unit-stride, else copies.
at::Tensor vector_ready(const at::Tensor& t) {
  bool ok = t.stride(-1) == 1 && aligned16(t);
  for (int64_t dim = 0; dim + 1 < t.dim(); ++dim) ok = ok && t.stride(dim) % 8 == 0;
  if (ok) return t;
  at::Tensor c = t.contiguous();
  return aligned16(c) && c.stride(-1) == 1 ? c : c.clone();
}

// lora_b with a rank that is not a multiple of 8: zero-pad it so 16-byte rows stay in bounds.
at::Tensor expand_ready(const at::Tensor& b) {
  const int64_t r = b.size(3);
  if (r % 8 == 0) return vector_ready(b);
  at::Tensor padded = at::zeros({b.size(0), b.size(1), b.size(2), (r + 7) / 8 * 8}, b.options());
  padded.narrow(3, 0, r).copy_(b);
  return padded;
}

std::vector<at::Tensor> expand_ready_all(const std::vector<at::Tensor>& lora_b) {
  std::vector<at::Tensor> b;
  for (const at::Tensor& t : lora_b) b.push_back(expand_ready(t));
  return b;
}

at::Tensor float_weights(const at::Tensor& topk_weights, bool mul_routed_weight) {
  return mul_routed_weight ? topk_weights.reshape({-1}).to(at::kFloat).contiguous() : at::Tensor();
}

// Overwrite mode: the slice columns of every route become 0 first; the kernel then writes
// round(d) for the LoRA routes (no read of the old values).
void zero_unless_add(const MoeLoraGemmDims& d, const at::Tensor& output, bool add_inputs) {
  if (add_inputs) return;
  const at::Tensor out2 = output.dim() == 3 ? output.flatten(0, 1) : output;
  out2.narrow(1, d.offset, d.S * d.N).zero_();
}

// An empty batch, or an alignment without blocks: no route has a LoRA, nothing to launch.
bool no_blocks(const MoeLoraGemmDims& d) { return d.numel == 0 || d.NB == 0; }

// The alignment as the kernels read it, with the int32 adapter mask it points at (owned here,
// so it lives as long as the view).
struct DeviceRouting {
  lg::Routing rt;
  at::Tensor enabled;
};

DeviceRouting make_routing(const MoeLoraGemmDims& d, const at::Tensor& sorted_token_ids,
                           const at::Tensor& expert_ids, const at::Tensor& num_tokens_post_pad,
                           const std::optional<at::Tensor>& adapter_enabled) {
  TORCH_CHECK(d.numel < (int64_t{1} << 31) && d.L * d.P < (int64_t{1} << 31),
              "too many routes for int32 route ids: ", d.numel);
  DeviceRouting r;
  if (adapter_enabled.has_value())
    r.enabled = adapter_enabled->narrow(0, 0, d.L).to(at::kInt).contiguous();
  lg::Routing& rt = r.rt;
  rt.sorted_ids = sorted_token_ids.data_ptr<int32_t>();
  rt.block_experts = expert_ids.data_ptr<int32_t>();
  rt.post_pad = num_tokens_post_pad.data_ptr<int32_t>();
  rt.enabled = r.enabled.defined() ? r.enabled.data_ptr<int32_t>() : nullptr;
  rt.L = static_cast<int>(d.L);
  rt.P = static_cast<int>(d.P);
  rt.NB = static_cast<int>(d.NB);
  rt.BS = static_cast<int>(d.BS);
  rt.E = static_cast<int>(d.E);
  rt.numel = static_cast<int>(d.numel);
  return r;
}

void check_cuda_dtype(at::ScalarType t) {
  TORCH_CHECK(t == at::kHalf || t == at::kBFloat16,
              "the CUDA kernels of fused_moe_lora take float16 or bfloat16, got ", t,
              " (float32 runs on the CPU)");
}

int num_sms(const at::Tensor& t) {
  int sms = 0;
  const cudaError_t err =
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.device().index());
  TORCH_CHECK(err == cudaSuccess, "cudaDeviceGetAttribute failed: ", cudaGetErrorString(err));
  return sms;
}

// Shrink arguments for x and lora_a in 16-byte-ready layouts (kept alive with them); the K split
// and outputs are left to the caller.
struct ShrinkOperands {
  lg::ShrinkArgs args{};
  at::Tensor x;
  std::vector<at::Tensor> a;
};

ShrinkOperands shrink_operands(const MoeLoraGemmDims& d, const lg::Routing& rt,
                               const at::Tensor& x_in, const std::vector<at::Tensor>& lora_a) {
  ShrinkOperands o;
  o.x = vector_ready(x_in);
  lg::ShrinkArgs& args = o.args;
  args.rt = rt;
  args.x = o.x.data_ptr();
  args.x_row_stride = o.x.stride(0);
  args.K = static_cast<int>(d.K);
  args.top_k = static_cast<int>(d.top_k);
  args.x_per_route = d.x_per_route;
  for (size_t s = 0; s < lora_a.size(); ++s) {
    o.a.push_back(vector_ready(lora_a[s]));
    args.a[s] = o.a[s].data_ptr();
    args.a_sl[s] = o.a[s].stride(0);
    args.a_se[s] = o.a[s].stride(1);
    args.a_sr[s] = o.a[s].stride(2);
  }
  args.S = static_cast<int>(d.S);
  args.r = static_cast<int>(d.r);
  args.RP = lg::padded_rank(args.r);
  return o;
}

// Expand arguments for lora_b (expand_ready), the routing weights and the output; where the rank
// vectors come from is left to the caller.
lg::ExpandArgs expand_operands(const MoeLoraGemmDims& d, const lg::Routing& rt,
                               const std::vector<at::Tensor>& b, const at::Tensor& w,
                               bool add_inputs, const at::Tensor& output) {
  const at::Tensor out2 = output.dim() == 3 ? output.flatten(0, 1) : output;
  lg::ExpandArgs args{};
  args.rt = rt;
  args.r = static_cast<int>(d.r);
  args.RP = lg::padded_rank(args.r);
  for (size_t s = 0; s < b.size(); ++s) {
    args.b[s] = b[s].data_ptr();
    args.b_sl[s] = b[s].stride(0);
    args.b_se[s] = b[s].stride(1);
    args.b_sn[s] = b[s].stride(2);
  }
  args.rb = static_cast<int>(b[0].size(3));
  args.S = static_cast<int>(d.S);
  args.N = static_cast<int>(d.N);
  args.ntiles = lg::column_tiles(static_cast<int>(d.N));
  if (w.defined()) args.weights = w.data_ptr<float>();
  args.out = output.data_ptr();
  args.out_row = out2.stride(0);
  args.col0 = static_cast<int>(d.offset);
  args.add = add_inputs;
  args.vec = aligned16(output) && d.offset % 8 == 0 && out2.stride(0) % 8 == 0;
  return args;
}

struct ShrinkOutput {
  at::Tensor partial;
  int ksplit;
  bool overlap;  // the expand behind it is to ask for the largest carveout too (overlap_expand)
};

// Shrink into a fresh workspace: fp32 partials [ksplit, S, numel, RP], or with a single K
// chunk the rounded rank vectors [S, numel, RP] in x's dtype. fused: the fused op's expand
// follows on the stream.
ShrinkOutput run_shrink(const MoeLoraGemmDims& d, const lg::Routing& rt, const at::Tensor& x_in,
                        const std::vector<at::Tensor>& lora_a, int sms, bool fused,
                        cudaStream_t stream) {
  ShrinkOperands ops = shrink_operands(d, rt, x_in, lora_a);
  lg::ShrinkArgs& args = ops.args;
  const lg::ShrinkPlan plan = lg::plan_shrink(d.numel, rt.L, rt.NB, rt.BS, rt.E, args.S,
                                              args.K, args.r, sms);
  args.ksplit = plan.ksplit;
  args.kchunk = plan.kchunk;
  args.max_shared = fused && lg::overlap_expand(plan.grid, d.numel, rt.BS, args.r, sms);
  const bool single = plan.ksplit == 1;
  at::Tensor partial = at::empty({plan.ksplit * d.S * d.numel * args.RP},
                                 ops.x.options().dtype(single ? ops.x.scalar_type() : at::kFloat));
  args.partial = single ? nullptr : partial.data_ptr<float>();
  args.tmp = single ? partial.data_ptr() : nullptr;
  const cudaError_t err = ops.x.scalar_type() == at::kHalf
                              ? lg::launch_moe_lora_shrink<__half>(args, plan.grid, stream)
                              : lg::launch_moe_lora_shrink<__nv_bfloat16>(args, plan.grid, stream);
  MOE_EXT_CHECK_CUDA_LAUNCH(err);
  return {partial, plan.ksplit, args.max_shared};
}

// intermediate [S, numel, r] (x's dtype) from the shrink's fp32 partials (ksplit > 1).
void run_reduce(const MoeLoraGemmDims& d, const lg::Routing& rt, const ShrinkOutput& sh,
                const at::Tensor& intermediate, int sms, cudaStream_t stream) {
  lg::ReduceArgs args{};
  args.rt = rt;
  args.partial = sh.partial.data_ptr<float>();
  args.ksplit = sh.ksplit;
  args.S = static_cast<int>(d.S);
  args.r = static_cast<int>(d.r);
  args.RP = lg::padded_rank(args.r);
  args.G = lg::reduce_groups(sh.ksplit, rt.BS, args.RP);
  args.inter = intermediate.data_ptr();
  const int grid = static_cast<int>(std::min<int64_t>(
      lg::max_real_blocks(d.numel, d.L, d.NB, d.BS, d.E) * d.S, 8LL * sms));
  const cudaError_t err =
      intermediate.scalar_type() == at::kHalf
          ? lg::launch_moe_lora_reduce<__half>(args, grid, stream)
          : lg::launch_moe_lora_reduce<__nv_bfloat16>(args, grid, stream);
  MOE_EXT_CHECK_CUDA_LAUNCH(err);
}

// Expand from fp32 partials (ksplit > 1), from the T workspace (ksplit == 1, row stride RP) or
// from the T intermediate [S, numel, r] (partial undefined);
// dependent: launched right behind the shrink of the same call (programmatic dependent launch);
// max_shared: that shrink's overlap.
void run_expand(const MoeLoraGemmDims& d, const lg::Routing& rt, const at::Tensor& partial,
                int ksplit, const at::Tensor& intermediate, const std::vector<at::Tensor>& b,
                const at::Tensor& w, bool add_inputs, const at::Tensor& output, int sms,
                bool dependent, bool max_shared, cudaStream_t stream) {
  lg::ExpandArgs args = expand_operands(d, rt, b, w, add_inputs, output);
  args.max_shared = max_shared;
  const bool from_partials = partial.defined() && ksplit > 1;
  const at::Tensor& inter = partial.defined() ? partial : intermediate;
  args.partial = from_partials ? partial.data_ptr<float>() : nullptr;
  args.ksplit = ksplit;
  args.G = lg::reduce_groups(ksplit, rt.BS, args.RP);
  if (!from_partials) {
    args.inter = inter.data_ptr();
    args.inter_ld = partial.defined() ? args.RP : d.r;
    if (partial.defined()) args.r = args.RP;  // the workspace holds zeros past the rank
    args.inter_vec = aligned16(inter) && args.inter_ld % 8 == 0 && args.r % 8 == 0;
  }
  if (lg::use_stream_expand(d.numel, rt.BS, args.r, sms)) {
    const cudaError_t err =
        output.scalar_type() == at::kHalf
            ? lg::launch_moe_lora_expand_stream<__half>(args, dependent, stream, sms)
            : lg::launch_moe_lora_expand_stream<__nv_bfloat16>(args, dependent, stream, sms);
    MOE_EXT_CHECK_CUDA_LAUNCH(err);
    return;
  }
  const int span =
      lg::expand_span(d.numel, rt.L, rt.NB, rt.BS, rt.E, args.S, args.r, args.ntiles, sms);
  const int grid =
      lg::expand_grid(d.numel, rt.L, rt.NB, rt.BS, rt.E, args.S, args.ntiles, span, sms);
  const cudaError_t err =
      output.scalar_type() == at::kHalf
          ? lg::launch_moe_lora_expand<__half>(args, span, grid, dependent, stream)
          : lg::launch_moe_lora_expand<__nv_bfloat16>(args, span, grid, dependent, stream);
  MOE_EXT_CHECK_CUDA_LAUNCH(err);
}

lg::DecodePlan decode_plan(const MoeLoraGemmDims& d, const lg::Routing& rt, int sms) {
  return lg::plan_decode(d.numel, rt.L, rt.NB, rt.BS, rt.E, static_cast<int>(d.S),
                         static_cast<int>(d.K), static_cast<int>(d.r), sms);
}

// The decode path: the fused op in one launch (output defined), or the shrink alone writing
// intermediate [S, numel, r].
void run_decode(const MoeLoraGemmDims& d, const lg::Routing& rt, const lg::DecodePlan& plan,
                const at::Tensor& x, const std::vector<at::Tensor>& lora_a,
                const std::vector<at::Tensor>& b, const at::Tensor& w, bool add_inputs,
                const at::Tensor& output, const at::Tensor& intermediate, int sms,
                cudaStream_t stream) {
  ShrinkOperands ops = shrink_operands(d, rt, x, lora_a);
  lg::DecodeArgs args{};
  args.sh = ops.args;
  args.sh.kchunk = plan.kchunk;
  if (output.defined()) {
    args.ex = expand_operands(d, rt, b, w, add_inputs, output);
    args.tiles = lg::decode_tiles(args.ex.ntiles, plan.C);
  } else {
    args.sh.tmp = intermediate.data_ptr();
  }
  const cudaError_t err =
      x.scalar_type() == at::kHalf
          ? lg::launch_moe_lora_decode<__half>(args, plan.C, stream, sms)
          : lg::launch_moe_lora_decode<__nv_bfloat16>(args, plan.C, stream, sms);
  MOE_EXT_CHECK_CUDA_LAUNCH(err);
}

// The decode path's shrink alone, writing intermediate [S, numel, r].
void run_decode_shrink(const MoeLoraGemmDims& d, const lg::Routing& rt, const lg::DecodePlan& plan,
                       const at::Tensor& x, const std::vector<at::Tensor>& lora_a,
                       const at::Tensor& intermediate, int sms, cudaStream_t stream) {
  run_decode(d, rt, plan, x, lora_a, {}, at::Tensor(), false, at::Tensor(), intermediate, sms,
             stream);
}

}  // namespace

void fused_moe_lora_cuda(const at::Tensor& output, const at::Tensor& x,
                         const std::vector<at::Tensor>& lora_a,
                         const std::vector<at::Tensor>& lora_b, const at::Tensor& topk_weights,
                         const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                         const at::Tensor& num_tokens_post_pad, int64_t top_k,
                         bool mul_routed_weight, bool add_inputs, int64_t offset,
                         const std::optional<at::Tensor>& adapter_enabled) {
  const MoeLoraGemmDims d =
      check_fused_moe_lora(output, x, lora_a, lora_b, topk_weights, sorted_token_ids, expert_ids,
                           num_tokens_post_pad, top_k, offset, adapter_enabled);
  check_cuda_dtype(x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  zero_unless_add(d, output, add_inputs);
  if (no_blocks(d)) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = num_sms(x);
  const DeviceRouting routing =
      make_routing(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled);
  const lg::Routing& rt = routing.rt;
  // Everything the expand needs besides the partials is prepared before the shrink launch, so
  // that the expand is the very next kernel on the stream.
  const at::Tensor w = float_weights(topk_weights, mul_routed_weight);
  const std::vector<at::Tensor> b = expand_ready_all(lora_b);
  const lg::DecodePlan plan = decode_plan(d, rt, sms);
  if (plan.C > 0) {
    if (lg::decode_tiles(lg::column_tiles(static_cast<int>(d.N)), plan.C) <=
        lg::kDecodeMaxTiles) {
      run_decode(d, rt, plan, x, lora_a, b, w, add_inputs, output, at::Tensor(), sms, stream);
      return;
    }
    // Wide outputs: the decode shrink, then the expand kernel from its rank vectors (exactly
    // the standalone shrink + expand).
    const at::Tensor inter = at::empty({d.S, d.numel, d.r}, x.options());
    run_decode_shrink(d, rt, plan, x, lora_a, inter, sms, stream);
    run_expand(d, rt, at::Tensor(), 1, inter, b, w, add_inputs, output, sms, true, false,
               stream);
    return;
  }
  const ShrinkOutput sh = run_shrink(d, rt, x, lora_a, sms, true, stream);
  if (lg::reduce_before_expand(sh.ksplit, d.numel, rt.BS, static_cast<int>(d.r), sms)) {
    // Exactly the standalone shrink + expand.
    const at::Tensor inter = at::empty({d.S, d.numel, d.r}, x.options());
    run_reduce(d, rt, sh, inter, sms, stream);
    run_expand(d, rt, at::Tensor(), 1, inter, b, w, add_inputs, output, sms, true, false,
               stream);
    return;
  }
  run_expand(d, rt, sh.partial, sh.ksplit, at::Tensor(), b, w, add_inputs, output, sms, true,
             sh.overlap, stream);
}

void fused_moe_lora_shrink_cuda(const at::Tensor& intermediate, const at::Tensor& x,
                                const std::vector<at::Tensor>& lora_a,
                                const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                const std::optional<at::Tensor>& adapter_enabled) {
  const MoeLoraGemmDims d =
      check_fused_moe_lora_shrink(intermediate, x, lora_a, sorted_token_ids, expert_ids,
                                  num_tokens_post_pad, top_k, adapter_enabled);
  check_cuda_dtype(x.scalar_type());
  if (no_blocks(d)) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int sms = num_sms(x);
  const DeviceRouting routing =
      make_routing(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled);
  const lg::Routing& rt = routing.rt;
  const lg::DecodePlan plan = decode_plan(d, rt, sms);
  if (plan.C > 0) {
    run_decode_shrink(d, rt, plan, x, lora_a, intermediate, sms, stream);
    return;
  }
  const ShrinkOutput sh = run_shrink(d, rt, x, lora_a, sms, false, stream);
  if (sh.ksplit == 1) {  // already rounded: keep the first r of the RP columns
    const int64_t rp = lg::padded_rank(static_cast<int>(d.r));
    intermediate.copy_(sh.partial.view({d.S, d.numel, rp}).narrow(2, 0, d.r));
    return;
  }
  run_reduce(d, rt, sh, intermediate, sms, stream);
}

void fused_moe_lora_expand_cuda(const at::Tensor& output, const at::Tensor& intermediate,
                                const std::vector<at::Tensor>& lora_b,
                                const at::Tensor& topk_weights,
                                const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                bool mul_routed_weight, bool add_inputs, int64_t offset,
                                const std::optional<at::Tensor>& adapter_enabled) {
  const MoeLoraGemmDims d = check_fused_moe_lora_expand(
      output, intermediate, lora_b, topk_weights, sorted_token_ids, expert_ids,
      num_tokens_post_pad, top_k, offset, adapter_enabled);
  check_cuda_dtype(intermediate.scalar_type());
  const c10::cuda::CUDAGuard guard(intermediate.device());
  zero_unless_add(d, output, add_inputs);
  if (no_blocks(d)) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const DeviceRouting routing =
      make_routing(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled);
  const lg::Routing& rt = routing.rt;
  run_expand(d, rt, at::Tensor(), 1, intermediate, expand_ready_all(lora_b),
             float_weights(topk_weights, mul_routed_weight), add_inputs, output,
             num_sms(intermediate), false, false, stream);
}

TORCH_LIBRARY_IMPL(moe_ext, CUDA, m) {
  m.impl("fused_moe_lora", &fused_moe_lora_cuda);
  m.impl("fused_moe_lora_shrink", &fused_moe_lora_shrink_cuda);
  m.impl("fused_moe_lora_expand", &fused_moe_lora_expand_cuda);
}

}  // namespace moe_ext
