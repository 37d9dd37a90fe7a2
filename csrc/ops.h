// Declarations of every CPU and CUDA implementation of the moe_ext ops, with their shape
// contracts. Schemas live in torch_bindings.cpp; notation as in the design: T tokens, k top_k,
// numel = T*k routes, E experts, L adapter slots, BS block_size, P padded length per slot.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <torch/all.h>

namespace moe_ext {

// Padded length of one slot's sorted_token_ids: room for every route plus, for each expert that
// can be non-empty (at most min(E, numel) of them), a partly filled last block.
// Mirrored by moe_ext/_shapes.py::padded_length (a test asserts they agree).
inline int64_t padded_length(int64_t numel, int64_t num_experts, int64_t block_size) {
  const int64_t worst = numel + std::min(num_experts, numel) * (block_size - 1);
  return (worst + block_size - 1) / block_size * block_size;
}

constexpr int64_t kMaxExperts = 1024;

// ---- moe_align -------------------------------------------------------------------------------
// Checks shared by the CPU and CUDA impls; token_lora_mapping == nullptr for the plain op
// (then max_loras is 1 and the outputs are 1-D).
void check_align_args(const at::Tensor& topk_ids, const at::Tensor* token_lora_mapping,
                      int64_t num_experts, int64_t block_size, int64_t max_loras,
                      const std::optional<at::Tensor>& adapter_enabled,
                      const std::optional<at::Tensor>& expert_map,
                      const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                      const at::Tensor& num_tokens_post_pad);
// topk_ids [T, k] int32|int64; expert_map [E_global] int32 or none.
// Outputs: sorted_token_ids [P] int32, expert_ids [P/BS] int32, num_tokens_post_pad [1] int32.
void moe_align_block_size_out_cpu(const at::Tensor& topk_ids, int64_t num_experts,
                                  int64_t block_size, const std::optional<at::Tensor>& expert_map,
                                  const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                  const at::Tensor& num_tokens_post_pad);
// token_lora_mapping [T] int32; adapter_enabled [L] or [L+1] int32|bool or none.
// Outputs: sorted_token_ids [L, P], expert_ids [L, P/BS], num_tokens_post_pad [L], all int32.
void moe_lora_align_block_size_out_cpu(const at::Tensor& topk_ids,
                                       const at::Tensor& token_lora_mapping, int64_t num_experts,
                                       int64_t block_size, int64_t max_loras,
                                       const std::optional<at::Tensor>& adapter_enabled,
                                       const std::optional<at::Tensor>& expert_map,
                                       const at::Tensor& sorted_token_ids,
                                       const at::Tensor& expert_ids,
                                       const at::Tensor& num_tokens_post_pad);
#ifdef MOE_EXT_WITH_CUDA
void moe_align_block_size_out_cuda(const at::Tensor& topk_ids, int64_t num_experts,
                                   int64_t block_size, const std::optional<at::Tensor>& expert_map,
                                   const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                   const at::Tensor& num_tokens_post_pad);
void moe_lora_align_block_size_out_cuda(const at::Tensor& topk_ids,
                                        const at::Tensor& token_lora_mapping, int64_t num_experts,
                                        int64_t block_size, int64_t max_loras,
                                        const std::optional<at::Tensor>& adapter_enabled,
                                        const std::optional<at::Tensor>& expert_map,
                                        const at::Tensor& sorted_token_ids,
                                        const at::Tensor& expert_ids,
                                        const at::Tensor& num_tokens_post_pad);
#endif

// ---- moe_lora_gemm -------------------------------------------------------------------------
// Alignment inputs (untrusted values, checked shapes): sorted_token_ids [L, P], expert_ids
// [L, P/BS], num_tokens_post_pad [L], all int32; adapter_enabled [L] or [L+1] int32|bool or none.
// Weights: lora_a[s] [L, E, r, K], lora_b[s] [L, E, N, r], any strides (stride 0 on E allowed).
// x [T, K] (row = i / top_k) or [T*k, K] (row = i); output [T, k, W] or [T*k, W], W >= offset+S*N;
// topk_weights [T, k] or [T*k] float; intermediate [S, T*k, r] in x's dtype.
struct MoeLoraGemmDims {
  int64_t T, numel, top_k, L, E, P, NB, BS, S, r, K, N, offset;
  bool x_per_route;
};
MoeLoraGemmDims check_fused_moe_lora(const at::Tensor& output, const at::Tensor& x,
                                     const std::vector<at::Tensor>& lora_a,
                                     const std::vector<at::Tensor>& lora_b,
                                     const at::Tensor& topk_weights,
                                     const at::Tensor& sorted_token_ids,
                                     const at::Tensor& expert_ids,
                                     const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                     int64_t offset,
                                     const std::optional<at::Tensor>& adapter_enabled);
MoeLoraGemmDims check_fused_moe_lora_shrink(const at::Tensor& intermediate, const at::Tensor& x,
                                            const std::vector<at::Tensor>& lora_a,
                                            const at::Tensor& sorted_token_ids,
                                            const at::Tensor& expert_ids,
                                            const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                            const std::optional<at::Tensor>& adapter_enabled);
MoeLoraGemmDims check_fused_moe_lora_expand(const at::Tensor& output,
                                            const at::Tensor& intermediate,
                                            const std::vector<at::Tensor>& lora_b,
                                            const at::Tensor& topk_weights,
                                            const at::Tensor& sorted_token_ids,
                                            const at::Tensor& expert_ids,
                                            const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                            int64_t offset,
                                            const std::optional<at::Tensor>& adapter_enabled);

void fused_moe_lora_cpu(const at::Tensor& output, const at::Tensor& x,
                        const std::vector<at::Tensor>& lora_a,
                        const std::vector<at::Tensor>& lora_b, const at::Tensor& topk_weights,
                        const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                        const at::Tensor& num_tokens_post_pad, int64_t top_k,
                        bool mul_routed_weight, bool add_inputs, int64_t offset,
                        const std::optional<at::Tensor>& adapter_enabled);
void fused_moe_lora_shrink_cpu(const at::Tensor& intermediate, const at::Tensor& x,
                               const std::vector<at::Tensor>& lora_a,
                               const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                               const at::Tensor& num_tokens_post_pad, int64_t top_k,
                               const std::optional<at::Tensor>& adapter_enabled);
void fused_moe_lora_expand_cpu(const at::Tensor& output, const at::Tensor& intermediate,
                               const std::vector<at::Tensor>& lora_b,
                               const at::Tensor& topk_weights,
                               const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                               const at::Tensor& num_tokens_post_pad, int64_t top_k,
                               bool mul_routed_weight, bool add_inputs, int64_t offset,
                               const std::optional<at::Tensor>& adapter_enabled);
#ifdef MOE_EXT_WITH_CUDA
void fused_moe_lora_cuda(const at::Tensor& output, const at::Tensor& x,
                         const std::vector<at::Tensor>& lora_a,
                         const std::vector<at::Tensor>& lora_b, const at::Tensor& topk_weights,
                         const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                         const at::Tensor& num_tokens_post_pad, int64_t top_k,
                         bool mul_routed_weight, bool add_inputs, int64_t offset,
                         const std::optional<at::Tensor>& adapter_enabled);
void fused_moe_lora_shrink_cuda(const at::Tensor& intermediate, const at::Tensor& x,
                                const std::vector<at::Tensor>& lora_a,
                                const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                const std::optional<at::Tensor>& adapter_enabled);
void fused_moe_lora_expand_cuda(const at::Tensor& output, const at::Tensor& intermediate,
                                const std::vector<at::Tensor>& lora_b,
                                const at::Tensor& topk_weights,
                                const at::Tensor& sorted_token_ids, const at::Tensor& expert_ids,
                                const at::Tensor& num_tokens_post_pad, int64_t top_k,
                                bool mul_routed_weight, bool add_inputs, int64_t offset,
                                const std::optional<at::Tensor>& adapter_enabled);
#endif

}  // namespace moe_ext
