// The whole model on the GPU against the CPU model (runtime/model.h), under mpiexec with EP = world
// (the token exchange through NCCL; several ranks may share one GPU, each with its own
// NCCL_HOSTID). Same config, same initial weights, same tokens and router noise on both sides: one
// micro-batch forward and backward, then the losses, the routing and every parameter gradient are
// compared. fp32 mode must match to float reassociation; bf16 mode is held to the loss bound of the
// GPU parity figure. Without a GPU every test skips.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "runtime/config.h"
#include "runtime/core/philox.h"
#include "runtime/cuda_model.h"
#include "runtime/model.h"
#include "tests/common/error_of.h"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe {
namespace {

struct Case {
  std::string name;
  std::string router;  // the moe.router YAML mapping
};

Config model_config(const std::string& router, int ep) {
  return parse_config(R"(model:
  vocab_size: 1000
  vocab_multiple: 64
  hidden: 64
  layers: 2
  heads: 2
  kv_heads: 1
  ffn_hidden: 96
  seq_len: 48
  init_std: 0.05
moe:
  num_experts: 8
  router: )" + router + R"(
parallel: {ep: )" + std::to_string(ep) +
                          R"(}
data: {paths: [unused]}
)",
                      {}, "test_model_cuda.yaml");
}

// ||a - b|| / ||b|| (0 when both are 0).
double normwise(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

class GpuModelTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    DIRMOE_SKIP_WITHOUT_GPU();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    host_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false, "ep");
    NcclOptions opt;
    opt.allow_shared_gpu = true;
    opt.abort_job = false;
    opt.timeout_s = 120;
    dev_ = NcclCommunicator::create(MPI_COMM_WORLD, "ep", opt);
  }

  // Tokens of global micro-batch `g` (this rank's), in [0, V).
  std::vector<int32_t> tokens(const Config& cfg, int64_t B, int g) const {
    const int64_t S = cfg.model.seq_len;
    std::vector<int32_t> t(static_cast<size_t>(B * (S + 1)));
    PhiloxStream rng{99, static_cast<uint32_t>(g)};
    for (size_t i = 0; i < t.size(); ++i)
      t[i] = static_cast<int32_t>(rng.uniform(static_cast<uint32_t>(i), 0, 0) *
                                  static_cast<double>(cfg.model.vocab_size)) %
             static_cast<int32_t>(cfg.model.vocab_size);
    return t;
  }

  int rank_ = 0, world_ = 1;
  std::unique_ptr<MpiCommunicator> host_;
  std::unique_ptr<NcclCommunicator> dev_;
};

template <class T>
void compare(const Config& cfg, Communicator* host, NcclCommunicator* dev, int rank,
             const std::vector<int32_t>& toks, int64_t B, bool fp32) {
  const Placement placement = Placement::contiguous(cfg.moe.num_experts, cfg.parallel.ep);
  Model<float> cpu(cfg, host, placement);
  CudaModel<T> gpu(cfg, host, dev, placement, dev->stream());
  cpu.init_weights(5);
  gpu.init_weights(5);
  for (Parameter<float>* p : cpu.parameters()) p->grad.zero();
  gpu.zero_grad();
  const RouterContext ctx{11, 3, 0, static_cast<int64_t>(rank) * B * cfg.model.seq_len, true};
  const double scale = 0.5;
  const MicroBatchResult rc = cpu.forward_backward(toks.data(), B, ctx, scale, true);
  const MicroBatchResult rg = gpu.forward_backward(toks.data(), B, ctx, scale, true);
  const double ce_rel = std::fabs(rg.ce_loss - rc.ce_loss) / std::fabs(rc.ce_loss);
  std::printf(
      "[ model   ] rank %d %s ce cpu %.9f gpu %.9f rel %.3e | router loss cpu %.9f gpu %.9f\n",
      rank, fp32 ? "f32" : "bf16", rc.ce_loss, rg.ce_loss, ce_rel, rc.router_loss, rg.router_loss);
  if (!fp32) {
    EXPECT_LE(ce_rel, 2e-2) << "bf16 loss";
    return;
  }
  EXPECT_LE(ce_rel, 1e-5) << "fp32 loss";
  EXPECT_NEAR(rg.router_loss, rc.router_loss, 1e-5 * (1 + std::fabs(rc.router_loss)));
  // The routing must be the same, or the gradients are not comparable.
  for (int l = 0; l < cpu.num_layers(); ++l) {
    const Routing<float>& a = cpu.routing(l);
    const Routing<float>& b = gpu.routing(l);
    ASSERT_EQ(a.offsets, b.offsets) << "layer " << l;
    ASSERT_EQ(a.experts, b.experts) << "layer " << l;
    double worst = 0;
    for (size_t i = 0; i < a.weights.size(); ++i)
      worst = std::max(worst, static_cast<double>(std::fabs(a.weights[i] - b.weights[i])));
    EXPECT_LE(worst, 1e-5) << "routing weights, layer " << l;
  }
  std::map<std::string, const Parameter<float>*> ref;
  for (Parameter<float>* p : cpu.parameters()) ref[p->name] = p;
  size_t seen = 0;
  double worst = 0;
  std::string worst_name;
  auto check = [&](const std::string& name, const std::vector<float>& g) {
    auto it = ref.find(name);
    ASSERT_NE(it, ref.end()) << "the GPU model has a parameter the CPU model lacks: " << name;
    const Parameter<float>& p = *it->second;
    ASSERT_EQ(static_cast<int64_t>(g.size()), p.numel()) << name;
    std::vector<float> want(p.grad.data(), p.grad.data() + p.numel());
    const double e = normwise(g, want);
    EXPECT_LE(e, 1e-4) << "gradient of " << name;
    if (e > worst) {
      worst = e;
      worst_name = name;
    }
    ++seen;
  };
  for (cuda::DeviceParameter* p : gpu.device_parameters()) check(p->name, p->grad.download());
  for (Parameter<float>* p : gpu.router_parameters())
    check(p->name, std::vector<float>(p->grad.data(), p->grad.data() + p->numel()));
  EXPECT_EQ(seen, ref.size()) << "parameter sets differ";
  std::printf("[ model   ] rank %d f32: %zu gradients, worst norm-wise %.3e (%s)\n", rank, seen,
              worst, worst_name.c_str());
}

