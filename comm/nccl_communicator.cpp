// NCCL communicator: MPI bootstrap of the unique id, grouped send/recv all-to-all-v, collectives on
// device buffers, and the watchdog (FACTS.md, failure handling) that turns NCCL errors and hangs
// into an abort naming rank, communicator, operation and sequence number.
// NOTE: the main thread calls NCCL on a communicator only under its state mutex and only while it
// is not aborted, so the watchdog can ncclCommAbort from its own thread at any time.
#include "comm/nccl_communicator.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/bootstrap.h"
#include "runtime/core/cuda_check.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

namespace dirmoe {

using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(5);

struct Pending {
  uint64_t seq = 0;
  const char* op = "";
  cudaEvent_t event = nullptr;  // recorded on the stream right after the operation
  Clock::time_point issued;
};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string nccl_text(ncclResult_t r) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') s += std::string(": ") + last;
  return s;
}

ncclDataType_t reduce_type(DType t) {
  switch (t) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    case DType::kU8:
      return ncclUint8;
    default:
      DIRMOE_FAIL("NCCL cannot reduce dtype ", dtype_name(t));
  }
}

ncclRedOp_t reduce_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  DIRMOE_FAIL("unknown reduce op");
}

}  // namespace

// Shared by a communicator and the watchdog.
struct NcclState {
  ncclComm_t comm = nullptr;
  std::string name;
  int rank = 0, size = 1, device = 0;
  double timeout_s = 600.0;
  bool abort_job = true;

  std::mutex mu;                         // guards everything below and NCCL calls on comm
  std::deque<Pending> pending;           // issued, not yet seen complete, in issue order
  std::vector<cudaEvent_t> free_events;  // recycled completion events
  bool aborted = false;                  // ncclCommAbort (or destroy) done: comm is gone
  std::string failure;                   // why, once failed
  std::atomic<bool> failed{false};       // set before the abort, read without the mutex
};

namespace {

std::string describe(const NcclState& s, const char* op, uint64_t seq, const std::string& what) {
  std::string msg = "NCCL watchdog: ";
  if (!error_context().empty()) msg += "[" + error_context() + "] ";
  msg += "communicator '" + s.name + "' rank " + std::to_string(s.rank) + "/" +
         std::to_string(s.size) + " (device " + std::to_string(s.device) + "): " + op + " #" +
         std::to_string(seq) + " " + what;
  return msg;
}

// Aborts under the state's mutex; the caller holds it. Returns whether the job should end.
bool abort_locked(NcclState& s, const std::string& why) {
  if (s.aborted) return false;
  s.failure = why;
  s.failed = true;
  if (s.comm != nullptr) (void)ncclCommAbort(s.comm);
  s.aborted = true;
  return s.abort_job;
}

class Watchdog {
 public:
  static Watchdog& get() {
    static Watchdog w;
    return w;
  }

  void add(const std::shared_ptr<NcclState>& s) {
    std::lock_guard<std::mutex> lk(mu_);
    states_.push_back(s);
    if (!thread_.joinable()) {
      stop_ = false;
      thread_ = std::thread([this] { loop(); });
    }
  }

  void remove(const NcclState* s) {
    std::thread done;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (size_t i = 0; i < states_.size(); ++i) {
        if (states_[i].get() == s) {
          states_.erase(states_.begin() + static_cast<std::ptrdiff_t>(i));
          break;
        }
      }
      if (states_.empty() && thread_.joinable()) {
        stop_ = true;
        done = std::move(thread_);
      }
    }
    if (done.joinable()) done.join();
  }

  // Aborts every communicator of the process (the culprit too, registered or not), prints msg and,
  // when any of them asks for it, ends the job.
  void fail_all(NcclState* culprit, const std::string& msg) {
    std::vector<std::shared_ptr<NcclState>> states;
    {
      std::lock_guard<std::mutex> lk(mu_);
      states = states_;
    }
    bool end_job = false;
    {
      std::lock_guard<std::mutex> lk(culprit->mu);
      end_job |= abort_locked(*culprit, msg);
    }
    for (auto& s : states) {
      if (s.get() == culprit) continue;
      std::lock_guard<std::mutex> lk(s->mu);
      end_job |= abort_locked(
          *s, "NCCL communicator '" + s->name + "' aborted because another one failed: " + msg);
    }
    std::fprintf(stderr, "%s\n", msg.c_str());
    std::fflush(stderr);
    if (end_job) abort_job(3);
  }

