// MoE layer with expert parallelism over all MPI ranks (ep = world): each rank's tokens differ; the
// EP forward and backward must equal a one-rank layer holding every expert (weights rebuilt from
// the parameter names) and the plain-loop dense reference; local expert gradients must equal the
// gradients from all ranks' tokens (inputs and dys all-gathered).
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <vector>

#include "comm/mpi_communicator.h"
#include "experts/moe_layer.h"
#include "tests/experts/moe_test_util.h"

namespace dirmoe {
namespace {

using testing::DenseMoE;
using testing::SelfCommunicator;

constexpr double kAtol = 1e-12, kRtol = 1e-10;

struct Case {
  bool uneven;
  bool renormalize;
  double capacity_factor;
  bool empty_rank1;
  bool warmup = false;  // run one step with other token counts first, then zero the gradients
};

int64_t all_sum(Communicator& comm, int64_t v) {
  comm.all_reduce(&v, 1, DType::kI64, ReduceOp::kSum);
  return v;
}

// Gathers rows[n, width] of every rank into [sum n, width], rank order.
std::vector<double> gather_rows(Communicator& comm, const std::vector<double>& rows, int64_t n,
                                int64_t width, const std::vector<int64_t>& counts) {
  const int64_t max_n = *std::max_element(counts.begin(), counts.end());
  std::vector<double> padded(max_n * width, 0.0), all(max_n * width * comm.size());
  std::copy(rows.begin(), rows.begin() + n * width, padded.begin());
  comm.all_gather(padded.data(), all.data(), max_n * width, DType::kF64);
  std::vector<double> out;
  for (int r = 0; r < comm.size(); ++r)
    out.insert(out.end(), all.begin() + r * max_n * width,
               all.begin() + (r * max_n + counts[r]) * width);
  return out;
}

void run_case(const Case& c) {
  MpiCommunicator world(MPI_COMM_WORLD, false, "ep");
  const int ws = world.size(), me = world.rank(), layer = 3, k = 2;
  const int64_t d = 8, f = 12;
  const double s = 0.5;
  const std::vector<std::vector<int>> lists =
      c.uneven ? testing::uneven_lists(ws) : Placement::contiguous(2 * ws, ws).lists();
  const int E = testing::num_listed(lists);
  const Placement placement = Placement::explicit_lists(E, lists);
  MoEConfig cfg;
  cfg.num_experts = E;
  cfg.hidden = d;
  cfg.ffn_hidden = f;
  cfg.capacity_factor = c.capacity_factor;
  cfg.router.k = k;
  cfg.router.renormalize = c.renormalize;
  cfg.router.aux_loss_coef = 0.1;
  cfg.router.z_loss_coef = 0.01;

  MoELayer<double> ep(cfg, placement, &world, layer);
  testing::init_params(ep.parameters());
  SelfCommunicator self;
  MoELayer<double> local(cfg, Placement::contiguous(E, 1), &self, layer);
  testing::init_params(local.parameters());
  DenseMoE dense(layer, E, d, f, k, c.renormalize);

  const int64_t N = (c.empty_rank1 && me == 1) ? 0 : 5 + 3 * me;
  std::vector<double> x = dense.tokens(N, 100 + me, 1e-3), dy(N * d);
  for (int64_t i = 0; i < N * d; ++i) dy[i] = testing::normal_at(200 + me, 0, i);

  RouterContext ctx;
  if (c.warmup) {
    const int64_t n = me % 2 ? 1 : 2 * N + 3;
    std::vector<double> xw = dense.tokens(n, 300 + me, 0.0), yw(n * d), dxw(n * d);
    for (MoELayer<double>* m : {&ep, &local}) {
      m->forward(xw.data(), yw.data(), n, ctx);
      m->backward(xw.data(), s, dxw.data());
      for (Parameter<double>* p : m->parameters()) p->grad.zero();
    }
  }
  std::vector<double> y(N * d), y_ref(N * d), dx(N * d), dx_ref(N * d);
  ep.forward(x.data(), y.data(), N, ctx);
  local.forward(x.data(), y_ref.data(), N, ctx);
  ep.backward(dy.data(), s, dx.data());
  local.backward(dy.data(), s, dx_ref.data());

  EXPECT_LE(testing::tol_ratio(y, y_ref, kAtol, kRtol), 1.0) << "y vs one-rank layer";
  if (c.capacity_factor <= 0) {
    EXPECT_LE(testing::tol_ratio(y, dense.forward(x, N), kAtol, kRtol), 1.0) << "y vs dense";
  }
  EXPECT_LE(testing::tol_ratio(dx, dx_ref, kAtol, kRtol), 1.0) << "dx";
  const Parameter<double>& rg = *ep.parameters()[0];
  const Parameter<double>& rg_ref = *local.parameters()[0];
  EXPECT_LE(testing::tol_ratio(rg.grad, rg_ref.grad, kAtol, kRtol), 1.0) << "router grad";
  EXPECT_DOUBLE_EQ(ep.router_loss(), local.router_loss());
  EXPECT_EQ(ep.stats().tokens_per_expert, local.stats().tokens_per_expert);
  EXPECT_EQ(ep.stats().dropped, local.stats().dropped);
  const int64_t dropped_all = all_sum(world, ep.stats().dropped);
  const int64_t received_all = all_sum(world, ep.stats().received);
  const int64_t sent_all = all_sum(world, N * k - ep.stats().dropped);
  EXPECT_EQ(received_all, sent_all);
  if (c.capacity_factor > 0) {
    EXPECT_GT(dropped_all, 0);
  }

  // Expert gradients: this rank's experts saw every rank's tokens.
  std::vector<Parameter<double>*> ref_params;
  std::unique_ptr<MoELayer<double>> global;
  if (c.capacity_factor <= 0) {
    std::vector<int64_t> counts(ws);
    world.all_gather(&N, counts.data(), 1, DType::kI64);
    int64_t total = 0;
    for (int64_t n : counts) total += n;
    std::vector<double> x_all = gather_rows(world, x, N, d, counts);
    std::vector<double> dy_all = gather_rows(world, dy, N, d, counts);
    global = std::make_unique<MoELayer<double>>(cfg, Placement::contiguous(E, 1), &self, layer);
    testing::init_params(global->parameters());
    std::vector<double> y_all(total * d), dx_all(total * d);
    global->forward(x_all.data(), y_all.data(), total, ctx);
    global->backward(dy_all.data(), s, dx_all.data());
    ref_params = global->parameters();
  } else {
    // Capacity is per source rank: sum every rank's one-rank gradients instead.
    ref_params = local.parameters();
    for (Parameter<double>* p : ref_params)
      world.all_reduce(p->grad.data(), p->numel(), DType::kF64, ReduceOp::kSum);
  }
  int checked = 0;
  for (Parameter<double>* p : ep.parameters()) {
    if (p->kind != ParamKind::kExpert) continue;
    auto it = std::find_if(ref_params.begin(), ref_params.end(),
                           [&](Parameter<double>* q) { return q->name == p->name; });
    ASSERT_NE(it, ref_params.end()) << p->name;
    EXPECT_LE(testing::tol_ratio(p->grad, (*it)->grad, kAtol, kRtol), 1.0) << p->name;
    ++checked;
  }
  EXPECT_EQ(checked, 3 * static_cast<int>(placement.local_experts(me).size()));
}

TEST(MoELayerMpi, ContiguousMatchesReference) { run_case({false, false, 0.0, false}); }

TEST(MoELayerMpi, ContiguousRenormalized) { run_case({false, true, 0.0, false}); }

TEST(MoELayerMpi, UnevenPlacementMatchesReference) { run_case({true, false, 0.0, false}); }

TEST(MoELayerMpi, UnevenPlacementRankWithoutTokens) { run_case({true, true, 0.0, true}); }

TEST(MoELayerMpi, CapacityFactorMatchesPerRankReference) { run_case({false, false, 0.5, false}); }

TEST(MoELayerMpi, UnevenCapacityFactor) { run_case({true, true, 0.7, true}); }

// The f32 exchange path: EP in float against the one-rank float layer.
TEST(MoELayerMpi, FloatMatchesOneRankFloat) {
  MpiCommunicator world(MPI_COMM_WORLD, false, "ep");
  const int ws = world.size(), me = world.rank(), layer = 1, k = 2;
  const int64_t d = 16, f = 24;
  const auto lists = testing::uneven_lists(ws);
  const int E = testing::num_listed(lists);
  MoEConfig cfg;
  cfg.num_experts = E;
  cfg.hidden = d;
  cfg.ffn_hidden = f;
  cfg.router.k = k;
  cfg.router.z_loss_coef = 1e-3;
  MoELayer<float> ep(cfg, Placement::explicit_lists(E, lists), &world, layer);
  SelfCommunicator self;
  MoELayer<float> local(cfg, Placement::contiguous(E, 1), &self, layer);
  testing::init_params(ep.parameters());
  testing::init_params(local.parameters());
  DenseMoE dense(layer, E, d, f, k, false);
  const int64_t N = 7 + me;
  std::vector<double> xd = dense.tokens(N, 500 + me, 1e-2);
  std::vector<float> x(xd.begin(), xd.end()), dy(N * d), y(N * d), y_ref(N * d), dx(N * d),
      dx_ref(N * d);
  for (int64_t i = 0; i < N * d; ++i)
    dy[i] = static_cast<float>(testing::normal_at(600 + me, 0, i));
  ep.forward(x.data(), y.data(), N, RouterContext{});
  local.forward(x.data(), y_ref.data(), N, RouterContext{});
  ep.backward(dy.data(), 1.0, dx.data());
  local.backward(dy.data(), 1.0, dx_ref.data());
  EXPECT_LE(testing::tol_ratio(y, y_ref, 1e-5, 1e-4), 1.0);
  EXPECT_LE(testing::tol_ratio(y, dense.forward(xd, N), 1e-5, 1e-4), 1.0);
  EXPECT_LE(testing::tol_ratio(dx, dx_ref, 1e-5, 1e-4), 1.0);
  EXPECT_LE(testing::tol_ratio(ep.parameters()[0]->grad, local.parameters()[0]->grad, 1e-5, 1e-4),
            1.0);
}

// A first step with other token counts: buffers grow, shrink and are reused.
TEST(MoELayerMpi, SecondStepAfterDifferentBatch) {
  run_case({true, false, 0.0, false, true});
  run_case({false, true, 0.6, true, true});
}

}  // namespace
}  // namespace dirmoe
