// The whole tiny LLaMA-MoE in double: the analytic gradient of (cross-entropy + router losses) for
// every parameter tensor against central finite differences.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "comm/mpi_communicator.h"
#include "runtime/config.h"
#include "runtime/core/philox.h"
#include "runtime/model.h"

namespace dirmoe {
namespace {

Config tiny_config() {
  return parse_config(R"(model:
  vocab_size: 50
  vocab_multiple: 16
  hidden: 16
  layers: 2
  heads: 4
  kv_heads: 2
  ffn_hidden: 12
  seq_len: 6
  init_std: 0.3
  dtype: f64
moe:
  num_experts: 4
  router: {type: topk, k: 2, aux_loss_coef: 0.05, z_loss_coef: 0.01}
parallel: {ep: 1}
data: {paths: [unused]}
)",
                      {}, "gradcheck.yaml");
}

TEST(ModelGradcheck, WholeModelMatchesCentralDifferences) {
  Config cfg = tiny_config();
  MpiCommunicator self(MPI_COMM_SELF, false, "self");
  Placement placement = Placement::contiguous(cfg.moe.num_experts, 1);
  Model<double> model(cfg, &self, placement);
  model.init_weights(7);

  const int64_t B = 2, S = cfg.model.seq_len;
  std::vector<int32_t> tokens(B * (S + 1));
  PhiloxStream rng{11, 3};
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<int32_t>(rng.at(i, 0, 0).v[0] % cfg.model.vocab_size);
  std::set<int32_t> used(tokens.begin(), tokens.end());
  RouterContext ctx{1, 0, 0, 0, true};

  auto loss = [&] {
    MicroBatchResult r = model.forward_backward(tokens.data(), B, ctx, 0.0, false);
    return r.ce_loss + r.router_loss;
  };
  for (auto* p : model.parameters()) p->grad.zero();
  model.forward_backward(tokens.data(), B, ctx, 1.0, true);

  // Central differences with one Richardson step (error O(h^4)), h large enough that the
  // round-off of the loss (~1e-15) stays far below the 1e-6 bound.
  const double h = 1e-4;
  auto numeric = [&](Parameter<double>* p, int64_t i) {
    double orig = p->value[i];
    auto central = [&](double step) {
      p->value[i] = orig + step;
      double lp = loss();
      p->value[i] = orig - step;
      double lm = loss();
      p->value[i] = orig;
      return (lp - lm) / (2 * step);
    };
    return (4 * central(h / 2) - central(h)) / 3;
  };
  double worst = 0, worst_norm = 0;
  int checked = 0;
  for (auto* p : model.parameters()) {
    std::vector<int64_t> idx;
    const int64_t n = p->numel();
    for (int j = 0; j < 8; ++j) {
      int64_t i = static_cast<int64_t>(rng.at(checked + j, j, 1).v[0] % n);
      if (p->name == "embed") i = *std::next(used.begin(), i % used.size()) * p->shape[1] + i % p->shape[1];
      idx.push_back(i);
    }
    double max_grad = 0;
    for (int64_t i = 0; i < n; ++i) max_grad = std::max(max_grad, std::abs(double(p->grad[i])));
    double diff2 = 0, ref2 = 0;
    for (int64_t i : idx) {
      double num = numeric(p, i), ana = p->grad[i];
      // Relative to the entry, floored at 1e-3 of the tensor's largest gradient so that entries
      // that are zero up to rounding do not divide by nothing.
      double err = std::abs(num - ana) / std::max(std::abs(num) + std::abs(ana), 1e-3 * max_grad);
      worst = std::max(worst, err);
      diff2 += (num - ana) * (num - ana);
      ref2 += num * num;
      EXPECT_LE(err, 1e-6) << p->name << "[" << i << "]: numeric " << num << " analytic " << ana;
      ++checked;
    }
    double norm_err = std::sqrt(diff2 / std::max(ref2, 1e-300));
    worst_norm = std::max(worst_norm, norm_err);
    EXPECT_LE(norm_err, 1e-6) << p->name;
    EXPECT_GT(max_grad, 0.0) << p->name << " has no gradient at all";
  }
  std::printf("worst norm-wise relative error per tensor %.3g\n", worst_norm);
  std::printf("checked %d gradient entries over %zu tensors, worst relative error %.3g\n", checked,
              model.parameters().size(), worst);
  EXPECT_GT(checked, 100);
}

TEST(ModelGradcheck, InitialLossIsNearLogVocab) {
  Config cfg = tiny_config();
  cfg.model.init_std = 1e-4;  // near-uniform logits
  MpiCommunicator self(MPI_COMM_SELF, false, "self");
  Model<double> model(cfg, &self, Placement::contiguous(4, 1));
  model.init_weights(3);
  std::vector<int32_t> tokens(2 * 7, 5);
  MicroBatchResult r = model.forward_backward(tokens.data(), 2, RouterContext{}, 0.0, false);
  EXPECT_NEAR(r.ce_loss, std::log(50.0), 1e-3);
}

// count_params (used by `config check` and the FLOP counts) against the tensors the model builds.
TEST(ModelParameters, CountMatchesBuiltModelForEveryRouter) {
  for (const char* type : {"topk", "dirmoe", "probmoe"}) {
    Config cfg = tiny_config();
    cfg.moe.router.type = type;
    MpiCommunicator self(MPI_COMM_SELF, false, "self");
    Model<double> model(cfg, &self, Placement::contiguous(cfg.moe.num_experts, 1));
    int64_t total = 0, expert = 0;
    for (auto* p : model.parameters()) {
      total += p->numel();
      if (p->kind == ParamKind::kExpert) expert += p->numel();
    }
    ParamCounts c = count_params(cfg);
    EXPECT_EQ(c.total, total) << type;
    EXPECT_EQ(c.per_rank, total) << type;
    EXPECT_EQ(c.expert, expert) << type;
  }
}

}  // namespace
}  // namespace dirmoe