 private:
  Watchdog() = default;
  ~Watchdog() {
    if (!thread_.joinable()) return;
    stop_ = true;
    // exit() after a failure may run this destructor on the watchdog thread itself.
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();
    } else {
      thread_.join();
    }
  }

  void loop() {
    int current_device = -1;
    while (!stop_) {
      std::vector<std::shared_ptr<NcclState>> states;
      {
        std::lock_guard<std::mutex> lk(mu_);
        states = states_;
      }
      for (auto& s : states) {
        std::string msg = check(*s, current_device);
        if (!msg.empty()) fail_all(s.get(), msg);
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  // Retires completed operations; returns a failure message, or empty.
  static std::string check(NcclState& s, int& current_device) {
    std::lock_guard<std::mutex> lk(s.mu);
    if (s.aborted) return {};
    if (current_device != s.device) {
      (void)cudaSetDevice(s.device);
      current_device = s.device;
    }
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(s.comm, &async);
    const ncclResult_t bad = r != ncclSuccess ? r : async;
    if (bad != ncclSuccess && bad != ncclInProgress) {
      const Pending* p = s.pending.empty() ? nullptr : &s.pending.front();
      return describe(s, p ? p->op : "(between operations)", p ? p->seq : 0,
                      "failed: " + nccl_text(bad));
    }
    while (!s.pending.empty()) {
      Pending& p = s.pending.front();
      const cudaError_t q = cudaEventQuery(p.event);
      if (q == cudaSuccess) {
        s.free_events.push_back(p.event);
        s.pending.pop_front();
        continue;
      }
      if (q == cudaErrorNotReady) {
        const double age = seconds_since(p.issued);
        if (age > s.timeout_s) {
          char buf[128];
          std::snprintf(buf, sizeof(buf), "did not complete within %.1f s (age %.1f s)",
                        s.timeout_s, age);
          return describe(s, p.op, p.seq, buf);
        }
        break;
      }
      (void)cudaGetLastError();
      return describe(s, p.op, p.seq, std::string("failed: CUDA ") + cudaGetErrorString(q));
    }
    return {};
  }

  std::mutex mu_;
  std::vector<std::shared_ptr<NcclState>> states_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

// A failure found on the calling thread: abort everything; throw (the job may already be ending).
[[noreturn]] void fail(NcclState& s, const std::string& msg) {
  Watchdog::get().fail_all(&s, msg);
  DIRMOE_FAIL(msg);
}

// Non-blocking NCCL: while r is ncclInProgress, poll the communicator until it settles (or the
// timeout passes, which fails everything). Returns the settled result.
ncclResult_t settle(NcclState& s, ncclResult_t r, const char* op, uint64_t seq) {
  const Clock::time_point start = Clock::now();
  while (r == ncclInProgress) {
    {
      std::lock_guard<std::mutex> lk(s.mu);
      if (s.aborted) DIRMOE_FAIL(s.failure);
      ncclResult_t async = ncclSuccess;
      const ncclResult_t q = ncclCommGetAsyncError(s.comm, &async);
      r = q != ncclSuccess ? q : async;
    }
    if (r != ncclInProgress) break;
    if (seconds_since(start) > s.timeout_s) {
      char buf[128];
      std::snprintf(buf, sizeof(buf), "stayed in progress for more than %.1f s", s.timeout_s);
      fail(s, describe(s, op, seq, buf));
    }
    std::this_thread::yield();
  }
  return r;
}

}  // namespace

int select_device(int local_rank, int local_size, int num_devices, bool allow_shared_gpu) {
  DIRMOE_CHECK(local_size >= 1 && local_rank >= 0 && local_rank < local_size,
               "bad node-local rank ", local_rank, " of ", local_size);
  DIRMOE_CHECK(num_devices > 0, "no CUDA device is visible to this process (", local_size,
               " rank(s) on this node)");
  DIRMOE_CHECK(local_size <= num_devices || allow_shared_gpu, local_size,
               " ranks on this node but only ", num_devices,
               " CUDA device(s): start at most one rank per GPU (sharing a GPU needs the explicit "
               "allow_shared_gpu option, meant for tests)");
  return local_rank % num_devices;
}

ncclUniqueId broadcast_unique_id(MPI_Comm comm, int root) {
  int rank = 0, size = 1;
  DIRMOE_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  DIRMOE_MPI_CHECK(MPI_Comm_size(comm, &size));
  DIRMOE_CHECK(root >= 0 && root < size, "unique-id root ", root, " outside [0, ", size, ")");
  struct {
    ncclUniqueId id;
    int32_t ok;
  } msg;
  std::memset(&msg, 0, sizeof(msg));
  std::string error;
  if (rank == root) {
    const ncclResult_t r = ncclGetUniqueId(&msg.id);
    msg.ok = r == ncclSuccess ? 1 : 0;
    if (r != ncclSuccess) error = nccl_text(r);
  }
  DIRMOE_MPI_CHECK(MPI_Bcast(&msg, sizeof(msg), MPI_BYTE, root, comm));
  DIRMOE_CHECK(msg.ok == 1, "ncclGetUniqueId failed on rank ", root,
               error.empty() ? std::string() : ": " + error);
  return msg.id;
}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(MPI_Comm mpi_comm,
                                                           const std::string& name,
                                                           const NcclOptions& options,
                                                           cudaStream_t stream) {
  int rank = 0, size = 1, local_rank = 0, local_size = 1;
  DIRMOE_MPI_CHECK(MPI_Comm_rank(mpi_comm, &rank));
  DIRMOE_MPI_CHECK(MPI_Comm_size(mpi_comm, &size));
  MPI_Comm node_comm;
  DIRMOE_MPI_CHECK(
      MPI_Comm_split_type(mpi_comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node_comm));
  DIRMOE_MPI_CHECK(MPI_Comm_rank(node_comm, &local_rank));
  DIRMOE_MPI_CHECK(MPI_Comm_size(node_comm, &local_size));
  MPI_Comm_free(&node_comm);

  // Device choice is agreed on collectively, so that no rank is left waiting in the bootstrap.
  int num_devices = 0;
  if (cudaGetDeviceCount(&num_devices) != cudaSuccess) {
    (void)cudaGetLastError();
    num_devices = 0;
  }
  int device = -1;
  std::string device_error;
  try {
    device = select_device(local_rank, local_size, num_devices, options.allow_shared_gpu);
  } catch (const Error& e) {
    device_error = e.what();
  }
  int ok = device_error.empty() ? 1 : 0;
  DIRMOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, mpi_comm));
  DIRMOE_CHECK(ok == 1, "NCCL communicator '", name, "': ",
               device_error.empty() ? "device selection failed on another rank" : device_error);
  DIRMOE_CUDA_CHECK(cudaSetDevice(device));

  const ncclUniqueId id = broadcast_unique_id(mpi_comm, 0);
  auto state = std::make_shared<NcclState>();
  state->name = name;
  state->rank = rank;
  state->size = size;
  state->device = device;
  state->timeout_s = options.timeout_s;
  state->abort_job = options.abort_job;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&state->comm, size, id, rank, &config);
  if (r == ncclInProgress && state->comm == nullptr) {
    DIRMOE_FAIL("ncclCommInitRankConfig returned in progress without a communicator");
  }
  r = settle(*state, r, "init", 0);
  if (r != ncclSuccess) fail(*state, describe(*state, "init", 0, "failed: " + nccl_text(r)));

  bool owns_stream = false;
  if (stream == nullptr) {
    DIRMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    owns_stream = true;
  }
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(
      std::move(state), name, rank, size, device, stream, owns_stream, options));
}

