// Token dispatch for expert parallelism: plans where each (token, expert) assignment goes (count
// exchange, optional per-expert capacity), moves rows to the experts' owners with all_to_all_v and
// brings results back. The MoE layer uses it for both directions of forward and backward.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "experts/placement.h"
#include "runtime/core/tensor.h"
#include "runtime/core/trace.h"

namespace dirmoe {

// Layouts (rows of `width` elements):
//   send   [S, width]  grouped by (dst rank, dst local expert), assignment order within a group
//   wire   [R, width]  as received: grouped by (src rank, local expert)
//   expert [R, width]  grouped by (local expert, src rank), assignment order within a group;
//                      local expert le owns rows [expert_offset(le), expert_offset(le + 1))
// NOTE: assignments are given in token order, so rows reach every expert in (src rank, token)
// order, and capacity drops the latest tokens first.
template <class T>
class Dispatcher {
 public:
  Dispatcher(const Placement& placement, Communicator* comm);

  // Collective. experts[nnz]: the global expert of each assignment of this rank, in token order.
  // capacity < 0 keeps everything; otherwise at most `capacity` assignments per expert are kept
  // (the first ones), the rest are dropped (never sent).
  void plan(const int32_t* experts, int64_t nnz, int64_t capacity);

  // Collective. Row of assignment a is rows[row_index[a] * width ...] (row_index null: a).
  // out[R, width] receives the expert layout.
  void dispatch(const T* rows, const int64_t* row_index, int64_t width, T* out);
  // Collective. in[R, width] in the expert layout -> out[nnz, width] per assignment of this rank;
  // dropped assignments get zero rows.
  void combine(const T* in, int64_t width, T* out);

  int64_t num_assignments() const { return nnz_; }
  int64_t num_dropped() const { return num_dropped_; }
  bool kept(int64_t a) const { return slot_[a] >= 0; }
  int64_t num_received() const { return num_received_; }
  int num_local_experts() const { return num_local_; }
  int64_t expert_offset(int le) const { return expert_offset_[le]; }
  int64_t expert_rows(int le) const { return expert_offset_[le + 1] - expert_offset_[le]; }
  // Rows this rank sends to / receives from each EP rank in the last plan (for traffic records).
  const std::vector<int64_t>& send_rows() const { return send_rows_; }
  const std::vector<int64_t>& recv_rows() const { return recv_rows_; }
  // MoE layer index written into traffic records (trace::Recorder) while profiling is armed.
  void set_trace_layer(int layer) { trace_layer_ = layer; }

 private:
  void regroup(const T* in, T* out, int64_t width, bool wire_to_expert) const;
  // all_to_all_v with the "all-to-all" phase range and, when armed, a traffic record.
  void exchange(const T* send, const int64_t* send_elems, T* recv, const int64_t* recv_elems,
                const std::vector<int64_t>& sent_rows, int64_t width, trace::Direction dir);

  Placement placement_;
  Communicator* comm_;
  int ep_ = 1;
  int rank_ = 0;
  int max_local_ = 1;
  int num_local_ = 1;
  int trace_layer_ = -1;

  int64_t nnz_ = 0;
  int64_t num_dropped_ = 0;
  int64_t num_received_ = 0;
  bool planned_ = false;
  std::vector<int64_t> slot_;          // [nnz] row in the send layout, -1 when dropped
  std::vector<int64_t> send_counts_;   // [ep * max_local] rows per (dst, dst local expert)
  std::vector<int64_t> recv_counts_;   // [ep * max_local] rows per (src, my local expert)
  std::vector<int64_t> send_rows_;     // [ep]
  std::vector<int64_t> recv_rows_;     // [ep]
  std::vector<int64_t> wire_offset_;   // [ep * max_local] row of block (src, le) in the wire layout
  std::vector<int64_t> block_offset_;  // [ep * max_local] row of block (src, le), expert layout
  std::vector<int64_t> expert_offset_;    // [num_local + 1]
  std::vector<int64_t> kept_per_expert_;  // [E] plan scratch
  std::vector<int64_t> cursor_;           // [ep * max_local] plan scratch
  std::vector<int64_t> send_elems_;       // [ep] all_to_all_v counts in elements
  std::vector<int64_t> recv_elems_;       // [ep]
  Buffer<T> send_buf_;                    // [S, width] grow-only
  Buffer<T> wire_buf_;                    // [R, width] grow-only
};

}  // namespace dirmoe