TEST_P(GpuModelTest, Fp32MatchesCpuModel) {
  const Config cfg = model_config(GetParam().router, world_);
  const int64_t B = 2;
  compare<float>(cfg, host_.get(), dev_.get(), rank_, tokens(cfg, B, rank_), B, true);
}

TEST_P(GpuModelTest, Bf16LossWithin2e2OfCpuModel) {
  const Config cfg = model_config(GetParam().router, world_);
  const int64_t B = 2;
  compare<__nv_bfloat16>(cfg, host_.get(), dev_.get(), rank_, tokens(cfg, B, rank_), B, false);
}

// Bad token ids stop both models with the same error before any exchange (every rank holds the
// same bad token, so no rank is left in a collective).
TEST_P(GpuModelTest, BadTokenIdsGiveTheCpuModelsErrors) {
  const Config cfg = model_config(GetParam().router, world_);
  const int64_t B = 2, S = cfg.model.seq_len, Vp = cfg.model.padded_vocab();
  const Placement placement = Placement::contiguous(cfg.moe.num_experts, cfg.parallel.ep);
  Model<float> cpu(cfg, host_.get(), placement);
  CudaModel<float> gpu(cfg, host_.get(), dev_.get(), placement, dev_->stream());
  const RouterContext ctx{11, 3, 0, static_cast<int64_t>(rank_) * B * S, true};
  std::vector<int32_t> t = tokens(cfg, B, rank_);
  t[5] = static_cast<int32_t>(Vp + 3);  // an input: outside the padded vocabulary
  const std::string want_input = "token id " + std::to_string(Vp + 3) +
                                 " at position 5 is outside the vocabulary [0, " +
                                 std::to_string(Vp) + ")";
  const std::string e_cpu =
      test::error_of([&] { cpu.forward_backward(t.data(), B, ctx, 1, true); });
  const std::string e_gpu =
      test::error_of([&] { gpu.forward_backward(t.data(), B, ctx, 1, true); });
  EXPECT_NE(e_cpu.find(want_input), std::string::npos) << e_cpu;
  EXPECT_NE(e_gpu.find(want_input), std::string::npos) << e_gpu;
  t = tokens(cfg, B, rank_);
  t[S] = static_cast<int32_t>(cfg.model.vocab_size + 1);  // only a target (row 0's last)
  const std::string want_target = "target " + std::to_string(cfg.model.vocab_size + 1) +
                                  " at row " + std::to_string(S - 1) + " is outside [0, " +
                                  std::to_string(cfg.model.vocab_size) + ")";
  const std::string t_cpu =
      test::error_of([&] { cpu.forward_backward(t.data(), B, ctx, 1, true); });
  const std::string t_gpu =
      test::error_of([&] { gpu.forward_backward(t.data(), B, ctx, 1, true); });
  EXPECT_NE(t_cpu.find(want_target), std::string::npos) << t_cpu;
  EXPECT_NE(t_gpu.find(want_target), std::string::npos) << t_gpu;
}

INSTANTIATE_TEST_SUITE_P(
    Routers, GpuModelTest,
    ::testing::Values(Case{"topk", "{type: topk, k: 2, aux_loss_coef: 0.01, z_loss_coef: 0.001}"},
                      Case{"dirmoe", "{type: dirmoe, k: 2}"},
                      Case{"probmoe_exact", "{type: probmoe, k: 2, probmoe: {mode: exact}}"},
                      Case{"probmoe_dynamic",
                           "{type: probmoe, k: 2, probmoe: {mode: dynamic, k_min: 1, k_max: 3}}"},
                      Case{"remoe", "{type: remoe, k: 1, remoe: {lambda_init: 0.05}}"}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace dirmoe
