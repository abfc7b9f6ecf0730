// `dirmoe bench a2a`: the MoE token exchange on GPUs. One dispatch + combine is the GPU MoE layer's
// own sequence (experts/moe_layer_cuda.cpp) with identity experts: moe_plan, the counts to the host
// and across the EP group over MPI, moe_permute, NCCL all_to_all_v, moe_regroup to the expert
// layout and back, all_to_all_v back, moe_unpermute_combine. It is timed per phase with CUDA events
// against the bare grouped send/recv of the same byte matrix, and checked once against a closed
// form.
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "comm/bootstrap.h"
#include "comm/nccl_communicator.h"
#include "experts/placement.h"
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/device_buffer.h"
#include "launch/bench_a2a_host.h"
#include "launch/commands.h"
#include "runtime/core/cuda_check.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

// Events of one dispatch + combine, in stream order:
// 0 plan, counts D2H, count all-to-all (host, MPI), recv counts H2D  1 permute  2 all_to_all_v
// 3 regroup to the expert layout  4 regroup back  5 all_to_all_v back  6 un-permute + combine  7
constexpr int kNumEvents = 8;

class Events {
 public:
  Events() {
    for (cudaEvent_t& e : e_) DIRMOE_CUDA_CHECK(cudaEventCreate(&e));
  }
  ~Events() {
    for (cudaEvent_t e : e_) (void)cudaEventDestroy(e);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  void record(int i, cudaStream_t stream) { DIRMOE_CUDA_CHECK(cudaEventRecord(e_[i], stream)); }
  double ms(int from, int to) const {
    float v = 0;
    DIRMOE_CUDA_CHECK(cudaEventElapsedTime(&v, e_[from], e_[to]));
    return v;
  }

 private:
  std::array<cudaEvent_t, kNumEvents> e_{};
};

enum Phase {
  kCount,
  kPermute,
  kExchange,
  kCombine,
  kTotal,
  kRaw,
  kRawDispatch,
  kRawCombine,
  kNumPhases
};
constexpr std::array<const char*, kNumPhases> kPhaseKeys = {
    "count", "permute", "exchange", "combine", "total", "raw", "raw_dispatch", "raw_combine"};

// mean and min over the samples of each phase, then the max of each over ranks.
std::array<double, 2 * kNumPhases> reduce_samples(
    const std::vector<std::array<double, kNumPhases>>& samples, Communicator& host) {
  std::array<double, 2 * kNumPhases> out{};
  for (int p = 0; p < kNumPhases; ++p) {
    double sum = 0, lo = samples.empty() ? 0 : samples[0][p];
    for (const auto& s : samples) {
      sum += s[p];
      lo = std::min(lo, s[p]);
    }
    out[p] = samples.empty() ? 0 : sum / static_cast<double>(samples.size());
    out[kNumPhases + p] = lo;
  }
  host.all_reduce(out.data(), static_cast<int64_t>(out.size()), DType::kF64, ReduceOp::kMax);
  return out;
}

template <class T>
int bench(const BenchA2aOptions& opt, Communicator& host, NcclCommunicator& dev,
          const std::string& device_name) {
  const int rank = host.rank(), ep = host.size(), E = opt.experts;
  const int64_t N = opt.tokens, d = opt.hidden;
  constexpr bool kBf16 = !std::is_same_v<T, float>;
  const DType dtype = kBf16 ? DType::kBF16 : DType::kF32;
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(T));
  cudaStream_t st = dev.stream();
  const Placement placement = Placement::contiguous(E, ep);
  const int max_local = placement.max_local_experts();
  const std::vector<int>& mine = placement.local_experts(rank);
  const int num_local = static_cast<int>(mine.size());

