// Config loader: defaults, overrides, the resolved YAML round trip, parameter counts against a
// hand count, and every bad-input case naming the key (and the line, for the file).
#include <gtest/gtest.h>

#include <string>

#include "runtime/config.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

const char* kBase = R"(model:
  hidden: 64
  layers: 2
  heads: 4
  kv_heads: 2
  ffn_hidden: 96
  vocab_size: 1000
  vocab_multiple: 128
  seq_len: 16
moe:
  num_experts: 4
  router:
    k: 2
parallel:
  ep: 2
train:
  steps: 10
data:
  paths: [corpus/a]
)";

std::string error_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  try {
    parse_config(text, sets, "test.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_error(const std::string& text, const std::vector<std::string>& sets,
                  std::initializer_list<const char*> needles) {
  std::string e = error_of(text, sets);
  ASSERT_FALSE(e.empty()) << "no error for this config";
  for (const char* n : needles) EXPECT_NE(e.find(n), std::string::npos) << "'" << n << "' not in: " << e;
}

TEST(Config, ParsesFileAndFillsDefaults) {
  Config c = parse_config(kBase, {}, "test.yaml");
  EXPECT_EQ(c.model.hidden, 64);
  EXPECT_EQ(c.model.padded_vocab(), 1024);
  EXPECT_EQ(c.model.head_dim(), 16);
  EXPECT_EQ(c.moe.router.k, 2);
  EXPECT_EQ(c.moe.capacity_factor, 0.0);
  EXPECT_EQ(c.train.grad_accum, 1);  // default
  ASSERT_EQ(c.data.sources.size(), 1u);
  EXPECT_EQ(c.data.sources[0].path, "corpus/a");
  EXPECT_EQ(c.data.sources[0].weight, 1.0);
}

TEST(Config, OverridesApplyAndCreateMissingKeys) {
  Config c = parse_config(kBase, {"train.steps=7", "train.betas=[0.8, 0.9]",
                                  "moe.capacity_factor=1.25", "train.stop_at=3"},
                          "test.yaml");
  EXPECT_EQ(c.train.steps, 7);
  EXPECT_EQ(c.train.beta1, 0.8);
  EXPECT_EQ(c.train.beta2, 0.9);
  EXPECT_EQ(c.moe.capacity_factor, 1.25);
  EXPECT_EQ(c.train.stop_at, 3);
}

TEST(Config, MegatronStyleWeightedPathsAndSplit) {
  Config c = parse_config(kBase, {"data.paths=[0.3, a, 0.7, b]", "data.split=\"98,2\""},
                          "test.yaml");
  ASSERT_EQ(c.data.sources.size(), 2u);
  EXPECT_EQ(c.data.sources[1].path, "b");
  EXPECT_DOUBLE_EQ(c.data.sources[1].weight, 0.7);
  EXPECT_DOUBLE_EQ(c.data.valid_fraction, 0.02);
}

TEST(Config, ResolvedYamlRoundTrips) {
  Config c = parse_config(kBase, {"experts.placement=[[0,1,2],[3]]"}, "test.yaml");
  Config d = parse_config(to_yaml(c), {}, "resolved.yaml");
  EXPECT_EQ(to_yaml(c), to_yaml(d));
  EXPECT_EQ(d.parallel.placement, (std::vector<std::vector<int>>{{0, 1, 2}, {3}}));
}

TEST(Config, ParameterCountsMatchHandCount) {
  Config c = parse_config(kBase, {}, "test.yaml");
  // embed + head: 2*1024*64; final norm 64; per layer: q,o 64*64 each, k,v 64*32 each,
  // 2 norms 2*64, router 4*64, experts 4 * 3*64*96.
  int64_t attn = 2 * 64 * 64 + 2 * 64 * 32 + 2 * 64, router = 4 * 64, expert = 3 * 64 * 96;
  ParamCounts p = count_params(c);
  EXPECT_EQ(p.total, 2 * 1024 * 64 + 64 + 2 * (attn + router + 4 * expert));
  EXPECT_EQ(p.active, 2 * 1024 * 64 + 64 + 2 * (attn + router + 2 * expert));
  EXPECT_EQ(p.per_rank, 2 * 1024 * 64 + 64 + 2 * (attn + router + 2 * expert));
  EXPECT_GT(estimate_memory(c).total(), 4 * p.per_rank * 4);
}

TEST(ConfigErrors, UnknownKeyNamesKeyAndLine) {
  std::string text = std::string(kBase) + "train2:\n  x: 1\n";
  expect_error(text, {}, {"unknown key 'train2'", "test.yaml:20"});
  std::string nested = std::string(kBase);
  nested.replace(nested.find("  layers: 2"), 11, "  layer: 2");
  expect_error(nested, {}, {"unknown key 'model.layer'", "test.yaml:3"});
}

TEST(ConfigErrors, WrongTypeNamesKeyAndValue) {
  expect_error(kBase, {"model.hidden=abc"}, {"model.hidden", "expected an integer", "'abc'"});
  std::string text = std::string(kBase);
  text.replace(text.find("  steps: 10"), 11, "  steps: [1]");
  expect_error(text, {}, {"train.steps", "a list", "test.yaml:17"});
  expect_error(kBase, {"moe.router.renormalize=maybe"}, {"moe.router.renormalize"});
}

TEST(ConfigErrors, OutOfRangeValues) {
  expect_error(kBase, {"train.lr=-1"}, {"train.lr", "positive"});
  expect_error(kBase, {"moe.router.k=5"}, {"moe.router.k", "[1, moe.num_experts = 4]"});
  expect_error(kBase, {"train.betas=[0.9, 1.0]"}, {"train.betas", "beta2"});
  expect_error(kBase, {"data.split=1.5"}, {"data.split"});
  expect_error(kBase, {"train.stop_at=11"}, {"train.stop_at"});
  expect_error(kBase, {"model.dtype=f16"}, {"model.dtype"});
  expect_error(kBase, {"moe.router.type=nope"}, {"moe.router.type", "nope"});
}

TEST(ConfigErrors, DtypeMustSuitTheDevice) {
  expect_error(kBase, {"model.dtype=bf16", "device=cpu"}, {"model.dtype", "bf16", "GPU only"});
  expect_error(kBase, {"model.dtype=f64", "device=cuda"}, {"model.dtype", "f64", "CPU only"});
  EXPECT_EQ(error_of(kBase, {"model.dtype=bf16", "device=cuda"}), "");
  EXPECT_EQ(error_of(kBase, {"model.dtype=bf16", "device=auto"}), "");
}

TEST(ConfigErrors, HeadsMustDivideHiddenAndKvHeadsMustDivideHeads) {
  expect_error(kBase, {"model.heads=3"}, {"model.heads", "do not divide model.hidden = 64"});
  expect_error(kBase, {"model.kv_heads=3"}, {"model.kv_heads", "do not divide model.heads = 4"});
}

TEST(ConfigErrors, EpMustDivideWorldAndExperts) {
  Config c = parse_config(kBase, {}, "test.yaml");
  EXPECT_NO_THROW(validate_for_world(c, 4));
  try {
    validate_for_world(c, 3);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.ep = 2 does not divide the number of ranks (3)"),
              std::string::npos) << e.what();
  }
  expect_error(kBase, {"parallel.ep=3"}, {"parallel.ep", "does not divide moe.num_experts = 4"});
}

