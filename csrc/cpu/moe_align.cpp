// CPU implementation of the moe_align family, the argument checks shared with CUDA, and the
// functional variants (allocate, then call the _out op through the dispatcher).
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "ops.h"

namespace moe_ext {

namespace {

// A 1-D, contiguous index vector on `device`; `sizes_ok` says which lengths are accepted.
void check_vector(const at::Tensor& t, const char* name, bool size_ok, const char* size_text,
                  bool dtype_ok, const char* dtype_text, const c10::Device& device) {
  MOE_EXT_CHECK(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  MOE_EXT_CHECK(size_ok, name, " must have ", size_text, " entries, got ", t.size(0));
  MOE_EXT_CHECK(dtype_ok, name, " must have dtype ", dtype_text, ", got ", t.scalar_type());
  MOE_EXT_CHECK(t.is_contiguous(), name, " must be contiguous (strides ", t.strides(), ")");
  MOE_EXT_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
}

// The kernels write the outputs while they read the inputs: no two may share memory.
void check_no_overlap(const at::Tensor& out, const char* out_name, const at::Tensor& other,
                      const char* other_name) {
  MOE_EXT_CHECK(at::get_overlap_status(out, other) == at::MemOverlapStatus::No, out_name,
                " must not share memory with ", other_name);
}

// Checked before the output shapes are computed from them.
void check_align_scalars(int64_t num_experts, int64_t block_size, int64_t max_loras) {
  MOE_EXT_CHECK_RANGE("num_experts", num_experts, 1, kMaxExperts);
  MOE_EXT_CHECK_RANGE("block_size", block_size, 1, 1024);
  MOE_EXT_CHECK_RANGE("max_loras", max_loras, 1, 1024);
}

}  // namespace

void check_align_args(const at::Tensor& topk_ids, const at::Tensor* token_lora_mapping,
                      int64_t num_experts, int64_t block_size, int64_t max_loras,
                      const std::optional<at::Tensor>& adapter_enabled,
                      const std::optional<at::Tensor>& expert_map,
                      const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                      const at::Tensor& num_tokens_post_pad) {
  MOE_EXT_CHECK_DIM(topk_ids, 2);
  MOE_EXT_CHECK(topk_ids.scalar_type() == at::kInt || topk_ids.scalar_type() == at::kLong,
                "topk_ids must have dtype int32 or int64, got ", topk_ids.scalar_type());
  MOE_EXT_CHECK_CONTIGUOUS(topk_ids);
  check_align_scalars(num_experts, block_size, max_loras);
  const int64_t numel = topk_ids.numel();
  MOE_EXT_CHECK(numel < (int64_t{1} << 30), "topk_ids.numel() must be < 2^30, got ", numel);
  const auto device = topk_ids.device();
  if (token_lora_mapping != nullptr) {
    const at::Tensor& t = *token_lora_mapping;
    check_vector(t, "token_lora_mapping", t.dim() == 1 && t.size(0) == topk_ids.size(0),
                 "T = topk_ids.size(0)", t.scalar_type() == at::kInt, "int32", device);
  }
  if (adapter_enabled.has_value()) {
    const at::Tensor& t = *adapter_enabled;
    check_vector(t, "adapter_enabled",
                 t.dim() == 1 && (t.size(0) == max_loras || t.size(0) == max_loras + 1),
                 "max_loras or max_loras + 1",
                 t.scalar_type() == at::kInt || t.scalar_type() == at::kBool, "int32 or bool",
                 device);
  }
  if (expert_map.has_value()) {
    const at::Tensor& t = *expert_map;
    check_vector(t, "expert_map", t.dim() == 1 && t.size(0) == num_experts, "num_experts",
                 t.scalar_type() == at::kInt, "int32", device);
  }
  const int64_t p = padded_length(numel, num_experts, block_size);
  const bool lora = token_lora_mapping != nullptr;
  const std::vector<int64_t> sorted_shape =
      lora ? std::vector<int64_t>{max_loras, p} : std::vector<int64_t>{p};
  const std::vector<int64_t> experts_shape =
      lora ? std::vector<int64_t>{max_loras, p / block_size} : std::vector<int64_t>{p / block_size};
  const std::vector<int64_t> total_shape{lora ? max_loras : 1};
  for (const auto& [t, shape, name] :
       {std::make_tuple(&sorted_token_ids, &sorted_shape, "sorted_token_ids"),
        std::make_tuple(&expert_ids, &experts_shape, "expert_ids"),
        std::make_tuple(&num_tokens_post_pad, &total_shape, "num_tokens_post_pad")}) {
    MOE_EXT_CHECK(t->sizes() == at::IntArrayRef(*shape), name, " must have shape ",
                  at::IntArrayRef(*shape), ", got ", t->sizes());
    MOE_EXT_CHECK(t->scalar_type() == at::kInt, name, " must have dtype int32, got ",
                  t->scalar_type());
    MOE_EXT_CHECK(t->is_contiguous(), name, " must be contiguous (strides ", t->strides(), ")");
    MOE_EXT_CHECK(t->device() == device, name, " must be on ", device, ", got ", t->device());
    check_no_overlap(*t, name, topk_ids, "topk_ids");
    if (lora) check_no_overlap(*t, name, *token_lora_mapping, "token_lora_mapping");
  }
  check_no_overlap(sorted_token_ids, "sorted_token_ids", expert_ids, "expert_ids");
  check_no_overlap(sorted_token_ids, "sorted_token_ids", num_tokens_post_pad,
                   "num_tokens_post_pad");
  check_no_overlap(expert_ids, "expert_ids", num_tokens_post_pad, "num_tokens_post_pad");
}

namespace {

// Local expert of route i, or -1 when the route is not routed to a valid expert here.
template <typename IdT>
int32_t route_expert(const IdT* ids, const int32_t* expert_map, int64_t i, int64_t num_experts) {
  const int64_t e = ids[i];
  if (e < 0 || e >= num_experts) return -1;
  if (expert_map == nullptr) return static_cast<int32_t>(e);
  const int32_t local = expert_map[e];
  return local >= 0 && local < num_experts ? local : -1;
}

bool slot_enabled(const std::optional<at::Tensor>& adapter_enabled, int64_t slot) {
  if (!adapter_enabled.has_value()) return true;
  const at::Tensor& enabled = *adapter_enabled;
  return enabled.scalar_type() == at::kBool ? enabled.data_ptr<bool>()[slot]
                                            : enabled.data_ptr<int32_t>()[slot] != 0;
}

// Counting sort of the routes into every slot's expert segments (stable: ascending route index).
template <typename IdT>
void align_cpu(const IdT* ids, const int32_t* mapping, const std::optional<at::Tensor>& enabled,
               const int32_t* expert_map, int64_t numel, int64_t top_k, int64_t num_experts,
               int64_t block_size, int64_t max_loras, int64_t p, int32_t* sorted,
               int32_t* block_experts, int32_t* totals) {
  std::vector<int32_t> slot_of_route(numel), expert_of_route(numel);
  std::vector<int64_t> counts(max_loras * num_experts, 0);
  std::vector<char> enabled_slot(max_loras);
  for (int64_t l = 0; l < max_loras; ++l) enabled_slot[l] = slot_enabled(enabled, l);
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t slot = mapping == nullptr ? 0 : mapping[i / top_k];
    const bool ok = slot >= 0 && slot < max_loras && enabled_slot[slot];
    const int32_t e = ok ? route_expert(ids, expert_map, i, num_experts) : -1;
    slot_of_route[i] = static_cast<int32_t>(slot);
    expert_of_route[i] = e;
    if (e >= 0) ++counts[slot * num_experts + e];
  }
  const int64_t num_blocks = p / block_size;
  std::vector<int64_t> cursor(max_loras * num_experts);
  for (int64_t l = 0; l < max_loras; ++l) {
    int32_t* row = sorted + l * p;
    int32_t* row_experts = block_experts + l * num_blocks;
    std::fill(row, row + p, static_cast<int32_t>(numel));
    std::fill(row_experts, row_experts + num_blocks, -1);
    int64_t start = 0;
    for (int64_t e = 0; e < num_experts; ++e) {
      cursor[l * num_experts + e] = start;
      const int64_t padded = (counts[l * num_experts + e] + block_size - 1) / block_size * block_size;
      std::fill(row_experts + start / block_size, row_experts + (start + padded) / block_size,
                static_cast<int32_t>(e));
      start += padded;
    }
    totals[l] = static_cast<int32_t>(start);
  }
  for (int64_t i = 0; i < numel; ++i) {
    const int32_t e = expert_of_route[i];
    if (e >= 0) sorted[slot_of_route[i] * p + cursor[slot_of_route[i] * num_experts + e]++] = i;
  }
}

void run_align_cpu(const at::Tensor& topk_ids, const at::Tensor* mapping, int64_t num_experts,
                   int64_t block_size, int64_t max_loras,
                   const std::optional<at::Tensor>& adapter_enabled,
                   const std::optional<at::Tensor>& expert_map, const at::Tensor& sorted_token_ids,
                   const at::Tensor& expert_ids, const at::Tensor& num_tokens_post_pad) {
  check_align_args(topk_ids, mapping, num_experts, block_size, max_loras, adapter_enabled,
                   expert_map, sorted_token_ids, expert_ids, num_tokens_post_pad);
  const int64_t numel = topk_ids.numel();
  const int64_t p = padded_length(numel, num_experts, block_size);
  const int32_t* map = expert_map.has_value() ? expert_map->data_ptr<int32_t>() : nullptr;
  const int32_t* slots = mapping != nullptr ? mapping->data_ptr<int32_t>() : nullptr;
  AT_DISPATCH_INDEX_TYPES(topk_ids.scalar_type(), "moe_align_cpu", [&] {
    align_cpu(topk_ids.data_ptr<index_t>(), slots, adapter_enabled, map, numel,
              topk_ids.size(1), num_experts, block_size, max_loras, p,
              sorted_token_ids.data_ptr<int32_t>(), expert_ids.data_ptr<int32_t>(),
              num_tokens_post_pad.data_ptr<int32_t>());
  });
}

}  // namespace

void moe_align_block_size_out_cpu(const at::Tensor& topk_ids, int64_t num_experts,
                                  int64_t block_size, const std::optional<at::Tensor>& expert_map,
                                  const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                  const at::Tensor& num_tokens_post_pad) {
  run_align_cpu(topk_ids, nullptr, num_experts, block_size, 1, std::nullopt, expert_map,
                sorted_token_ids, expert_ids, num_tokens_post_pad);
}

void moe_lora_align_block_size_out_cpu(const at::Tensor& topk_ids,
                                       const at::Tensor& token_lora_mapping, int64_t num_experts,
                                       int64_t block_size, int64_t max_loras,
                                       const std::optional<at::Tensor>& adapter_enabled,
                                       const std::optional<at::Tensor>& expert_map,
                                       const at::Tensor& sorted_token_ids,
                                       const at::Tensor& expert_ids,
                                       const at::Tensor& num_tokens_post_pad) {
  run_align_cpu(topk_ids, &token_lora_mapping, num_experts, block_size, max_loras,
                adapter_enabled, expert_map, sorted_token_ids, expert_ids, num_tokens_post_pad);
}

namespace {

// Functional variants for every device: allocate the outputs, then call the _out op.
std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_align_block_size(
    const at::Tensor& topk_ids, int64_t num_experts, int64_t block_size,
    const std::optional<at::Tensor>& expert_map) {
  check_align_scalars(num_experts, block_size, 1);
  const int64_t p = padded_length(topk_ids.numel(), num_experts, block_size);
  const auto opts = topk_ids.options().dtype(at::kInt);
  auto sorted = at::empty({p}, opts);
  auto experts = at::empty({p / block_size}, opts);
  auto total = at::empty({1}, opts);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("moe_ext::moe_align_block_size_out", "")
                       .typed<void(const at::Tensor&, int64_t, int64_t,
                                   const std::optional<at::Tensor>&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&)>();
  op.call(topk_ids, num_experts, block_size, expert_map, sorted, experts, total);
  return {sorted, experts, total};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> moe_lora_align_block_size(
    const at::Tensor& topk_ids, const at::Tensor& token_lora_mapping, int64_t num_experts,
    int64_t block_size, int64_t max_loras, const std::optional<at::Tensor>& adapter_enabled,
    const std::optional<at::Tensor>& expert_map) {
  check_align_scalars(num_experts, block_size, max_loras);
  const int64_t p = padded_length(topk_ids.numel(), num_experts, block_size);
  const auto opts = topk_ids.options().dtype(at::kInt);
  auto sorted = at::empty({max_loras, p}, opts);
  auto experts = at::empty({max_loras, p / block_size}, opts);
  auto totals = at::empty({max_loras}, opts);
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moe_ext::moe_lora_align_block_size_out", "")
          .typed<void(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                      const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  op.call(topk_ids, token_lora_mapping, num_experts, block_size, max_loras, adapter_enabled,
          expert_map, sorted, experts, totals);
  return {sorted, experts, totals};
}

}  // namespace

}  // namespace moe_ext

TORCH_LIBRARY_IMPL(moe_ext, CPU, m) {
  m.impl("moe_align_block_size_out", &moe_ext::moe_align_block_size_out_cpu);
  m.impl("moe_lora_align_block_size_out", &moe_ext::moe_lora_align_block_size_out_cpu);
}

TORCH_LIBRARY_IMPL(moe_ext, CompositeExplicitAutograd, m) {
  m.impl("moe_align_block_size", &moe_ext::moe_align_block_size);
  m.impl("moe_lora_align_block_size", &moe_ext::moe_lora_align_block_size);
}
