// Host tensors: a shape, a non-owning typed view, an owned aligned buffer, and the named parameter
// (value + gradient) that the model, optimizer, all-reduce and checkpoints share.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

namespace dirmoe {

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
  return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<int64_t>());
}
std::string shape_str(const Shape& s);

// Non-owning view of contiguous row-major data.
template <class T>
struct TensorView {
  T* data = nullptr;
  Shape shape;
  int64_t numel() const { return dirmoe::numel(shape); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
};

// Owned, 64-byte aligned, zero-initialised host buffer. Movable, not copyable.
// A std::vector used as grow-only scratch: resized only when n exceeds its size.
template <class V>
void grow_vector(std::vector<V>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n) { resize(n); }
  Buffer(Buffer&&) noexcept = default;
  Buffer& operator=(Buffer&&) noexcept = default;

  void resize(int64_t n) {
    DIRMOE_CHECK(n >= 0, "negative buffer size ", n);
    if (n == size_) return;
    size_t bytes = ((static_cast<size_t>(n) * sizeof(T) + 63) / 64) * 64;
    T* p = bytes ? static_cast<T*>(std::aligned_alloc(64, bytes)) : nullptr;
    DIRMOE_CHECK(bytes == 0 || p != nullptr, "out of host memory allocating ", bytes, " bytes");
    for (int64_t i = 0; i < n; ++i) p[i] = T{};
    ptr_.reset(p);
    size_ = n;
  }
  // Scratch that only grows: reallocates (contents not kept) when n exceeds the size.
  void grow(int64_t n) {
    if (n > size_) resize(n);
  }
  void zero() {
    for (int64_t i = 0; i < size_; ++i) ptr_.get()[i] = T{};
  }
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  int64_t size() const { return size_; }
  T& operator[](int64_t i) { return ptr_.get()[i]; }
  const T& operator[](int64_t i) const { return ptr_.get()[i]; }
  T* begin() { return data(); }
  T* end() { return data() + size_; }
  const T* begin() const { return data(); }
  const T* end() const { return data() + size_; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  int64_t size_ = 0;
};

// A trainable tensor. Expert parameters carry the global expert index they belong to, so names,
// initialisation and checkpoints do not depend on how experts are sharded.
enum class ParamKind : uint8_t { kReplicated, kExpert };

template <class T>
struct Parameter {
  std::string name;  // e.g. "layers.3.moe.experts.5.w1"
  Shape shape;
  ParamKind kind = ParamKind::kReplicated;
  int expert = -1;      // global expert index for kExpert
  bool decay = true;    // weight decay applies (false for norms)
  Buffer<T> value;
  Buffer<T> grad;

  Parameter() = default;
  Parameter(std::string n, Shape s, ParamKind k = ParamKind::kReplicated, int e = -1)
      : name(std::move(n)), shape(std::move(s)), kind(k), expert(e) {
    value.resize(dirmoe::numel(shape));
    grad.resize(dirmoe::numel(shape));
  }
  int64_t numel() const { return dirmoe::numel(shape); }
};

}  // namespace dirmoe
