// Argument checks shared by every op. Each message names the argument, the expected and the
// actual value, so a user sees what to fix; all checks run before any kernel launch.
#pragma once

#include <torch/all.h>

#define MOE_EXT_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)

#define MOE_EXT_CHECK_DIM(t, n)                                                              \
  TORCH_CHECK((t).dim() == (n), #t " must have ", (n), " dimensions, got ", (t).dim(),     \
              " (shape ", (t).sizes(), ")")

#define MOE_EXT_CHECK_DTYPE(t, dt)                                                           \
  TORCH_CHECK((t).scalar_type() == (dt), #t " must have dtype ", (dt), ", got ",          \
              (t).scalar_type())

#define MOE_EXT_CHECK_CONTIGUOUS(t) \
  TORCH_CHECK((t).is_contiguous(), #t " must be contiguous (strides ", (t).strides(), ")")

#define MOE_EXT_CHECK_SIZE(t, d, n)                                                          \
  TORCH_CHECK((t).size(d) == (n), #t ".size(", (d), ") must be ", (n), ", got ", (t).size(d), \
              " (shape ", (t).sizes(), ")")

#define MOE_EXT_CHECK_SAME_DEVICE(a, b)                                                       \
  TORCH_CHECK((a).device() == (b).device(), #a " and " #b " must be on the same device, got ", \
              (a).device(), " and ", (b).device())

#define MOE_EXT_CHECK_DEVICE(t, dev)                                                           \
  TORCH_CHECK((t).device() == (dev), #t " must be on ", (dev), ", got ", (t).device())

#define MOE_EXT_CHECK_RANGE(name, v, lo, hi)                                                  \
  TORCH_CHECK((v) >= (lo) && (v) <= (hi), name " must be in [", (lo), ", ", (hi), "], got ", (v))

#define MOE_EXT_CHECK_CUDA_LAUNCH(err)                                                        \
  TORCH_CHECK((err) == cudaSuccess, "moe_ext kernel launch failed: ", cudaGetErrorString(err))
