// Dispatcher: the plan (count exchange, capacity, send slots) and the row movement both ways.
#include "experts/dispatcher.h"

#include <algorithm>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

namespace dirmoe {
template <class T>
Dispatcher<T>::Dispatcher(const Placement& placement, Communicator* comm)
    : placement_(placement), comm_(comm) {
  DIRMOE_CHECK(comm != nullptr, "dispatcher: null EP communicator");
  placement.check_ep_size(comm->size());
  ep_ = comm->size();
  rank_ = comm->rank();
  max_local_ = placement.max_local_experts();
  num_local_ = static_cast<int>(placement.local_experts(rank_).size());
  const size_t groups = static_cast<size_t>(ep_) * max_local_;
  send_counts_.assign(groups, 0);
  recv_counts_.assign(groups, 0);
  wire_offset_.assign(groups, 0);
  block_offset_.assign(groups, 0);
  cursor_.assign(groups, 0);
  send_rows_.assign(ep_, 0);
  recv_rows_.assign(ep_, 0);
  send_elems_.assign(ep_, 0);
  recv_elems_.assign(ep_, 0);
  expert_offset_.assign(num_local_ + 1, 0);
  kept_per_expert_.assign(placement.num_experts(), 0);
}

template <class T>
void Dispatcher<T>::plan(const int32_t* experts, int64_t nnz, int64_t capacity) {
  DIRMOE_CHECK(nnz >= 0 && (nnz == 0 || experts != nullptr), "dispatcher: bad assignment list (",
               nnz, " assignments)");
  const int E = placement_.num_experts();
  nnz_ = nnz;
  num_dropped_ = 0;
  slot_.resize(nnz);
  std::fill(send_counts_.begin(), send_counts_.end(), 0);
  std::fill(kept_per_expert_.begin(), kept_per_expert_.end(), 0);
  for (int64_t a = 0; a < nnz; ++a) {
    const int e = experts[a];
    DIRMOE_CHECK(e >= 0 && e < E, "dispatcher: assignment ", a, " names expert ", e,
                 ", outside [0, ", E, ")");
    if (capacity >= 0 && kept_per_expert_[e] >= capacity) {
      slot_[a] = -1;
      ++num_dropped_;
      continue;
    }
    ++kept_per_expert_[e];
    ++send_counts_[placement_.owner(e) * max_local_ + placement_.local_index(e)];
    slot_[a] = 0;
  }
  int64_t row = 0;
  for (int dst = 0; dst < ep_; ++dst) {
    send_rows_[dst] = 0;
    for (int le = 0; le < max_local_; ++le) {
      const size_t g = static_cast<size_t>(dst) * max_local_ + le;
      cursor_[g] = row;
      row += send_counts_[g];
      send_rows_[dst] += send_counts_[g];
    }
  }
  for (int64_t a = 0; a < nnz; ++a) {
    if (slot_[a] < 0) continue;
    const int e = experts[a];
    slot_[a] = cursor_[placement_.owner(e) * max_local_ + placement_.local_index(e)]++;
  }

  comm_->all_to_all(send_counts_.data(), recv_counts_.data(), max_local_, DType::kI64);

  int64_t wire = 0;
  for (int src = 0; src < ep_; ++src) {
    recv_rows_[src] = 0;
    for (int le = 0; le < max_local_; ++le) {
      const size_t g = static_cast<size_t>(src) * max_local_ + le;
      const int64_t n = recv_counts_[g];
      DIRMOE_CHECK(n >= 0 && (le < num_local_ || n == 0), "dispatcher: rank ", src, " sent ", n,
                   " rows for local expert slot ", le, " but this rank owns ", num_local_,
                   " experts (inconsistent placements across ranks?)");
      wire_offset_[g] = wire;
      wire += n;
      recv_rows_[src] += n;
    }
  }
  num_received_ = wire;
  int64_t off = 0;
  for (int le = 0; le < num_local_; ++le) {
    expert_offset_[le] = off;
    for (int src = 0; src < ep_; ++src) {
      const size_t g = static_cast<size_t>(src) * max_local_ + le;
      block_offset_[g] = off;
      off += recv_counts_[g];
    }
  }
  expert_offset_[num_local_] = off;
  planned_ = true;
}

template <class T>
void Dispatcher<T>::regroup(const T* in, T* out, int64_t width, bool wire_to_expert) const {
  for (int src = 0; src < ep_; ++src) {
    for (int le = 0; le < num_local_; ++le) {
      const size_t g = static_cast<size_t>(src) * max_local_ + le;
      const int64_t n = recv_counts_[g] * width;
      if (n == 0) continue;
      const int64_t w = wire_offset_[g] * width, b = block_offset_[g] * width;
      if (wire_to_expert) {
        std::copy(in + w, in + w + n, out + b);
      } else {
        std::copy(in + b, in + b + n, out + w);
      }
    }
  }
}

template <class T>
void Dispatcher<T>::exchange(const T* send, const int64_t* send_elems, T* recv,
                             const int64_t* recv_elems, const std::vector<int64_t>& sent_rows,
                             int64_t width, trace::Direction dir) {
  trace::recorded_exchange(
      trace_layer_, dir, sent_rows, width * static_cast<int64_t>(sizeof(T)),
      [&] { comm_->all_to_all_v(send, send_elems, recv, recv_elems, dtype_of<T>()); }, [] {});
}

template <class T>
void Dispatcher<T>::dispatch(const T* rows, const int64_t* row_index, int64_t width, T* out) {
  DIRMOE_CHECK(planned_, "dispatcher: dispatch before plan");
  DIRMOE_CHECK(width >= 1, "dispatcher: row width must be >= 1, got ", width);
  const int64_t num_send = nnz_ - num_dropped_;
  send_buf_.grow(num_send * width);
  wire_buf_.grow(num_received_ * width);
  T* send = send_buf_.data();
  {
    trace::Scope scope(trace::Phase::kPermute);
    for (int64_t a = 0; a < nnz_; ++a) {
      if (slot_[a] < 0) continue;
      const T* src = rows + (row_index ? row_index[a] : a) * width;
      std::copy(src, src + width, send + slot_[a] * width);
    }
  }
  for (int r = 0; r < ep_; ++r) {
    send_elems_[r] = send_rows_[r] * width;
    recv_elems_[r] = recv_rows_[r] * width;
  }
  exchange(send, send_elems_.data(), wire_buf_.data(), recv_elems_.data(), send_rows_, width,
           trace::Direction::kDispatch);
  trace::Scope scope(trace::Phase::kPermute);
  regroup(wire_buf_.data(), out, width, /*wire_to_expert=*/true);
}

template <class T>
void Dispatcher<T>::combine(const T* in, int64_t width, T* out) {
  DIRMOE_CHECK(planned_, "dispatcher: combine before plan");
  DIRMOE_CHECK(width >= 1, "dispatcher: row width must be >= 1, got ", width);
  const int64_t num_send = nnz_ - num_dropped_;
  send_buf_.grow(num_send * width);
  wire_buf_.grow(num_received_ * width);
  {
    trace::Scope scope(trace::Phase::kPermute);
    regroup(in, wire_buf_.data(), width, /*wire_to_expert=*/false);
  }
  for (int r = 0; r < ep_; ++r) {
    send_elems_[r] = send_rows_[r] * width;
    recv_elems_[r] = recv_rows_[r] * width;
  }
  exchange(wire_buf_.data(), recv_elems_.data(), send_buf_.data(), send_elems_.data(), recv_rows_,
           width, trace::Direction::kCombine);
  trace::Scope scope(trace::Phase::kPermute);
  const T* back = send_buf_.data();
  for (int64_t a = 0; a < nnz_; ++a) {
    T* dst = out + a * width;
    if (slot_[a] < 0) {
      std::fill(dst, dst + width, T{});
    } else {
      std::copy(back + slot_[a] * width, back + (slot_[a] + 1) * width, dst);
    }
  }
}

template class Dispatcher<float>;
template class Dispatcher<double>;

}  // namespace dirmoe
