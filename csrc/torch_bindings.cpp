// Schemas of every moe_ext op. Implementations register themselves per dispatch key in
// cpu/<family>.cpp and cuda/<family>.cu; fakes are in moe_ext/ops/<family>.py.
// The CMake build of the library for C++ programs defines MOE_EXT_NO_PYTHON: no Python there.
#ifndef MOE_EXT_NO_PYTHON
#include <Python.h>
#endif

#include <torch/library.h>

// The module is imported as `moe_ext._C` only so that its library gets loaded; it exposes
// nothing to Python itself (limited API, one build for every Python >= 3.9).
#ifndef MOE_EXT_NO_PYTHON
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(moe_ext, m) {
  // Each family's fakes live in moe_ext/ops/<family>.py; set_python_module applies to the defs
  // that follow it, so a missing fake points the user at the module to import.

  // ---- moe_align: sorting / alignment of routes into expert blocks ----
  m.set_python_module("moe_ext.ops.moe_align");
  m.def(
      "moe_align_block_size(Tensor topk_ids, int num_experts, int block_size, "
      "Tensor? expert_map=None) -> (Tensor sorted_token_ids, Tensor expert_ids, "
      "Tensor num_tokens_post_pad)");
  m.def(
      "moe_align_block_size_out(Tensor topk_ids, int num_experts, int block_size, "
      "Tensor? expert_map, Tensor(a!) sorted_token_ids, Tensor(b!) expert_ids, "
      "Tensor(c!) num_tokens_post_pad) -> ()");
  m.def(
      "moe_lora_align_block_size(Tensor topk_ids, Tensor token_lora_mapping, int num_experts, "
      "int block_size, int max_loras, Tensor? adapter_enabled=None, Tensor? expert_map=None) "
      "-> (Tensor sorted_token_ids, Tensor expert_ids, Tensor num_tokens_post_pad)");
  m.def(
      "moe_lora_align_block_size_out(Tensor topk_ids, Tensor token_lora_mapping, "
      "int num_experts, int block_size, int max_loras, Tensor? adapter_enabled, "
      "Tensor? expert_map, Tensor(a!) sorted_token_ids, Tensor(b!) expert_ids, "
      "Tensor(c!) num_tokens_post_pad) -> ()");

  // ---- moe_lora_gemm: grouped shrink / expand of multi-LoRA MoE ----
  m.set_python_module("moe_ext.ops.moe_lora_gemm");
  m.def(
      "fused_moe_lora(Tensor(a!) output, Tensor x, Tensor[] lora_a, Tensor[] lora_b, "
      "Tensor topk_weights, Tensor sorted_token_ids, Tensor expert_ids, "
      "Tensor num_tokens_post_pad, int top_k, bool mul_routed_weight=False, "
      "bool add_inputs=True, int offset=0, Tensor? adapter_enabled=None) -> ()");
  m.def(
      "fused_moe_lora_shrink(Tensor(a!) intermediate, Tensor x, Tensor[] lora_a, "
      "Tensor sorted_token_ids, Tensor expert_ids, Tensor num_tokens_post_pad, int top_k, "
      "Tensor? adapter_enabled=None) -> ()");
  m.def(
      "fused_moe_lora_expand(Tensor(a!) output, Tensor intermediate, Tensor[] lora_b, "
      "Tensor topk_weights, Tensor sorted_token_ids, Tensor expert_ids, "
      "Tensor num_tokens_post_pad, int top_k, bool mul_routed_weight=False, "
      "bool add_inputs=True, int offset=0, Tensor? adapter_enabled=None) -> ()");

  // ---- nvfp4: E2M1 values, E4M3 block scales of 16, FP32 global scale ----
  m.set_python_module("moe_ext.ops.nvfp4");
  m.def(
      "nvfp4_quantize(Tensor x, Tensor global_scale, bool swizzle=False) "
      "-> (Tensor packed, Tensor scales)");
  m.def(
      "nvfp4_dequantize(Tensor packed, Tensor scales, Tensor global_scale, ScalarType dtype, "
      "bool swizzled=False) -> Tensor");
  m.def("nvfp4_swizzle_scales(Tensor scales) -> Tensor");
  m.def("nvfp4_unswizzle_scales(Tensor swizzled, int rows, int cols) -> Tensor");
}
