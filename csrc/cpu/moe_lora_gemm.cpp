// CPU implementation of the multi-LoRA MoE grouped GEMM (DESIGN 4.2) and the argument checks
// shared with the CUDA binding. Works block by block of the alignment with fp32 matmuls; the
// rank vector is rounded to x's dtype between the two GEMMs, as on the GPU.
#include <algorithm>
#include <vector>

#include "checks.h"
#include "ops.h"

namespace moe_ext {
namespace {

bool is_float_type(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat;
}

// Shapes of the three alignment outputs (their values are untrusted and checked by the kernels).
void check_routing(MoeLoraGemmDims& d, const at::Tensor& sorted_token_ids,
                   const at::Tensor& expert_ids, const at::Tensor& num_tokens_post_pad,
                   const std::optional<at::Tensor>& adapter_enabled, const at::Device& dev) {
  MOE_EXT_CHECK_DIM(sorted_token_ids, 2);
  MOE_EXT_CHECK_DIM(expert_ids, 2);
  MOE_EXT_CHECK_DIM(num_tokens_post_pad, 1);
  for (const auto& [t, name] : {std::make_pair(&sorted_token_ids, "sorted_token_ids"),
                                 std::make_pair(&expert_ids, "expert_ids"),
                                 std::make_pair(&num_tokens_post_pad, "num_tokens_post_pad")}) {
    TORCH_CHECK(t->scalar_type() == at::kInt, name, " must have dtype int32, got ",
                t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous (strides ", t->strides(), ")");
    TORCH_CHECK(t->device() == dev, name, " must be on ", dev, ", got ", t->device());
  }
  MOE_EXT_CHECK_SIZE(sorted_token_ids, 0, d.L);
  MOE_EXT_CHECK_SIZE(expert_ids, 0, d.L);
  MOE_EXT_CHECK_SIZE(num_tokens_post_pad, 0, d.L);
  d.P = sorted_token_ids.size(1);
  d.NB = expert_ids.size(1);
  // P = NB = 0: the alignment of an empty batch (no blocks, nothing to compute).
  TORCH_CHECK((d.NB > 0 && d.P % d.NB == 0) || (d.NB == 0 && d.P == 0),
              "sorted_token_ids.size(1) (", d.P, ") must be a multiple of expert_ids.size(1) (",
              d.NB, ")");
  d.BS = d.NB > 0 ? d.P / d.NB : 1;
  TORCH_CHECK(d.BS <= 1024, "block_size (P / blocks) must be <= 1024, got ", d.BS);
  TORCH_CHECK(d.L <= 1024, "max_loras must be <= 1024, got ", d.L);
  if (adapter_enabled.has_value()) {
    const at::Tensor& en = *adapter_enabled;
    TORCH_CHECK(en.dim() == 1, "adapter_enabled must be 1-D, got shape ", en.sizes());
    TORCH_CHECK(en.size(0) == d.L || en.size(0) == d.L + 1, "adapter_enabled must have ", d.L,
                " or ", d.L + 1, " elements, got ", en.size(0));
    TORCH_CHECK(en.scalar_type() == at::kInt || en.scalar_type() == at::kBool,
                "adapter_enabled must be int32 or bool, got ", en.scalar_type());
    TORCH_CHECK(en.device() == dev, "adapter_enabled must be on ", dev, ", got ", en.device());
  }
}

// lora list: S tensors of [L, E, rows, cols] with one shared shape and the dtype of `like`
// (the activation input: x or intermediate).
void check_lora_list(const std::vector<at::Tensor>& list, const char* name, at::ScalarType dtype,
                     const char* like, const at::Device& dev) {
  TORCH_CHECK(!list.empty() && list.size() <= 4, name, " must hold 1 to 4 slices, got ",
              list.size());
  for (const at::Tensor& t : list) {
    TORCH_CHECK(t.dim() == 4, name, " slices must be 4-D [L, E, rows, cols], got shape ",
                t.sizes());
    TORCH_CHECK(t.sizes() == list[0].sizes(), name, " slices must share one shape: ", t.sizes(),
                " vs ", list[0].sizes());
    TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, " (", like,
                "'s), got ", t.scalar_type());
    TORCH_CHECK(t.device() == dev, name, " must be on ", dev, ", got ", t.device());
  }
}

// output [T, k, W] or [T*k, W]: checks that it views as [T*k, W] and that the columns
// [offset, offset + S*N) fit (in that form: offset + S*N could overflow).
void check_output(const MoeLoraGemmDims& d, const at::Tensor& output, at::ScalarType dtype) {
  TORCH_CHECK(output.dim() == 2 || output.dim() == 3, "output must be [T, k, W] or [T*k, W], got ",
              output.sizes());
  MOE_EXT_CHECK_DTYPE(output, dtype);
  TORCH_CHECK(output.stride(-1) == 1, "output must have unit stride on its last dim, got ",
              output.strides());
  if (output.dim() == 3) {
    MOE_EXT_CHECK_SIZE(output, 1, d.top_k);
    TORCH_CHECK(output.size(0) == 1 || output.size(1) == 1 ||
                    output.stride(0) == output.size(1) * output.stride(1),
                "output [T, k, W] must be viewable as [T*k, W], strides ", output.strides());
  }
  const int64_t width = output.size(-1);
  TORCH_CHECK(width < (int64_t{1} << 31), "output.size(-1) must be < 2^31, got ", width);
  const int64_t last = width - d.S * d.N;
  TORCH_CHECK(d.offset >= 0 && d.offset <= last, "offset must be in [0, W - S*N] = [0, ", last,
              "] (W = output.size(-1) = ", width, ", S*N = ", d.S * d.N, "), got ", d.offset);
}

void check_weights(const MoeLoraGemmDims& d, const at::Tensor& topk_weights,
                   const at::Device& dev) {
  TORCH_CHECK(topk_weights.numel() == d.numel, "topk_weights must hold T*k = ", d.numel,
              " elements, got shape ", topk_weights.sizes());
  TORCH_CHECK(is_float_type(topk_weights.scalar_type()),
              "topk_weights must be float32, float16 or bfloat16, got ",
              topk_weights.scalar_type());
  MOE_EXT_CHECK_DEVICE(topk_weights, dev);
}

void check_x(MoeLoraGemmDims& d, const at::Tensor& x) {
  MOE_EXT_CHECK_DIM(x, 2);
  TORCH_CHECK(is_float_type(x.scalar_type()), "x must be float16, bfloat16 or float32, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(0) == d.T || x.size(0) == d.numel, "x.size(0) must be T = ", d.T,
              " or T*k = ", d.numel, ", got ", x.size(0));
  d.x_per_route = x.size(0) == d.numel && x.size(0) != d.T;
  MOE_EXT_CHECK_SIZE(x, 1, d.K);
}

void set_tokens(MoeLoraGemmDims& d, int64_t numel, int64_t top_k) {
  TORCH_CHECK(top_k >= 1, "top_k must be >= 1, got ", top_k);
  TORCH_CHECK(numel % top_k == 0, "routes (", numel, ") must be a multiple of top_k (", top_k, ")");
  d.top_k = top_k;
  d.numel = numel;
  d.T = numel / top_k;
}

int64_t output_routes(const at::Tensor& output, int64_t top_k) {
  return output.dim() == 3 ? output.size(0) * top_k : output.size(0);
}

}  // namespace

MoeLoraGemmDims check_fused_moe_lora(const at::Tensor& output, const at::Tensor& x,
                                     const std::vector<at::Tensor>& lora_a,
                                     const std::vector<at::Tensor>& lora_b,
                                     const at::Tensor& topk_weights,
                                     const at::Tensor& sorted_token_ids,
                                     const at::Tensor& expert_ids,
                                     const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                     int64_t offset,
                                     const std::optional<at::Tensor>& adapter_enabled) {
  MoeLoraGemmDims d{};
  const at::Device dev = x.device();
  TORCH_CHECK(output.dim() >= 2, "output must be [T, k, W] or [T*k, W], got ", output.sizes());
  set_tokens(d, output_routes(output, top_k), top_k);
  check_lora_list(lora_a, "lora_a", x.scalar_type(), "x", dev);
  check_lora_list(lora_b, "lora_b", x.scalar_type(), "x", dev);
  TORCH_CHECK(lora_a.size() == lora_b.size(), "lora_a and lora_b must have as many slices, got ",
              lora_a.size(), " and ", lora_b.size());
  const at::Tensor& a = lora_a[0];
  const at::Tensor& b = lora_b[0];
  d.S = static_cast<int64_t>(lora_a.size());
  d.L = a.size(0), d.E = a.size(1), d.r = a.size(2), d.K = a.size(3), d.N = b.size(2);
  TORCH_CHECK(b.size(0) == d.L && b.size(1) == d.E && b.size(3) == d.r,
              "lora_b must be [L, E, N, r] = [", d.L, ", ", d.E, ", N, ", d.r, "], got ",
              b.sizes());
  TORCH_CHECK(d.r >= 1 && d.r <= 128, "LoRA rank must be in [1, 128], got ", d.r);
  TORCH_CHECK(d.K > 0 && d.K % 8 == 0 && d.N > 0 && d.N % 8 == 0,
              "K and N must be positive multiples of 8, got K = ", d.K, ", N = ", d.N);
  d.offset = offset;
  check_x(d, x);
  MOE_EXT_CHECK_DEVICE(output, dev);
  check_output(d, output, x.scalar_type());
  check_weights(d, topk_weights, dev);
  check_routing(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled, dev);
  return d;
}

MoeLoraGemmDims check_fused_moe_lora_shrink(const at::Tensor& intermediate, const at::Tensor& x,
                                            const std::vector<at::Tensor>& lora_a,
                                            const at::Tensor& sorted_token_ids,
                                            const at::Tensor& expert_ids,
                                            const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                            const std::optional<at::Tensor>& adapter_enabled) {
  MoeLoraGemmDims d{};
  const at::Device dev = x.device();
  MOE_EXT_CHECK_DIM(intermediate, 3);
  set_tokens(d, intermediate.size(1), top_k);
  check_lora_list(lora_a, "lora_a", x.scalar_type(), "x", dev);
  const at::Tensor& a = lora_a[0];
  d.S = static_cast<int64_t>(lora_a.size());
  d.L = a.size(0), d.E = a.size(1), d.r = a.size(2), d.K = a.size(3), d.N = 0;
  TORCH_CHECK(d.r >= 1 && d.r <= 128, "LoRA rank must be in [1, 128], got ", d.r);
  TORCH_CHECK(d.K > 0 && d.K % 8 == 0, "K must be a positive multiple of 8, got ", d.K);
  check_x(d, x);
  MOE_EXT_CHECK_SIZE(intermediate, 0, d.S);
  MOE_EXT_CHECK_SIZE(intermediate, 2, d.r);
  MOE_EXT_CHECK_DTYPE(intermediate, x.scalar_type());
  MOE_EXT_CHECK_CONTIGUOUS(intermediate);
  MOE_EXT_CHECK_DEVICE(intermediate, dev);
  check_routing(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled, dev);
  return d;
}

MoeLoraGemmDims check_fused_moe_lora_expand(const at::Tensor& output,
                                            const at::Tensor& intermediate,
                                            const std::vector<at::Tensor>& lora_b,
                                            const at::Tensor& topk_weights,
                                            const at::Tensor& sorted_token_ids,
                                            const at::Tensor& expert_ids,
                                            const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                            int64_t offset,
                                            const std::optional<at::Tensor>& adapter_enabled) {
  MoeLoraGemmDims d{};
  const at::Device dev = intermediate.device();
  MOE_EXT_CHECK_DIM(intermediate, 3);
  TORCH_CHECK(is_float_type(intermediate.scalar_type()),
              "intermediate must be float16, bfloat16 or float32, got ",
              intermediate.scalar_type());
  MOE_EXT_CHECK_CONTIGUOUS(intermediate);
  set_tokens(d, intermediate.size(1), top_k);
  TORCH_CHECK(output.dim() >= 2 && output_routes(output, top_k) == d.numel,
              "output must be [T, k, W] or [T*k, W] with T*k = intermediate.size(1) = ", d.numel,
              ", got ", output.sizes());
  check_lora_list(lora_b, "lora_b", intermediate.scalar_type(), "intermediate", dev);
  const at::Tensor& b = lora_b[0];
  d.S = static_cast<int64_t>(lora_b.size());
  d.L = b.size(0), d.E = b.size(1), d.N = b.size(2), d.r = b.size(3), d.K = 0;
  TORCH_CHECK(d.r >= 1 && d.r <= 128, "LoRA rank must be in [1, 128], got ", d.r);
  TORCH_CHECK(d.N > 0 && d.N % 8 == 0, "N must be a positive multiple of 8, got ", d.N);
  MOE_EXT_CHECK_SIZE(intermediate, 0, d.S);
  MOE_EXT_CHECK_SIZE(intermediate, 2, d.r);
  d.offset = offset;
  MOE_EXT_CHECK_DEVICE(output, dev);
  check_output(d, output, intermediate.scalar_type());
  check_weights(d, topk_weights, dev);
  check_routing(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled, dev);
  return d;
}

namespace {

// Calls fn(slot, expert, routes) for every real block of the alignment, ignoring every
// out-of-range value (route ids, experts, totals) and disabled slots.
template <typename Fn>
void for_each_block(const MoeLoraGemmDims& d, const at::Tensor& sorted_token_ids,
                    const at::Tensor& expert_ids, const at::Tensor& num_tokens_post_pad,
                    const std::optional<at::Tensor>& adapter_enabled, Fn fn) {
  const int32_t* ids = sorted_token_ids.data_ptr<int32_t>();
  const int32_t* experts = expert_ids.data_ptr<int32_t>();
  const int32_t* totals = num_tokens_post_pad.data_ptr<int32_t>();
  at::Tensor enabled;
  if (adapter_enabled.has_value()) enabled = adapter_enabled->to(at::kInt).contiguous();
  std::vector<int64_t> routes;
  for (int64_t l = 0; l < d.L; ++l) {
    if (enabled.defined() && enabled.data_ptr<int32_t>()[l] == 0) continue;
    const int64_t total = std::min<int64_t>(std::max<int32_t>(totals[l], 0), d.P);
    const int64_t blocks = (total + d.BS - 1) / d.BS;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t e = experts[l * d.NB + b];
      if (e < 0 || e >= d.E) continue;
      routes.clear();
      for (int64_t m = 0; m < d.BS; ++m) {
        const int64_t id = ids[l * d.P + b * d.BS + m];
        if (id >= 0 && id < d.numel) routes.push_back(id);
      }
      if (!routes.empty()) fn(l, e, routes);
    }
  }
}

at::Tensor index_tensor(const std::vector<int64_t>& v) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {static_cast<int64_t>(v.size())},
                       at::TensorOptions().dtype(at::kLong))
      .clone();
}