TEST(ConfigErrors, PlacementMissingOrDuplicateExpert) {
  expect_error(kBase, {"experts.placement=[[0,1],[2]]"}, {"experts.placement", "3"});
  expect_error(kBase, {"experts.placement=[[0,1],[1,2,3]]"}, {"experts.placement", "1"});
  expect_error(kBase, {"experts.placement=[[0,1,2,3]]"}, {"experts.placement", "parallel.ep = 2"});
}

TEST(ConfigErrors, SetOnUnknownKeyAndMalformedYaml) {
  expect_error(kBase, {"train.nosuch=1"}, {"--set train.nosuch", "no such configuration key"});
  expect_error(kBase, {"train.steps"}, {"key=value"});
  expect_error("model: [1, 2\n", {}, {"test.yaml:", "malformed YAML"});
  expect_error(kBase, {"data.paths=[-1, a]"}, {"data.paths", "must be >= 0"});
  expect_error(kBase, {"data.paths=[0, a, 0, b]"}, {"data.paths", "all zero"});
}

// ---- routers (moe.router.*) -------------------------------------------------------------------

const char* kDirMoE = R"(  router:
    type: dirmoe
    k: 1
    dirmoe:
      tau: {type: exponential, start: 2.0, rate: 0.995, floor: 0.05}
      r_min: 0.02
      max_active: 3
      lambda_q: {type: linear, start: 4.0, end: 1.0, steps: 100}
      alpha_floor: 0.001
      prior: {m: 0.9, h: 0.9}
      beta: 0.05
      recon_weight: {type: cosine, start: 1.0, end: 0.1, steps: 50}
      lambda_sparsity: 0.3
      eval: soft
      gamma_sampler: inverse_cdf
)";