NcclCommunicator::NcclCommunicator(std::shared_ptr<NcclState> state, std::string name, int rank,
                                   int size, int device, cudaStream_t stream, bool owns_stream,
                                   const NcclOptions& options)
    : state_(std::move(state)),
      name_(std::move(name)),
      rank_(rank),
      size_(size),
      device_(device),
      stream_(stream),
      owns_stream_(owns_stream),
      options_(options) {
  void* p = nullptr;
  DIRMOE_CUDA_CHECK(cudaMalloc(&p, sizeof(int32_t)));
  d_word_ = static_cast<int32_t*>(p);
  Watchdog::get().add(state_);
}

NcclCommunicator::~NcclCommunicator() {
  Watchdog::get().remove(state_.get());
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (!state_->aborted && state_->comm != nullptr) {
      (void)cudaSetDevice(device_);
      // Finalize flushes outstanding work; a peer that never joins would hang it, so it runs under
      // the same timeout and falls back to an abort.
      ncclResult_t r = ncclCommFinalize(state_->comm);
      const Clock::time_point start = Clock::now();
      while (r == ncclInProgress && seconds_since(start) < state_->timeout_s) {
        std::this_thread::yield();
        ncclResult_t async = ncclSuccess;
        const ncclResult_t q = ncclCommGetAsyncError(state_->comm, &async);
        r = q != ncclSuccess ? q : async;
      }
      if (r == ncclSuccess) {
        (void)ncclCommDestroy(state_->comm);
      } else {
        (void)ncclCommAbort(state_->comm);
      }
      state_->aborted = true;
    }
    for (auto& p : state_->pending) (void)cudaEventDestroy(p.event);
    for (cudaEvent_t e : state_->free_events) (void)cudaEventDestroy(e);
    state_->pending.clear();
    state_->free_events.clear();
  }
  if (d_word_ != nullptr) (void)cudaFree(d_word_);
  if (owns_stream_) (void)cudaStreamDestroy(stream_);
}

