// Calls moe_ext ops through the c10 dispatcher on CPU tensors from a C++ program linked against
// libtorch and the op library (no Python), and compares every output element with values worked
// out by hand from the contract: routes bucketed by expert in ascending route order, segments
// padded to block_size, sentinel numel, unused blocks -1. Exit status 0 only if all match.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Tensors3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using OptTensor = std::optional<at::Tensor>;

int failures = 0;

at::Tensor int_tensor(const std::vector<int64_t>& values, at::ScalarType dtype,
                      at::IntArrayRef shape) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong)).to(dtype).reshape(shape);
}

// Compares `actual` element by element with `expected` (int32), naming the first mismatch.
void expect_equal(const std::string& what, const at::Tensor& actual,
                  const std::vector<int32_t>& expected) {
  if (actual.scalar_type() != at::kInt || actual.numel() != (int64_t)expected.size()) {
    std::printf("FAIL %s: expected %zu int32 values, got %lld of %s\n", what.c_str(),
                expected.size(), (long long)actual.numel(), c10::toString(actual.scalar_type()));
    ++failures;
    return;
  }
  const at::Tensor flat = actual.contiguous().view(-1);
  const int32_t* got = flat.data_ptr<int32_t>();
  for (size_t i = 0; i < expected.size(); ++i) {
    if (got[i] != expected[i]) {
      std::printf("FAIL %s: element %zu is %d, expected %d\n", what.c_str(), i, got[i],
                  expected[i]);
      ++failures;
      return;
    }
  }
  std::printf("ok   %s\n", what.c_str());
}

std::vector<int32_t> padded(std::vector<int32_t> values, size_t size, int32_t fill) {
  values.resize(size, fill);
  return values;
}

// T=4 tokens, k=2, E=5 experts, block 4. Route i = t*k + j; route 3 (expert 7) and route 6
// (expert -1) are not routed here and must be dropped.
const std::vector<int64_t> kTopkIds = {3, 0, 3, 7, 0, 3, -1, 1};
constexpr int64_t kTokens = 4, kTopk = 2, kExperts = 5, kBlock = 4, kNumel = kTokens * kTopk;
// P = round_up(numel + min(E, numel) * (BS - 1), BS) = round_up(8 + 5 * 3, 4) = 24.
constexpr size_t kPadded = 24;

void test_align() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("moe_ext::moe_align_block_size", "")
                .typed<Tensors3(const at::Tensor&, int64_t, int64_t, const OptTensor&)>();
  // Buckets: expert 0 <- routes {1, 4}, expert 1 <- {7}, expert 3 <- {0, 2, 5}; each one block.
  const std::vector<int32_t> sorted = padded({1, 4, 8, 8, 7, 8, 8, 8, 0, 2, 5, 8}, kPadded, 8);
  const std::vector<int32_t> experts = {0, 1, 3, -1, -1, -1};
  for (at::ScalarType dtype : {at::kInt, at::kLong}) {
    const std::string tag = std::string("moe_align_block_size ") + c10::toString(dtype) + " ";
    const auto [s, e, n] =
        op.call(int_tensor(kTopkIds, dtype, {kTokens, kTopk}), kExperts, kBlock, std::nullopt);
    expect_equal(tag + "sorted_token_ids", s, sorted);
    expect_equal(tag + "expert_ids", e, experts);
    expect_equal(tag + "num_tokens_post_pad", n, {12});
  }
}

void test_align_out_expert_map() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("moe_ext::moe_align_block_size_out", "")
                .typed<void(const at::Tensor&, int64_t, int64_t, const OptTensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  // Global -> local ids: 0->2, 1 and 2 not here, 3->0, 4->1. Local buckets: 0 <- {0, 2, 5},
  // 2 <- {1, 4}; route 7 (global 1) is dropped.
  const at::Tensor expert_map = int_tensor({2, -1, -1, 0, 1}, at::kInt, {kExperts});
  // Outputs poisoned first: every element must be overwritten.
  const auto opts = at::TensorOptions().dtype(at::kInt);
  at::Tensor s = at::full({(int64_t)kPadded}, 12345, opts);
  at::Tensor e = at::full({(int64_t)kPadded / kBlock}, 12345, opts);
  at::Tensor n = at::full({1}, 12345, opts);
  op.call(int_tensor(kTopkIds, at::kInt, {kTokens, kTopk}), kExperts, kBlock, expert_map, s, e,
          n);
  expect_equal("moe_align_block_size_out expert_map sorted_token_ids", s,
               padded({0, 2, 5, 8, 1, 4, 8, 8}, kPadded, kNumel));
  expect_equal("moe_align_block_size_out expert_map expert_ids", e, {0, 2, -1, -1, -1, -1});
  expect_equal("moe_align_block_size_out expert_map num_tokens_post_pad", n, {8});
}

void test_lora_align() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("moe_ext::moe_lora_align_block_size", "")
                .typed<Tensors3(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                                const OptTensor&, const OptTensor&)>();
  // L=3 slots. Tokens 0 and 2 use slot 1, token 1 no adapter (-1), token 3 slot 5 (>= L: dropped).
  // Slot 1 holds routes 0 (e3), 1 (e0), 4 (e0), 5 (e3); slots 0 and 2 are empty.
  const at::Tensor mapping = int_tensor({1, -1, 1, 5}, at::kInt, {kTokens});
  const auto [s, e, n] = op.call(int_tensor(kTopkIds, at::kInt, {kTokens, kTopk}), mapping,
                                 kExperts, kBlock, 3, std::nullopt, std::nullopt);
  const std::vector<int32_t> empty_s(kPadded, kNumel);
  const std::vector<int32_t> empty_e(kPadded / kBlock, -1);
  std::vector<int32_t> sorted = empty_s;
  const std::vector<int32_t> slot1 = padded({1, 4, 8, 8, 0, 5, 8, 8}, kPadded, kNumel);
  sorted.insert(sorted.end(), slot1.begin(), slot1.end());
  sorted.insert(sorted.end(), empty_s.begin(), empty_s.end());
  std::vector<int32_t> experts = empty_e;
  const std::vector<int32_t> slot1_e = {0, 3, -1, -1, -1, -1};
  experts.insert(experts.end(), slot1_e.begin(), slot1_e.end());
  experts.insert(experts.end(), empty_e.begin(), empty_e.end());
  expect_equal("moe_lora_align_block_size sorted_token_ids", s, sorted);
  expect_equal("moe_lora_align_block_size expert_ids", e, experts);
  expect_equal("moe_lora_align_block_size num_tokens_post_pad", n, {0, 8, 0});
}

}  // namespace

int main() {
  const std::vector<void (*)()> tests = {test_align, test_align_out_expert_map, test_lora_align};
  for (auto test : tests) {
    try {
      test();
    } catch (const std::exception& err) {
      // The first line names the problem; the rest of a c10::Error is a kernel list and trace.
      const std::string message = err.what();
      std::printf("FAIL exception: %s\n", message.substr(0, message.find('\n')).c_str());
      ++failures;
    }
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
