// Element types known to the runtime, with their sizes and names, and the one switch that turns a
// runtime DType into a compile-time type (fails loudly on anything unsupported).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/core/error.h"

namespace dirmoe {

enum class DType : uint8_t { kF32, kF64, kBF16, kF16, kI32, kI64, kU16, kU8 };
enum class Device : uint8_t { kCpu, kCuda };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU16: return 2;
    case DType::kU8: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF64: return "f64";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kU16: return "u16";
    case DType::kU8: return "u8";
  }
  return "?";
}

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kF32; }
template <> constexpr DType dtype_of<double>() { return DType::kF64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::kI32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::kI64; }
template <> constexpr DType dtype_of<uint16_t>() { return DType::kU16; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::kU8; }

// Calls f(T{}) with T the C++ type of a floating dtype the CPU kernels support.
template <class F>
decltype(auto) dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::kF32: return f(float{});
    case DType::kF64: return f(double{});
    default: DIRMOE_FAIL("unsupported floating dtype ", dtype_name(t), " (supported: f32, f64)");
  }
}

}  // namespace dirmoe