// kBase with its router section replaced.
std::string with_router(const char* router_yaml) {
  std::string text = kBase;
  const std::string old = "  router:\n    k: 2\n";
  text.replace(text.find(old), old.size(), router_yaml);
  return text;
}

TEST(ConfigRouters, ParsesDirMoEWithSchedules) {
  Config c = parse_config(with_router(kDirMoE), {}, "test.yaml");
  const DirMoEConfig& d = c.moe.router.dirmoe;
  EXPECT_EQ(c.moe.router.type, "dirmoe");
  EXPECT_EQ(c.moe.router.k, 1);
  EXPECT_EQ(d.tau.type, ScheduleType::kExponential);
  EXPECT_EQ(d.tau.start, 2.0);
  EXPECT_EQ(d.tau.rate, 0.995);
  EXPECT_EQ(d.tau.floor, 0.05);
  EXPECT_EQ(d.r_min, 0.02);
  EXPECT_EQ(d.max_active, 3);
  EXPECT_EQ(d.lambda_q.type, ScheduleType::kLinear);
  EXPECT_DOUBLE_EQ(d.lambda_q.at(50), 2.5);
  EXPECT_EQ(d.prior.m, 0.9);
  EXPECT_EQ(d.beta.type, ScheduleType::kConstant);
  EXPECT_EQ(d.beta.at(7), 0.05);
  EXPECT_EQ(d.recon_weight.type, ScheduleType::kCosine);
  EXPECT_EQ(d.eval, "soft");
  EXPECT_EQ(d.gamma_sampler, "inverse_cdf");
  // Round trip through the resolved YAML.
  Config again = parse_config(to_yaml(c), {}, "resolved.yaml");
  EXPECT_EQ(to_yaml(c), to_yaml(again));
  EXPECT_EQ(again.moe.router.dirmoe.lambda_q.steps, 100);
}

TEST(ConfigRouters, OverridesReachNestedRouterKeys) {
  Config c = parse_config(kBase,
                          {"moe.router.type=probmoe", "moe.router.probmoe.mode=dynamic",
                           "moe.router.probmoe.k_min=1", "moe.router.probmoe.k_max=3"},
                          "test.yaml");
  EXPECT_EQ(c.moe.router.probmoe.mode, "dynamic");
  EXPECT_EQ(c.moe.router.probmoe.k_max, 3);
  Config d = parse_config(kBase,
                          {"moe.router.type=dirmoe", "moe.router.k=1",
                           "moe.router.dirmoe.tau={rate: 0.9, floor: 0.2}",
                           "moe.router.dirmoe.lambda_sparsity=0", "moe.router.dirmoe.prior.h=0.8"},
                          "test.yaml");
  EXPECT_EQ(d.moe.router.dirmoe.tau.type, ScheduleType::kExponential);  // default kept
  EXPECT_EQ(d.moe.router.dirmoe.tau.rate, 0.9);
  EXPECT_EQ(d.moe.router.dirmoe.tau.floor, 0.2);
  EXPECT_EQ(d.moe.router.dirmoe.lambda_sparsity.at(100), 0.0);
  Config e = parse_config(with_router(kDirMoE), {"moe.router.type=topk"}, "test.yaml");
  EXPECT_EQ(e.moe.router.type, "topk");  // dirmoe knobs may stay configured
}

TEST(ConfigRouters, ReMoEKeysParseRoundTripAndNameTheKey) {
  Config c = parse_config(kBase,
                          {"moe.router.type=remoe", "moe.router.k=1",
                           "moe.router.remoe.lambda_init=1e-4", "moe.router.remoe.alpha=1.5"},
                          "test.yaml");
  EXPECT_EQ(c.moe.router.type, "remoe");
  EXPECT_EQ(c.moe.router.remoe.lambda_init, 1e-4);
  EXPECT_EQ(c.moe.router.remoe.alpha, 1.5);
  Config back = parse_config(to_yaml(c), {}, "resolved.yaml");
  EXPECT_EQ(back.moe.router.remoe.lambda_init, 1e-4);
  EXPECT_EQ(back.moe.router.remoe.alpha, 1.5);
  EXPECT_EQ(Config{}.moe.router.remoe.lambda_init, 1e-8);
  EXPECT_EQ(Config{}.moe.router.remoe.alpha, 1.2);
  expect_error(kBase, {"moe.router.type=remoe", "moe.router.remoe.alpha=1"},
               {"moe.router.remoe.alpha", "must be > 1"});
  expect_error(kBase, {"moe.router.type=remoe", "moe.router.remoe.lambda_init=-1e-8"},
               {"moe.router.remoe.lambda_init"});
  expect_error(kBase, {"moe.router.type=remoe", "moe.router.k=0"},
               {"moe.router.k", "[1, moe.num_experts = 4]"});
  expect_error(kBase, {"moe.router.type=remoe", "moe.router.remoe.gamma=2"},
               {"moe.router.remoe.gamma"});
}