ncclComm_t NcclCommunicator::nccl_comm() const { return state_->comm; }

template <class Enqueue>
void NcclCommunicator::issue(const char* op, Enqueue&& enqueue) {
  const uint64_t seq = ++seq_;
  ncclResult_t r = ncclSuccess;
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (state_->failed) DIRMOE_FAIL(state_->failure);
    r = enqueue(state_->comm);
  }
  r = settle(*state_, r, op, seq);
  if (r != ncclSuccess) fail(*state_, describe(*state_, op, seq, "failed: " + nccl_text(r)));
  std::lock_guard<std::mutex> lk(state_->mu);
  cudaEvent_t ev = nullptr;
  if (!state_->free_events.empty()) {
    ev = state_->free_events.back();
    state_->free_events.pop_back();
  } else {
    DIRMOE_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  }
  DIRMOE_CUDA_CHECK(cudaEventRecord(ev, stream_));
  state_->pending.push_back(Pending{seq, op, ev, Clock::now()});
}

void NcclCommunicator::all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                                    const int64_t* recv_counts, DType dtype) {
  const size_t es = dtype_size(dtype);
  int64_t total = 0;
  for (int r = 0; r < size_; ++r) {
    DIRMOE_CHECK(send_counts[r] >= 0 && recv_counts[r] >= 0, "all_to_all_v on '", name_,
                 "': negative count for rank ", r);
    total += send_counts[r] + recv_counts[r];
  }
  if (total == 0) return;
  issue("all_to_all_v", [&](ncclComm_t comm) {
    ncclResult_t first = ncclGroupStart();
    const char* s = static_cast<const char*>(send);
    char* d = static_cast<char*>(recv);
    for (int r = 0; r < size_ && first == ncclSuccess; ++r) {
      const size_t sb = static_cast<size_t>(send_counts[r]) * es;
      const size_t rb = static_cast<size_t>(recv_counts[r]) * es;
      ncclResult_t q = ncclSuccess;
      if (sb > 0) q = ncclSend(s, sb, ncclUint8, r, comm, stream_);
      if (q == ncclSuccess && rb > 0) q = ncclRecv(d, rb, ncclUint8, r, comm, stream_);
      if (q != ncclSuccess && q != ncclInProgress) first = q;
      s += sb;
      d += rb;
    }
    const ncclResult_t end = ncclGroupEnd();
    return first != ncclSuccess ? first : end;
  });
}

