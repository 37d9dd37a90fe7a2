// CUDA bindings of the moe_align family: checks, then one launch on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "moe_ext/moe_align.cuh"
#include "ops.h"

namespace moe_ext {
namespace {

void run_align_cuda(const at::Tensor& topk_ids, const at::Tensor* mapping, int64_t num_experts,
                    int64_t block_size, int64_t max_loras,
                    const std::optional<at::Tensor>& adapter_enabled,
                    const std::optional<at::Tensor>& expert_map,
                    const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                    const at::Tensor& num_tokens_post_pad) {
  MOE_EXT_CHECK(topk_ids.is_cuda(), "topk_ids must be a CUDA tensor, got ", topk_ids.device());
  check_align_args(topk_ids, mapping, num_experts, block_size, max_loras, adapter_enabled,
                   expert_map, sorted_token_ids, expert_ids, num_tokens_post_pad);
  const c10::cuda::CUDAGuard guard(topk_ids.device());
  AlignParams p{};
  p.topk_ids = topk_ids.data_ptr();
  p.ids_are_int64 = topk_ids.scalar_type() == at::kLong;
  p.token_lora_mapping = mapping != nullptr ? mapping->data_ptr<int32_t>() : nullptr;
  p.adapter_enabled = adapter_enabled.has_value() ? adapter_enabled->data_ptr() : nullptr;
  p.enabled_is_bool = adapter_enabled.has_value() && adapter_enabled->scalar_type() == at::kBool;
  p.expert_map = expert_map.has_value() ? expert_map->data_ptr<int32_t>() : nullptr;
  p.numel = static_cast<int32_t>(topk_ids.numel());
  p.top_k = static_cast<int32_t>(topk_ids.size(1));
  p.num_experts = static_cast<int32_t>(num_experts);
  p.block_size = static_cast<int32_t>(block_size);
  p.num_slots = static_cast<int32_t>(max_loras);
  p.padded_len = static_cast<int32_t>(padded_length(topk_ids.numel(), num_experts, block_size));
  p.sorted_token_ids = sorted_token_ids.data_ptr<int32_t>();
  p.expert_ids = expert_ids.data_ptr<int32_t>();
  p.num_tokens_post_pad = num_tokens_post_pad.data_ptr<int32_t>();
  // Workspace of the multi-chunk path, from the caching allocator (graph-capture safe).
  const int64_t workspace_ints = align_workspace_ints(p.numel, p.num_experts, p.num_slots);
  at::Tensor workspace;
  if (workspace_ints > 0) {
    workspace = at::empty({workspace_ints}, topk_ids.options().dtype(at::kInt));
    p.workspace = workspace.data_ptr<int32_t>();
  }
  MOE_EXT_CHECK_CUDA_LAUNCH(launch_moe_align(p, at::cuda::getCurrentCUDAStream()));
}

}  // namespace

void moe_align_block_size_out_cuda(const at::Tensor& topk_ids, int64_t num_experts,
                                   int64_t block_size, const std::optional<at::Tensor>& expert_map,
                                   const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                   const at::Tensor& num_tokens_post_pad) {
  run_align_cuda(topk_ids, nullptr, num_experts, block_size, 1, std::nullopt, expert_map,
                 sorted_token_ids, expert_ids, num_tokens_post_pad);
}

void moe_lora_align_block_size_out_cuda(const at::Tensor& topk_ids,
                                        const at::Tensor& token_lora_mapping, int64_t num_experts,
                                        int64_t block_size, int64_t max_loras,
                                        const std::optional<at::Tensor>& adapter_enabled,
                                        const std::optional<at::Tensor>& expert_map,
                                        const at::Tensor& sorted_token_ids,
                                        const at::Tensor& expert_ids,
                                        const at::Tensor& num_tokens_post_pad) {
  run_align_cuda(topk_ids, &token_lora_mapping, num_experts, block_size, max_loras,
                 adapter_enabled, expert_map, sorted_token_ids, expert_ids, num_tokens_post_pad);
}

}  // namespace moe_ext

TORCH_LIBRARY_IMPL(moe_ext, CUDA, m) {
  m.impl("moe_align_block_size_out", &moe_ext::moe_align_block_size_out_cuda);
  m.impl("moe_lora_align_block_size_out", &moe_ext::moe_lora_align_block_size_out_cuda);
}
