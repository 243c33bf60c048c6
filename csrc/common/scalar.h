// Scalar types shared by every backend.
//
// Kernels see three storage types: double, float and bf16_t. bf16_t is our own
// 16-bit struct (not c10::BFloat16, not __nv_bfloat16, not hip_bfloat16) so that
// one kernel body compiles unchanged with g++, nvcc and hipcc, and so that CPU
// loops over it vectorize (a load is a 16-bit shift, a store a rounding add).
// Arithmetic always happens in acc_t<T>: float for bf16_t and float, double for
// double. Tensors of dtype torch.bfloat16 are reinterpreted as bf16_t*: both are
// one uint16_t holding the upper half of an IEEE binary32.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYGFM_HD __host__ __device__ __forceinline__
#else
// always_inline: a body inlined into each ISA clone of a CPU launcher (see
// csrc/cpu/isa.h) is compiled for that ISA, and no out-of-line copy compiled
// for one ISA can be shared with another.
#define PYGFM_HD inline __attribute__((always_inline))
#endif

namespace pygfm {

struct alignas(2) bf16_t {
  uint16_t bits;
};

PYGFM_HD float bf16_to_float(bf16_t value) {
  uint32_t word = static_cast<uint32_t>(value.bits) << 16;
  float result;
  memcpy(&result, &word, sizeof(result));
  return result;
}

// Round to nearest, ties to even, as torch does; NaN stays a (quiet) NaN.
PYGFM_HD bf16_t float_to_bf16(float value) {
  uint32_t word;
  memcpy(&word, &value, sizeof(word));
  bf16_t result;
  if ((word & 0x7fffffffu) > 0x7f800000u) {
    result.bits = static_cast<uint16_t>((word >> 16) | 0x0040u);
  } else {
    word += 0x7fffu + ((word >> 16) & 1u);
    result.bits = static_cast<uint16_t>(word >> 16);
  }
  return result;
}

template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<bf16_t> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

PYGFM_HD float to_acc(bf16_t value) { return bf16_to_float(value); }
PYGFM_HD float to_acc(float value) { return value; }
PYGFM_HD double to_acc(double value) { return value; }

template <typename T>
PYGFM_HD T from_acc(acc_t<T> value) {
  return static_cast<T>(value);
}
template <>
PYGFM_HD bf16_t from_acc<bf16_t>(float value) {
  return float_to_bf16(value);
}

template <typename A>
PYGFM_HD bool is_nan(A value) {
  return value != value;
}

PYGFM_HD float bitcast_float(uint32_t word) {
  float result;
  memcpy(&result, &word, sizeof(result));
  return result;
}

PYGFM_HD double bitcast_double(uint64_t word) {
  double result;
  memcpy(&result, &word, sizeof(result));
  return result;
}

// +inf in the accumulation type (no <limits>: it is host-only under some hipcc).
template <typename A>
PYGFM_HD A positive_infinity();
template <>
PYGFM_HD float positive_infinity<float>() {
  return bitcast_float(0x7f800000u);
}
template <>
PYGFM_HD double positive_infinity<double>() {
  return bitcast_double(0x7ff0000000000000ull);
}

}  // namespace pygfm