  // Routing and the byte matrix it implies, from the host alone.
  const SyntheticRouting routing = synthetic_routing(opt.seed, rank, N, E, opt.top_k, opt.skew);
  const int64_t nnz = static_cast<int64_t>(routing.experts.size());
  const std::vector<int64_t> ref_counts = dispatch_counts(routing, placement);
  const std::vector<int64_t> ref_rows = rows_per_peer(ref_counts, ep, max_local);
  std::vector<int64_t> matrix(static_cast<size_t>(ep) * ep);  // [src, dst] rows
  host.all_gather(ref_rows.data(), matrix.data(), ep, DType::kI64);
  std::vector<int64_t> ref_recv_counts(ref_counts.size());
  host.all_to_all(ref_counts.data(), ref_recv_counts.data(), max_local, DType::kI64);
  const int64_t kept = nnz;  // dropless
  int64_t R = 0;
  for (int s = 0; s < ep; ++s) R += matrix[static_cast<size_t>(s) * ep + rank];

  // Device side, all allocated here.
  std::vector<int32_t> owner(static_cast<size_t>(E)), local(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) {
    owner[static_cast<size_t>(e)] = placement.owner(e);
    local[static_cast<size_t>(e)] = placement.local_index(e);
  }
  cuda::DeviceBuffer<int32_t> d_owner, d_local, d_experts;
  d_owner.upload(owner);
  d_local.upload(local);
  d_experts.upload(routing.experts);
  cuda::DeviceBuffer<int64_t> d_offsets, d_slot(nnz), d_counts(ep * max_local),
      d_recv_counts(ep * max_local);
  d_offsets.upload(routing.offsets);
  cuda::DeviceBuffer<float> d_weights;
  d_weights.upload(routing.weights);
  const size_t scratch = cuda::moe_plan_scratch_bytes(nnz, ep, max_local);
  cuda::DeviceBuffer<uint8_t> d_scratch(static_cast<int64_t>(std::max<size_t>(scratch, 1)));
  cuda::DeviceBuffer<T> x(N * d), y(N * d);                    // [N, d] token order
  cuda::DeviceBuffer<T> send(std::max<int64_t>(kept * d, 1));  // [kept, d] send layout
  cuda::DeviceBuffer<T> back(std::max<int64_t>(kept * d, 1));  // [kept, d] send layout
  cuda::DeviceBuffer<T> wire(std::max<int64_t>(R * d, 1));     // [R, d] wire layout
  cuda::DeviceBuffer<T> xe(std::max<int64_t>(R * d, 1));       // [R, d] expert layout
  cuda::DeviceBuffer<float> d_f(N * d);                        // [N, d] fp32 staging
  std::vector<float> h_x(static_cast<size_t>(N * d));
  for (int64_t t = 0; t < N; ++t)
    for (int64_t c = 0; c < d; ++c)
      h_x[static_cast<size_t>(t * d + c)] = payload_value(opt.seed, rank, t, c);
  d_f.upload(h_x);
  DIRMOE_CUDA_CHECK(cudaDeviceSynchronize());
  cuda::convert<float, T>(x.data(), d_f.data(), N * d, st);
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));

  std::vector<int64_t> counts(ref_counts.size()), recv_counts(ref_counts.size());
  std::vector<int64_t> send_elems(static_cast<size_t>(ep)), recv_elems(static_cast<size_t>(ep));
  std::vector<int64_t> send_bytes(static_cast<size_t>(ep)), recv_bytes(static_cast<size_t>(ep));
  std::vector<int64_t> expert_offset(static_cast<size_t>(num_local) + 1, 0);
  Events ev;

  // One dispatch + combine; `check`: expert e multiplies its rows by (1 + e).
  const auto dispatch_combine = [&](bool check) {
    ev.record(0, st);
    cuda::moe_plan(d_counts.data(), d_slot.data(), d_experts.data(), nnz, d_owner.data(),
                   d_local.data(), E, ep, max_local, /*capacity=*/-1, nullptr, d_scratch.data(),
                   scratch, st);
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(counts.data(), d_counts.data(),
                                      counts.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, st));
    DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));
    host.all_to_all(counts.data(), recv_counts.data(), max_local, DType::kI64);
    int64_t sent = 0, received = 0;
    for (int p = 0; p < ep; ++p) {
      int64_t s = 0, r = 0;
      for (int le = 0; le < max_local; ++le) {
        s += counts[static_cast<size_t>(p) * max_local + le];
        r += recv_counts[static_cast<size_t>(p) * max_local + le];
      }
      send_elems[static_cast<size_t>(p)] = s * d;
      recv_elems[static_cast<size_t>(p)] = r * d;
      sent += s;
      received += r;
    }
    // NOTE: the buffers were sized from the host's counts; the device's must agree to be used.
    DIRMOE_CHECK(sent == kept && received == R, "bench a2a: rank ", rank,
                 ": the device plan sends ", sent, " rows and receives ", received,
                 ", the host routing says ", kept, " and ", R);
    for (int le = 0; le < num_local; ++le) {
      int64_t rows = 0;
      for (int p = 0; p < ep; ++p) rows += recv_counts[static_cast<size_t>(p) * max_local + le];
      expert_offset[static_cast<size_t>(le) + 1] = expert_offset[static_cast<size_t>(le)] + rows;
    }
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(d_recv_counts.data(), recv_counts.data(),
                                      recv_counts.size() * sizeof(int64_t), cudaMemcpyHostToDevice,
                                      st));
    ev.record(1, st);
    cuda::moe_permute(send.data(), x.data(), d_offsets.data(), d_slot.data(), N, d, st);
    ev.record(2, st);
    dev.all_to_all_v(send.data(), send_elems.data(), wire.data(), recv_elems.data(), dtype);
    ev.record(3, st);
    if (R > 0)
      cuda::moe_regroup(xe.data(), wire.data(), d_recv_counts.data(), ep, max_local, num_local, d,
                        /*wire_to_expert=*/true, st);
    if (check) {
      for (int le = 0; le < num_local; ++le) {
        const int64_t off = expert_offset[static_cast<size_t>(le)];
        const int64_t n = expert_offset[static_cast<size_t>(le) + 1] - off;
        cuda::scale_inplace<T>(xe.data() + off * d, n * d,
                               static_cast<float>(1 + mine[static_cast<size_t>(le)]), st);
      }
    }
    ev.record(4, st);
    if (R > 0)
      cuda::moe_regroup(wire.data(), xe.data(), d_recv_counts.data(), ep, max_local, num_local, d,
                        /*wire_to_expert=*/false, st);
    ev.record(5, st);
    dev.all_to_all_v(wire.data(), recv_elems.data(), back.data(), send_elems.data(), dtype);
    ev.record(6, st);
    cuda::moe_unpermute_combine(y.data(), back.data(), d_weights.data(), d_offsets.data(),
                                d_slot.data(), N, d, /*accumulate=*/false, st);
    ev.record(7, st);
  };
  const auto start_together = [&] {
    dev.synchronize();
    host.barrier();
  };

  // The check: counts against the host's, every combined value against the closed form.
  y.fill_bytes(0xFF, st);  // NaN sentinels: a row never written fails
  start_together();
  dispatch_combine(true);
  dev.synchronize();
  int64_t wrong[2] = {0, 0};  // count entries, values
  for (size_t i = 0; i < counts.size(); ++i) {
    wrong[0] += counts[i] != ref_counts[i];
    wrong[0] += recv_counts[i] != ref_recv_counts[i];
  }
  cuda::convert<T, float>(d_f.data(), y.data(), N * d, st);
  std::vector<float> h_y(static_cast<size_t>(N * d));
  DIRMOE_CUDA_CHECK(cudaMemcpyAsync(h_y.data(), d_f.data(), h_y.size() * sizeof(float),
                                    cudaMemcpyDeviceToHost, st));
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));
  for (int64_t t = 0; t < N; ++t) {
    const int64_t a0 = routing.offsets[static_cast<size_t>(t)];
    const int64_t k = routing.offsets[static_cast<size_t>(t) + 1] - a0;
    for (int64_t c = 0; c < d; ++c) {
      const size_t i = static_cast<size_t>(t * d + c);
      const float want = expected_combined(h_x[i], routing.experts.data() + a0,
                                           routing.weights.data() + a0, k, kBf16);
      if (h_y[i] == want) continue;
      if (wrong[1] == 0)
        std::fprintf(stderr,
                     "bench a2a: rank %d: first wrong value at token %ld column %ld: %g, "
                     "expected %g\n",
                     rank, static_cast<long>(t), static_cast<long>(c), static_cast<double>(h_y[i]),
                     static_cast<double>(want));
      ++wrong[1];
    }
  }
  host.all_reduce(wrong, 2, DType::kI64, ReduceOp::kSum);

  // Timed: dispatch + combine, then the bare exchange of the same bytes, both after warm-up.
  std::vector<std::array<double, kNumPhases>> samples, raw_samples;
  for (int it = 0; it < opt.warmup + opt.iters; ++it) {
    start_together();
    dispatch_combine(false);
    dev.synchronize();
    if (it < opt.warmup) continue;
    std::array<double, kNumPhases> s{};
    s[kCount] = ev.ms(0, 1);
    s[kPermute] = ev.ms(1, 2) + ev.ms(3, 4);
    s[kExchange] = ev.ms(2, 3) + ev.ms(5, 6);
    s[kCombine] = ev.ms(4, 5) + ev.ms(6, 7);
    s[kTotal] = ev.ms(0, 7);
    samples.push_back(s);
  }
  for (int p = 0; p < ep; ++p) {
    send_bytes[static_cast<size_t>(p)] = send_elems[static_cast<size_t>(p)] / d * row_bytes;
    recv_bytes[static_cast<size_t>(p)] = recv_elems[static_cast<size_t>(p)] / d * row_bytes;
  }
  for (int it = 0; it < opt.warmup + opt.iters; ++it) {
    start_together();
    ev.record(0, st);
    dev.all_to_all_v(send.data(), send_bytes.data(), wire.data(), recv_bytes.data(), DType::kU8);
    ev.record(1, st);
    dev.all_to_all_v(wire.data(), recv_bytes.data(), back.data(), send_bytes.data(), DType::kU8);
    ev.record(2, st);
    dev.synchronize();
    if (it < opt.warmup) continue;
    std::array<double, kNumPhases> s{};
    s[kRaw] = ev.ms(0, 2);
    s[kRawDispatch] = ev.ms(0, 1);
    s[kRawCombine] = ev.ms(1, 2);
    raw_samples.push_back(s);
  }
  for (size_t i = 0; i < samples.size(); ++i) {
    samples[i][kRaw] = raw_samples[i][kRaw];
    samples[i][kRawDispatch] = raw_samples[i][kRawDispatch];
    samples[i][kRawCombine] = raw_samples[i][kRawCombine];
  }
  const std::array<double, 2 * kNumPhases> ms = reduce_samples(samples, host);
  const auto mean = [&](int p) { return ms[static_cast<size_t>(p)]; };
  const auto lo = [&](int p) { return ms[static_cast<size_t>(kNumPhases + p)]; };

  if (rank == 0) {
    const double mib = 1024.0 * 1024.0;
    std::printf(
        "bench a2a: %d rank(s), ep %d, %ld tokens/rank x hidden %ld (%s, %ld B/row), %d experts "
        "(%d/rank), top-k %d, skew %g, seed %llu, %d timed iterations after %d warm-up\n",
        ep, ep, static_cast<long>(N), static_cast<long>(d), kBf16 ? "bf16" : "f32",
        static_cast<long>(row_bytes), E, max_local, opt.top_k, opt.skew,
        static_cast<unsigned long long>(opt.seed), opt.iters, opt.warmup);
    std::printf("device: %s\n", device_name.c_str());
    std::printf(
        "byte matrix of the dispatch (the combine sends its transpose), per peer, self "
        "included:\n");
    for (int r = 0; r < ep; ++r) {
      std::vector<int64_t> row(matrix.begin() + static_cast<std::ptrdiff_t>(r) * ep,
                               matrix.begin() + static_cast<std::ptrdiff_t>(r + 1) * ep);
      std::vector<int64_t> col = column(matrix, ep, r);
      for (int64_t& v : row) v *= row_bytes;
      for (int64_t& v : col) v *= row_bytes;
      const PeerSummary s = summarize(row), c = summarize(col);
      std::printf(
          "  rank %d: send min/mean/max %.3f/%.3f/%.3f MiB (total %.3f) | receive "
          "min/mean/max %.3f/%.3f/%.3f MiB (total %.3f)\n",
          r, s.min / mib, s.mean / mib, s.max / mib, s.total / mib, c.min / mib, c.mean / mib,
          c.max / mib, c.total / mib);
      std::printf(
          "[ a2a     ] matrix rank=%d send_min=%ld send_mean=%.0f send_max=%ld "
          "send_total=%ld recv_min=%ld recv_mean=%.0f recv_max=%ld recv_total=%ld\n",
          r, static_cast<long>(s.min), s.mean, static_cast<long>(s.max), static_cast<long>(s.total),
          static_cast<long>(c.min), c.mean, static_cast<long>(c.max), static_cast<long>(c.total));
    }
    std::printf(
        "check (expert e maps x -> (1+e) x, exact closed form): %ld wrong values of %ld, "
        "%ld wrong counts (all ranks)\n",
        static_cast<long>(wrong[1]), static_cast<long>(N * d * ep), static_cast<long>(wrong[0]));
    std::printf("[ a2a     ] check wrong=%ld values=%ld wrong_counts=%ld\n",
                static_cast<long>(wrong[1]), static_cast<long>(N * d * ep),
                static_cast<long>(wrong[0]));

    const double S = mean_bytes_per_rank(matrix, ep, row_bytes);
    const double S_off = mean_offrank_bytes_per_rank(matrix, ep, row_bytes);
    std::printf("times per iteration, ms (max over ranks of each rank's mean / min):\n");
    const char* names[kNumPhases] = {"count exchange (plan, D2H, MPI, H2D)",
                                     "permute + regroup",
                                     "exchange (2 x all_to_all_v)",
                                     "regroup back + un-permute/combine",
                                     "dispatch + combine total",
                                     "raw grouped send/recv (2 x)",
                                     "  raw dispatch matrix",
                                     "  raw combine (transpose)"};
    for (int p = 0; p < kNumPhases; ++p)
      std::printf("  %-38s %9.3f %9.3f\n", names[p], mean(p), lo(p));
    const Bandwidth bw = alltoall_bandwidth(S, mean(kTotal) * 1e-3, ep);
    const Bandwidth bx = alltoall_bandwidth(S, mean(kExchange) * 1e-3, ep);
    const Bandwidth br = alltoall_bandwidth(S, mean(kRaw) * 1e-3, ep);
    const double off_gbs = mean(kTotal) > 0 ? S_off / (mean(kTotal) * 1e-3) * 1e-9 : 0;
    const double off_raw_gbs = mean(kRaw) > 0 ? S_off / (mean(kRaw) * 1e-3) * 1e-9 : 0;
    std::printf(
        "bytes per rank and iteration S = %.3f MiB (dispatch + combine, self chunk "
        "included, mean over ranks; %.3f MiB leave the rank)\n",
        S / mib, S_off / mib);
    std::printf(
        "bandwidth, GB/s (algbw = S / t, busbw = algbw (n-1)/n as nccl-tests' alltoall):\n");
    std::printf("  dispatch + combine  algbw %8.2f busbw %8.2f off-rank %8.2f\n", bw.algbw_gbs,
                bw.busbw_gbs, off_gbs);
    std::printf("  its exchange phase  algbw %8.2f busbw %8.2f\n", bx.algbw_gbs, bx.busbw_gbs);
    std::printf("  raw send/recv       algbw %8.2f busbw %8.2f off-rank %8.2f\n", br.algbw_gbs,
                br.busbw_gbs, off_raw_gbs);
    const double ratio = mean(kRaw) > 0 ? mean(kTotal) / mean(kRaw) : 0;
    const double ratio_min = lo(kRaw) > 0 ? lo(kTotal) / lo(kRaw) : 0;
    std::printf("dispatch + combine / raw send/recv: %.3fx (mean), %.3fx (min)\n", ratio,
                ratio_min);
    std::printf(
        "[ a2a     ] result ep=%d tokens=%ld hidden=%ld experts=%d top_k=%d skew=%g "
        "dtype=%s iters=%d bytes=%.0f offrank_bytes=%.0f",
        ep, static_cast<long>(N), static_cast<long>(d), E, opt.top_k, opt.skew,
        kBf16 ? "bf16" : "f32", opt.iters, S, S_off);
    for (int p = 0; p < kNumPhases; ++p)
      std::printf(" %s_ms=%.4f %s_min_ms=%.4f", kPhaseKeys[static_cast<size_t>(p)], mean(p),
                  kPhaseKeys[static_cast<size_t>(p)], lo(p));
    std::printf(
        " algbw=%.3f busbw=%.3f raw_algbw=%.3f raw_busbw=%.3f ratio=%.4f ratio_min=%.4f "
        "wrong=%ld\n",
        bw.algbw_gbs, bw.busbw_gbs, br.algbw_gbs, br.busbw_gbs, ratio, ratio_min,
        static_cast<long>(wrong[0] + wrong[1]));
    std::fflush(stdout);
  }
  return wrong[0] + wrong[1] == 0 ? 0 : 2;
}