// Rank vectors of the listed routes for slice s: round_to_dtype(x[rows] @ lora_a[s][l, e].T).
at::Tensor shrink_rows(const MoeLoraGemmDims& d, const at::Tensor& x, const at::Tensor& a,
                       int64_t l, int64_t e, const at::Tensor& routes) {
  const at::Tensor rows = d.x_per_route ? routes : at::floor_divide(routes, d.top_k);
  const at::Tensor xb = x.index_select(0, rows).to(at::kFloat);
  return at::mm(xb, a.select(0, l).select(0, e).to(at::kFloat).t()).to(x.scalar_type());
}

// output[routes, offset + s*N : +N] += w * (tmp @ lora_b[s][l, e].T), fp32 math. Overwrite mode
// zeroes the column range first, so that 0 + d rounds exactly like d.
void expand_rows(const MoeLoraGemmDims& d, const at::Tensor& out2, const at::Tensor& tmp,
                 const at::Tensor& b, int64_t l, int64_t e, int64_t s, const at::Tensor& routes,
                 const at::Tensor& weights) {
  at::Tensor delta = at::mm(tmp.to(at::kFloat), b.select(0, l).select(0, e).to(at::kFloat).t());
  if (weights.defined()) delta.mul_(weights.index_select(0, routes).unsqueeze(1));
  at::Tensor cols = out2.narrow(1, d.offset + s * d.N, d.N);
  delta.add_(cols.index_select(0, routes).to(at::kFloat));
  cols.index_copy_(0, routes, delta.to(out2.scalar_type()));
}

