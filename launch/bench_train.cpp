// `dirmoe bench train`: the configured model's training step on the GPU (CudaModel, NCCL, AdamW on
// the device) on synthetic tokens, timed after warm-up: tokens/s, model TFLOP/s and MFU, device
// memory, and a per-phase breakdown from one extra step whose phase ranges synchronise the device.
// Model FLOPs per token = 6 * N_active + 6 * layers * seq * hidden, N_active leaving out the input
// embedding, including the LM head, and counting expert parameters by the measured mean active
// experts per token.
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "comm/bootstrap.h"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "experts/placement.h"
#include "kernels/cuda/api_counters.h"
#include "launch/commands.h"
#include "kernels/routing/remoe.h"
#include "runtime/config.h"
#include "runtime/core/cuda_check.h"
#include "runtime/core/error.h"
#include "runtime/core/philox.h"
#include "runtime/core/trace.h"
#include "runtime/cuda_model.h"
#include "runtime/cuda_optimizer.h"
#include "runtime/schedule.h"

namespace dirmoe {
namespace {

struct BenchTrainOptions {
  std::string config;
  std::vector<std::string> sets;
  int steps = 10;
  int warmup = 3;
  double peak_tflops = 0;  // 0: from the device name
};

// Dense bf16 tensor-core peak (TFLOP/s) of the devices we know; 0 when unknown.
double known_peak_tflops(const std::string& name) {
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos)
    return 989.4;
  if (name.find("A100") != std::string::npos) return 312.0;
  return 0;
}

void sync_device() { DIRMOE_CUDA_CHECK(cudaDeviceSynchronize()); }

int64_t device_bytes_in_use() {
  size_t free_b = 0, total_b = 0;
  DIRMOE_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return static_cast<int64_t>(total_b - free_b);
}

template <class T>
int bench(const Config& cfg, const BenchTrainOptions& opt, MpiRuntime& mpi,
          NcclCommunicator& world_dev, int64_t bytes_at_start, const std::string& device_name) {
  const Topology& topo = mpi.topology();
  const int rank = topo.rank, W = topo.world_size, ep = cfg.parallel.ep;
  Communicator& world = mpi.world();
  std::unique_ptr<Communicator> ep_host = world.split(rank / ep, rank, "ep");
  std::unique_ptr<Communicator> ep_dev = world_dev.split(rank / ep, rank, "ep");
  std::unique_ptr<Communicator> replica_dev = world_dev.split(rank % ep, rank, "expert-replica");
  const Placement placement =
      cfg.parallel.placement.empty()
          ? Placement::contiguous(cfg.moe.num_experts, ep)
          : Placement::explicit_lists(cfg.moe.num_experts, cfg.parallel.placement);
  CudaModel<T> model(cfg, ep_host.get(), ep_dev.get(), placement, world_dev.stream());
  model.init_weights(cfg.train.seed);
  CudaOptimizer<T> optimizer(model, cfg.train, &world_dev, replica_dev.get(), &world,
                             ep_host.get());

  const auto& t = cfg.train;
  const int64_t B = t.micro_batch, S = cfg.model.seq_len, V = cfg.model.vocab_size;
  const int L = model.num_layers();
  std::vector<int32_t> tokens(static_cast<size_t>(B * (S + 1)));
  double active_sum = 0;  // mean active experts per token, summed over layers and timed steps
  double last_loss = 0;
  // ReMoE: the trainer's controller (one fp32 lambda, updated once per step from the zero-gate
  // share over layers, micro-batches and ranks), so active experts settle as in training.
  const bool remoe = cfg.moe.router.type == "remoe";
  float remoe_lambda = static_cast<float>(cfg.moe.router.remoe.lambda_init);
  auto one_step = [&](int64_t step, bool timed) {
    trace::Scope step_scope(trace::Phase::kStep);
    model.zero_grad();
    double loss = 0;
    int64_t nnz = 0;
    for (int a = 0; a < t.grad_accum; ++a) {
      const int64_t g = step * t.grad_accum * W + static_cast<int64_t>(a) * W + rank;
      PhiloxStream rng{t.seed ^ 0x5eedULL, static_cast<uint32_t>(g)};
      for (size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = static_cast<int32_t>(
            rng.uniform(static_cast<uint32_t>(i), static_cast<uint32_t>(g >> 32), 0) *
            static_cast<double>(V));
      RouterContext ctx{t.seed, step, 0, g * B * S, true};
      ctx.remoe_lambda = static_cast<double>(remoe_lambda);
      loss += model.forward_backward(tokens.data(), B, ctx, 1.0 / (t.grad_accum * W), true).ce_loss;
      if (timed)
        for (int l = 0; l < L; ++l) active_sum += model.moe_stats(l).router.mean_active;
      for (int l = 0; l < L && remoe; ++l)
        for (int64_t c : model.moe_stats(l).tokens_per_expert) nnz += c;
    }
    if (remoe) {
      world.all_reduce(&nnz, 1, DType::kI64, ReduceOp::kSum);
      const double slots = static_cast<double>(L) * cfg.moe.num_experts *
                           static_cast<double>(B * S * t.grad_accum * W);
      remoe_lambda = remoe_next_lambda(remoe_lambda, 1.0 - static_cast<double>(nnz) / slots,
                                       remoe_target_sparsity(cfg.moe.router.k, cfg.moe.num_experts),
                                       static_cast<float>(cfg.moe.router.remoe.alpha));
    }
    trace::Scope optimizer_scope(trace::Phase::kOptimizer);
    const double gnorm = optimizer.reduce_gradients();
    optimizer.apply(gnorm, lr_at(step, t.steps, t.lr, t.min_lr, t.warmup), step + 1);
    last_loss = loss / t.grad_accum;
  };

  // One line per step on rank 0, flushed, so a run cut short by a time limit still reports. The
  // device is synchronised at the end of each step (the step's optimizer waits on it anyway).
  const auto run_step = [&](int s, bool timed) {
    const auto s0 = std::chrono::steady_clock::now();
    one_step(s, timed);
    sync_device();
    if (rank == 0) {
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count();
      std::printf("step %d/%d (%s): %.2f ms, loss %.4f\n", s + 1, opt.warmup + opt.steps,
                  timed ? "timed" : "warm-up", ms, last_loss);
      std::fflush(stdout);
    }
  };
  for (int s = 0; s < opt.warmup; ++s) run_step(s, false);
  sync_device();
  world.barrier();
  const cuda::ApiCounts calls0 = cuda::api_counts();
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < opt.steps; ++s) run_step(opt.warmup + s, true);
  // The bench's own per-step synchronisation (run_step) is not the step's: taken out below.
  const cuda::ApiCounts calls = cuda::api_counts() - calls0;
  sync_device();
  world.barrier();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  world.all_reduce(&seconds, 1, DType::kF64, ReduceOp::kMax);

  // One more step with synchronising phase ranges: the breakdown.
  trace::Recorder& rec = trace::Recorder::get();
  rec.clear();
  rec.set_sync_hook(&sync_device);
  rec.arm();
  one_step(opt.warmup + opt.steps, false);
  rec.disarm();
  rec.set_sync_hook(nullptr);
  std::array<double, static_cast<size_t>(trace::Phase::kCount)> phase_ms{};
  for (const trace::Event& e : rec.events())
    phase_ms[static_cast<size_t>(e.phase)] += static_cast<double>(e.end_ns - e.begin_ns) * 1e-6;
  rec.clear();
  world.all_reduce(phase_ms.data(), static_cast<int64_t>(phase_ms.size()), DType::kF64,
                   ReduceOp::kMax);

  // Model FLOPs.
  int64_t dense = 0, embed = 0;
  for (cuda::DeviceParameter* p : model.device_parameters()) {
    if (p->expert) continue;
    dense += p->numel();
    if (p->name == "embed") embed = p->numel();
  }
  for (Parameter<float>* p : model.router_parameters()) dense += p->numel();
  const double d = static_cast<double>(cfg.model.hidden),
               f = static_cast<double>(cfg.model.ffn_hidden);
  world.all_reduce(&active_sum, 1, DType::kF64, ReduceOp::kSum);
  const double mean_active = active_sum / (static_cast<double>(opt.steps) * t.grad_accum * W * L);
  const double n_active = static_cast<double>(dense - embed) + L * mean_active * 3.0 * d * f;
  const double flops_per_token = 6.0 * n_active + 6.0 * L * static_cast<double>(S) * d;
  const double tokens_per_step = static_cast<double>(B * S * t.grad_accum * W);
  const double tok_s = tokens_per_step * opt.steps / seconds;
  const double tflops_per_gpu = tok_s * flops_per_token / W * 1e-12;
  const double peak = opt.peak_tflops > 0 ? opt.peak_tflops : known_peak_tflops(device_name);
  int64_t used[2] = {device_bytes_in_use() - bytes_at_start, device_bytes_in_use()};
  world.all_reduce(used, 2, DType::kI64, ReduceOp::kMax);

  if (rank == 0) {
    const double gib = 1024.0 * 1024.0 * 1024.0;
    std::printf(
        "bench train: %s, %d rank(s), ep %d, %s, micro-batch %ld x %ld, accum %d, %d timed "
        "steps after %d warm-up\n",
        cfg.source.c_str(), W, ep, cfg.model.dtype.c_str(), static_cast<long>(B),
        static_cast<long>(S), t.grad_accum, opt.steps, opt.warmup);
    std::printf("device: %s\n", device_name.c_str());
    std::printf("step time %.2f ms | %.0f tokens/s | loss %.4f (synthetic tokens)\n",
                seconds / opt.steps * 1e3, tok_s, last_loss);
    std::printf(
        "model FLOPs/token %.4g (N_active %.4g with %.3f active experts/token over %d "
        "layers) | %.1f model TFLOP/s per GPU",
        flops_per_token, n_active, mean_active, L, tflops_per_gpu);
    if (peak > 0)
      std::printf(" | MFU %.1f%% of %.1f TFLOP/s\n", 100.0 * tflops_per_gpu / peak, peak);
    else
      std::printf(" | MFU n/a (unknown device peak: pass --peak-tflops)\n");
    std::printf(
        "device memory: %.2f GiB allocated by dirmoe (buffers only grow: the peak), %.2f "
        "GiB in use on the device (context included), max over ranks\n",
        static_cast<double>(used[0]) / gib, static_cast<double>(used[1]) / gib);
    const double step_ms = phase_ms[static_cast<size_t>(trace::Phase::kStep)];
    double named = 0;
    const double per_step = 1.0 / opt.steps, per_mb = per_step / t.grad_accum;
    std::printf(
        "CUDA calls per step after warm-up (rank 0): %.1f allocations, %.1f frees; host "
        "synchronisations %.1f per micro-batch (%.1f stream/event/device syncs, %.1f "
        "blocking copies per step; %d layers)\n",
        calls.allocs * per_step, calls.frees * per_step, (calls.host_syncs() - opt.steps) * per_mb,
        (calls.syncs - opt.steps) * per_step, calls.blocking_copies * per_step, L);
    std::printf("breakdown of one synchronised step (%.2f ms):", step_ms);
    for (size_t p = 0; p < phase_ms.size(); ++p) {
      if (p == static_cast<size_t>(trace::Phase::kStep)) continue;
      named += phase_ms[p];
      std::printf(" %s %.1f%%", trace::phase_name(static_cast<trace::Phase>(p)),
                  step_ms > 0 ? 100.0 * phase_ms[p] / step_ms : 0.0);
    }
    std::printf(" other %.1f%%\n", step_ms > 0 ? 100.0 * (step_ms - named) / step_ms : 0.0);
    std::fflush(stdout);
  }
  return 0;
}

int run_bench_train(const BenchTrainOptions& opt) {
  MpiRuntime mpi(nullptr, nullptr);
  const Topology& topo = mpi.topology();
  try {
    DIRMOE_CHECK(opt.steps >= 1, "--steps must be at least 1, got ", opt.steps);
    DIRMOE_CHECK(opt.warmup >= 0, "--warmup must be >= 0, got ", opt.warmup);
    Config cfg = load_config(opt.config, opt.sets);
    DIRMOE_CHECK(cfg.device != "cpu", "bench train measures the GPU path, but ", opt.config,
                 " sets device: cpu (use --set device=cuda)");
    validate_for_world(cfg, topo.world_size);
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    DIRMOE_CHECK(e == cudaSuccess && n > 0, "bench train: no CUDA device on ", topo.hostname, " (",
                 e == cudaSuccess ? "cudaGetDeviceCount returned 0" : cudaGetErrorString(e), ")");
    NcclOptions nopt;
    const char* shared = std::getenv("DIRMOE_SHARED_GPU");
    nopt.allow_shared_gpu = shared != nullptr && std::string(shared) == "1";
    std::unique_ptr<NcclCommunicator> world_dev =
        NcclCommunicator::create(MPI_COMM_WORLD, "world", nopt);
    cudaDeviceProp prop{};
    DIRMOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, world_dev->device()));
    const int64_t at_start = device_bytes_in_use();
    if (cfg.model.dtype == "f32")
      return bench<float>(cfg, opt, mpi, *world_dev, at_start, prop.name);
    return bench<__nv_bfloat16>(cfg, opt, mpi, *world_dev, at_start, prop.name);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (topo.world_size > 1) abort_job(1);
    return 1;
  }
}

}  // namespace

void register_bench_train_command(CLI::App& bench, int* exit_code) {
  auto opt = std::make_shared<BenchTrainOptions>();
  auto* cmd = bench.add_subcommand(
      "train",
      "time the configured model's training step on the GPU (synthetic tokens): "
      "tokens/s, model TFLOP/s, MFU, device memory, per-phase breakdown");
  cmd->add_option("--config", opt->config, "YAML configuration file")->required();
  cmd->add_option("--set", opt->sets, "override a key (repeatable)");
  cmd->add_option("--steps", opt->steps, "timed steps")->capture_default_str();
  cmd->add_option("--warmup", opt->warmup, "untimed steps first")->capture_default_str();
  cmd->add_option("--peak-tflops", opt->peak_tflops,
                  "device peak for MFU (default: from the device name; H100/H200 989.4, A100 312)");
  cmd->callback([opt, exit_code]() { *exit_code = run_bench_train(*opt); });
}

}  // namespace dirmoe
