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

  const double h = 1e-5;
  double worst = 0;
  int checked = 0;
  for (auto* p : model.parameters()) {
    std::vector<int64_t> idx;
    const int64_t n = p->numel();
    for (int j = 0; j < 8; ++j) {
      int64_t i = static_cast<int64_t>(rng.at(checked, j, 1).v[0] % n);
      if (p->name == "embed") i = *std::next(used.begin(), i % used.size()) * p->shape[1] + i % p->shape[1];
      idx.push_back(i);
    }
    for (int64_t i : idx) {
      double orig = p->value[i];
      p->value[i] = orig + h;
      double lp = loss();
      p->value[i] = orig - h;
      double lm = loss();
      p->value[i] = orig;
      double num = (lp - lm) / (2 * h), ana = p->grad[i];
      double err = std::abs(num - ana) / std::max(std::abs(num) + std::abs(ana), 1e-7);
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-6) << p->name << "[" << i << "]: numeric " << num << " analytic " << ana;
      ++checked;
    }
  }
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

}  // namespace
}  // namespace dirmoe