void NcclCommunicator::all_to_all(const void* send, void* recv, int64_t count, DType dtype) {
  DIRMOE_CHECK(count >= 0, "all_to_all on '", name_, "': negative count ", count);
  std::vector<int64_t> counts(static_cast<size_t>(size_), count);
  all_to_all_v(send, counts.data(), recv, counts.data(), dtype);
}

void NcclCommunicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
  DIRMOE_CHECK(count >= 0, "all_reduce on '", name_, "': negative count ", count);
  if (count == 0) return;
  const ncclDataType_t type = reduce_type(dtype);
  const ncclRedOp_t rop = reduce_op(op);
  issue("all_reduce", [&](ncclComm_t comm) {
    return ncclAllReduce(buf, buf, static_cast<size_t>(count), type, rop, comm, stream_);
  });
}

void NcclCommunicator::all_gather(const void* send, void* recv, int64_t count, DType dtype) {
  DIRMOE_CHECK(count >= 0, "all_gather on '", name_, "': negative count ", count);
  if (count == 0) return;
  const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
  issue("all_gather", [&](ncclComm_t comm) {
    return ncclAllGather(send, recv, bytes, ncclUint8, comm, stream_);
  });
}

void NcclCommunicator::broadcast(void* buf, int64_t count, DType dtype, int root) {
  DIRMOE_CHECK(count >= 0, "broadcast on '", name_, "': negative count ", count);
  DIRMOE_CHECK(root >= 0 && root < size_, "broadcast on '", name_, "': root ", root,
               " outside [0, ", size_, ")");
  if (count == 0) return;
  const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
  issue("broadcast", [&](ncclComm_t comm) {
    return ncclBroadcast(buf, buf, bytes, ncclUint8, root, comm, stream_);
  });
}

void NcclCommunicator::barrier() {
  all_reduce(d_word_, 1, DType::kI32, ReduceOp::kSum);
  synchronize();
}

void NcclCommunicator::synchronize() {
  for (;;) {
    if (state_->failed) {
      std::lock_guard<std::mutex> lk(state_->mu);
      DIRMOE_FAIL(state_->failure);
    }
    const cudaError_t q = cudaStreamQuery(stream_);
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady) DIRMOE_CUDA_CHECK(q);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  // An abort also ends the stuck kernels, so a finished stream can still mean failure.
  if (state_->failed) {
    std::lock_guard<std::mutex> lk(state_->mu);
    DIRMOE_FAIL(state_->failure);
  }
}

void NcclCommunicator::abort() {
  std::lock_guard<std::mutex> lk(state_->mu);
  abort_locked(*state_, "NCCL communicator '" + name_ + "' was aborted by its owner");
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key,
                                                      const std::string& name) const {
  auto child = std::make_shared<NcclState>();
  child->name = name;
  child->device = device_;
  child->timeout_s = options_.timeout_s;
  child->abort_job = options_.abort_job;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclSuccess;
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (state_->failed) DIRMOE_FAIL(state_->failure);
    r = ncclCommSplit(state_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child->comm,
                      &config);
  }
  // The child settles when created; the parent must settle too before it is used again.
  const ncclResult_t rc = child->comm != nullptr ? settle(*child, r, "split", seq_) : r;
  const ncclResult_t rp = settle(*state_, r, "split", seq_);
  r = rc != ncclSuccess ? rc : rp;
  if (r != ncclSuccess) {
    fail(*state_, describe(*state_, "split", seq_, "failed: " + nccl_text(r)));
  }
  if (color < 0 || child->comm == nullptr) return nullptr;
  int rank = 0, size = 1;
  DIRMOE_NCCL_CHECK(ncclCommUserRank(child->comm, &rank));
  DIRMOE_NCCL_CHECK(ncclCommCount(child->comm, &size));
  child->rank = rank;
  child->size = size;
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(std::move(child), name, rank, size, device_, stream_, false, options_));
}

}  // namespace dirmoe
