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

// ---- nvfp4 -----------------------------------------------------------------------------------
// x [..., K] bf16|fp16|fp32 (K % 16 == 0) viewed as [M, K]; global_scale [1] float32.
// packed [..., K/2] uint8; scales [..., K/16] float8_e4m3fn, or swizzled
// [round_up(M, 128), round_up(K/16, 4)] (128x4 tiles, padding 0).
struct Nvfp4Shape {
  int64_t rows;  // M
  int64_t k;     // K (unpacked elements per row)
};
Nvfp4Shape check_nvfp4_quantize_args(const at::Tensor& x, const at::Tensor& global_scale);
Nvfp4Shape check_nvfp4_dequantize_args(const at::Tensor& packed, const at::Tensor& scales,
                                       const at::Tensor& global_scale, at::ScalarType dtype,
                                       bool swizzled);
void check_nvfp4_unswizzle_args(const at::Tensor& swizzled, int64_t rows, int64_t cols);
// Scales output of quantize on x's device: linear (empty) or swizzled (zero-filled padding).
at::Tensor nvfp4_new_scales(const at::Tensor& x, const Nvfp4Shape& shape, bool swizzle);
int64_t nvfp4_col_tiles(int64_t cols);  // ceil(cols / 4)

std::tuple<at::Tensor, at::Tensor> nvfp4_quantize_cpu(const at::Tensor& x,
                                                      const at::Tensor& global_scale,
                                                      bool swizzle);
// -> out [..., K] of dtype.
at::Tensor nvfp4_dequantize_cpu(const at::Tensor& packed, const at::Tensor& scales,
                                const at::Tensor& global_scale, at::ScalarType dtype,
                                bool swizzled);
// scales [M, C] -> [round_up(M, 128), round_up(C, 4)]; and back to [rows, cols].
at::Tensor nvfp4_swizzle_scales_cpu(const at::Tensor& scales);
at::Tensor nvfp4_unswizzle_scales_cpu(const at::Tensor& swizzled, int64_t rows, int64_t cols);
#ifdef MOE_EXT_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> nvfp4_quantize_cuda(const at::Tensor& x,
                                                       const at::Tensor& global_scale,
                                                       bool swizzle);
at::Tensor nvfp4_dequantize_cuda(const at::Tensor& packed, const at::Tensor& scales,
                                 const at::Tensor& global_scale, at::ScalarType dtype,
                                 bool swizzled);
at::Tensor nvfp4_swizzle_scales_cuda(const at::Tensor& scales);
at::Tensor nvfp4_unswizzle_scales_cuda(const at::Tensor& swizzled, int64_t rows, int64_t cols);
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