at::Tensor routes_view(const at::Tensor& output) {
  return output.dim() == 3 ? output.flatten(0, 1) : output;
}

at::Tensor float_weights(const at::Tensor& topk_weights, bool mul_routed_weight) {
  return mul_routed_weight ? topk_weights.reshape({-1}).to(at::kFloat) : at::Tensor();
}

}  // namespace

void fused_moe_lora_cpu(const at::Tensor& output, const at::Tensor& x,
                        const std::vector<at::Tensor>& lora_a,
                        const std::vector<at::Tensor>& lora_b, const at::Tensor& topk_weights,
                        const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                        const at::Tensor& num_tokens_post_pad, int64_t top_k,
                        bool mul_routed_weight, bool add_inputs, int64_t offset,
                        const std::optional<at::Tensor>& adapter_enabled) {
  const MoeLoraGemmDims d =
      check_fused_moe_lora(output, x, lora_a, lora_b, topk_weights, sorted_token_ids, expert_ids,
                           num_tokens_post_pad, top_k, offset, adapter_enabled);
  const at::Tensor out2 = routes_view(output);
  if (!add_inputs) out2.narrow(1, offset, d.S * d.N).zero_();
  const at::Tensor w = float_weights(topk_weights, mul_routed_weight);
  for_each_block(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled,
                 [&](int64_t l, int64_t e, const std::vector<int64_t>& r) {
                   const at::Tensor routes = index_tensor(r);
                   for (int64_t s = 0; s < d.S; ++s) {
                     const at::Tensor tmp = shrink_rows(d, x, lora_a[s], l, e, routes);
                     expand_rows(d, out2, tmp, lora_b[s], l, e, s, routes, w);
                   }
                 });
}