TEST(ConfigRouters, BadRouterValuesNameTheKey) {
  const std::string dm = with_router(kDirMoE);
  expect_error(dm, {"moe.router.k=5"}, {"moe.router.k", "[1, moe.num_experts = 4]"});
  expect_error(kBase, {"moe.router.type=probmoe", "moe.router.probmoe.mode=dynamic",
                       "moe.router.probmoe.k_min=3", "moe.router.probmoe.k_max=2"},
               {"moe.router.probmoe.k_min", "must not exceed moe.router.probmoe.k_max = 2"});
  expect_error(kBase, {"moe.router.type=probmoe", "moe.router.probmoe.mode=dynamic",
                       "moe.router.probmoe.k_max=5"},
               {"moe.router.probmoe.k_max", "[1, moe.num_experts = 4]"});
  expect_error(dm, {"moe.router.dirmoe.prior.m=1.2"}, {"moe.router.dirmoe.prior.m", "(0, 1)"});
  expect_error(dm, {"moe.router.dirmoe.prior.m=0"}, {"moe.router.dirmoe.prior.m", "(0, 1)"});
  expect_error(dm, {"moe.router.dirmoe.prior.m=0.25", "moe.router.k=1",
                    "moe.router.dirmoe.prior.h=0.2"},
               {"moe.router.dirmoe.prior.h", "(0.25, 1)", "1/E = 0.25"});
  expect_error(dm, {"moe.router.dirmoe.prior.h=1"}, {"moe.router.dirmoe.prior.h"});
  expect_error(dm, {"moe.router.dirmoe.beta=-0.1"}, {"moe.router.dirmoe.beta", ">= 0"});
  expect_error(dm, {"moe.router.dirmoe.lambda_sparsity=-1"},
               {"moe.router.dirmoe.lambda_sparsity", ">= 0"});
  expect_error(dm, {"moe.router.dirmoe.recon_weight=-1"}, {"moe.router.dirmoe.recon_weight"});
  expect_error(dm, {"moe.router.dirmoe.tau=-1"}, {"moe.router.dirmoe.tau", "> 0"});
  expect_error(dm, {"moe.router.dirmoe.tau={type: exponential, start: 0.5, rate: 0.9, floor: 1}"},
               {"moe.router.dirmoe.tau.floor", "must not exceed moe.router.dirmoe.tau.start"});
  expect_error(dm, {"moe.router.dirmoe.max_active=0"}, {"moe.router.dirmoe.max_active", ">= 1"});
  expect_error(dm, {"moe.router.dirmoe.alpha_floor=-1"}, {"moe.router.dirmoe.alpha_floor"});
  expect_error(dm, {"moe.router.dirmoe.tau={start: 1, decay: 2}"},
               {"moe.router.dirmoe.tau", "unknown key 'decay' in a schedule"});
  expect_error(dm, {"moe.router.dirmoe.tau={type: step}"},
               {"moe.router.dirmoe.tau", "unknown schedule type 'step'"});
  expect_error(dm, {"moe.router.dirmoe.eval=argmax"}, {"moe.router.dirmoe.eval", "argmax"});
  expect_error(dm, {"moe.router.probmoe.mode=sometimes", "moe.router.type=probmoe"},
               {"moe.router.probmoe.mode"});
  std::string typo = dm;
  typo.replace(typo.find("r_min:"), 6, "rmin:");
  expect_error(typo, {}, {"unknown key 'moe.router.dirmoe.rmin'", "test.yaml:"});
}

TEST(ConfigErrors, MissingFile) {
  try {
    load_config("/nonexistent/dir/x.yaml");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/x.yaml"), std::string::npos);
  }
}

}  // namespace
}  // namespace dirmoe