int run_bench_a2a(const BenchA2aOptions& opt) {
  MpiRuntime mpi(nullptr, nullptr);
  const Topology& topo = mpi.topology();
  try {
    validate_bench_a2a_options(opt, topo.world_size);
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    DIRMOE_CHECK(e == cudaSuccess && n > 0, "bench a2a: no CUDA device on ", topo.hostname, " (",
                 e == cudaSuccess ? "cudaGetDeviceCount returned 0" : cudaGetErrorString(e), ")");
    NcclOptions nopt;
    const char* shared = std::getenv("DIRMOE_SHARED_GPU");
    nopt.allow_shared_gpu = shared != nullptr && std::string(shared) == "1";
    std::unique_ptr<NcclCommunicator> dev = NcclCommunicator::create(MPI_COMM_WORLD, "world", nopt);
    cudaDeviceProp prop{};
    DIRMOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev->device()));
    int rc = 0;
    if (opt.dtype == "f32") {
      rc = bench<float>(opt, mpi.world(), *dev, prop.name);
    } else {
      rc = bench<__nv_bfloat16>(opt, mpi.world(), *dev, prop.name);
    }
    if (rc != 0 && topo.rank == 0)
      std::fprintf(stderr, "error: bench a2a: the data check failed (see the check line)\n");
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (topo.world_size > 1) abort_job(1);
    return 1;
  }
}

}  // namespace

void register_bench_a2a_command(CLI::App& bench, int* exit_code) {
  auto opt = std::make_shared<BenchA2aOptions>();
  auto* cmd = bench.add_subcommand(
      "a2a",
      "time the MoE token exchange on GPUs (count exchange, permute, NCCL all-to-all-v, "
      "un-permute) against raw grouped send/recv of the same bytes; one rank per GPU");
  add_bench_a2a_options(*cmd, *opt);
  cmd->callback([opt, exit_code]() { *exit_code = run_bench_a2a(*opt); });
}

}  // namespace dirmoe