void fused_moe_lora_shrink_cpu(const at::Tensor& intermediate, const at::Tensor& x,
                               const std::vector<at::Tensor>& lora_a,
                               const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                               const at::Tensor& num_tokens_post_pad, int64_t top_k,
                               const std::optional<at::Tensor>& adapter_enabled) {
  const MoeLoraGemmDims d =
      check_fused_moe_lora_shrink(intermediate, x, lora_a, sorted_token_ids, expert_ids,
                                  num_tokens_post_pad, top_k, adapter_enabled);
  for_each_block(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled,
                 [&](int64_t l, int64_t e, const std::vector<int64_t>& r) {
                   const at::Tensor routes = index_tensor(r);
                   for (int64_t s = 0; s < d.S; ++s)
                     intermediate.select(0, s).index_copy_(
                         0, routes, shrink_rows(d, x, lora_a[s], l, e, routes));
                 });
}

void fused_moe_lora_expand_cpu(const at::Tensor& output, const at::Tensor& intermediate,
                               const std::vector<at::Tensor>& lora_b,
                               const at::Tensor& topk_weights,
                               const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                               const at::Tensor& num_tokens_post_pad, int64_t top_k,
                               bool mul_routed_weight, bool add_inputs, int64_t offset,
                               const std::optional<at::Tensor>& adapter_enabled) {
  const MoeLoraGemmDims d = check_fused_moe_lora_expand(
      output, intermediate, lora_b, topk_weights, sorted_token_ids, expert_ids,
      num_tokens_post_pad, top_k, offset, adapter_enabled);
  const at::Tensor out2 = routes_view(output);
  if (!add_inputs) out2.narrow(1, offset, d.S * d.N).zero_();
  const at::Tensor w = float_weights(topk_weights, mul_routed_weight);
  for_each_block(d, sorted_token_ids, expert_ids, num_tokens_post_pad, adapter_enabled,
                 [&](int64_t l, int64_t e, const std::vector<int64_t>& r) {
                   const at::Tensor routes = index_tensor(r);
                   for (int64_t s = 0; s < d.S; ++s) {
                     const at::Tensor tmp = intermediate.select(0, s).index_select(0, routes);
                     expand_rows(d, out2, tmp, lora_b[s], l, e, s, routes, w);
                   }
                 });
}

TORCH_LIBRARY_IMPL(moe_ext, CPU, m) {
  m.impl("fused_moe_lora", &fused_moe_lora_cpu);
  m.impl("fused_moe_lora_shrink", &fused_moe_lora_shrink_cpu);
  m.impl("fused_moe_lora_expand", &fused_moe_lora_expand_cpu);
}

}  // namespace moe_ext
