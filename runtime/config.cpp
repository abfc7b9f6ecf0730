// YAML configuration loader: one schema table maps dotted keys to typed setters; the same table
// checks `--set` overrides, emits the resolved config and lists what exists in error messages.
#include "runtime/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "router/router.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

using Setter = std::function<void(Config&, const YAML::Node&)>;

const std::set<std::string>& sections() {
  static const std::set<std::string> s = {"model",
                                          "moe",
                                          "moe.router",
                                          "moe.router.dirmoe",
                                          "moe.router.dirmoe.prior",
                                          "moe.router.probmoe",
                                          "moe.router.remoe",
                                          "parallel",
                                          "experts",
                                          "train",
                                          "data",
                                          "output",
                                          "checkpoint",
                                          "monitor",
                                          "profile"};
  return s;
}

template <class V>
V as(const YAML::Node& n, const char* expected) {
  try {
    if (!n.IsScalar()) throw YAML::Exception(n.Mark(), "not a scalar");
    return n.as<V>();
  } catch (const YAML::Exception&) {
    std::ostringstream got;
    got << (n.IsScalar() ? "'" + n.Scalar() + "'" : n.IsSequence() ? std::string("a list")
                                                   : n.IsMap() ? std::string("a mapping")
                                                               : std::string("nothing"));
    throw std::invalid_argument(std::string("expected ") + expected + ", got " + got.str());
  }
}

bool parse_bool(const YAML::Node& n) { return as<bool>(n, "true or false"); }

std::vector<std::vector<int>> parse_placement(const YAML::Node& n) {
  std::vector<std::vector<int>> out;
  if (n.IsNull()) return out;
  if (!n.IsSequence()) throw std::invalid_argument("expected a list of expert lists, one per EP rank");
  for (const auto& row : n) {
    if (!row.IsSequence())
      throw std::invalid_argument("expected a list of expert lists, e.g. [[0, 1], [2, 3]]");
    std::vector<int> r;
    for (const auto& e : row) r.push_back(as<int>(e, "an expert index"));
    out.push_back(std::move(r));
  }
  return out;
}

// data.paths: [p1, p2] (equal weights), or Megatron style [w1, p1, w2, p2], or [{path, weight}].
std::vector<data::DataSource> parse_paths(const YAML::Node& n) {
  std::vector<data::DataSource> out;
  if (n.IsScalar()) return {{1.0, n.Scalar()}};
  if (!n.IsSequence()) throw std::invalid_argument("expected a path or a list of paths");
  bool weighted = n.size() > 0 && n[0].IsScalar() && [&] {
    try {
      n[0].as<double>();
      return true;
    } catch (const YAML::Exception&) {
      return false;
    }
  }();
  if (weighted) {
    if (n.size() % 2 != 0)
      throw std::invalid_argument("weighted paths must come in pairs: [w1, path1, w2, path2, ...]");
    for (size_t i = 0; i < n.size(); i += 2)
      out.push_back({as<double>(n[i], "a blend weight"), as<std::string>(n[i + 1], "a path")});
    return out;
  }
  for (const auto& item : n) {
    if (item.IsMap()) {
      data::DataSource s;
      for (const auto& kv : item) {
        std::string k = kv.first.Scalar();
        if (k == "path") s.path = as<std::string>(kv.second, "a path");
        else if (k == "weight") s.weight = as<double>(kv.second, "a blend weight");
        else throw std::invalid_argument("unknown key '" + k + "' in a data source (path, weight)");
      }
      if (s.path.empty()) throw std::invalid_argument("a data source needs a path");
      out.push_back(s);
    } else {
      out.push_back({1.0, as<std::string>(item, "a path")});
    }
  }
  return out;
}

// data.split: a held-out fraction in (0, 1), or Megatron's "train,valid[,test]" weights.
double parse_split(const YAML::Node& n) {
  std::string s = as<std::string>(n, "a fraction or \"train,valid\" weights");
  if (s.find(',') == std::string::npos) return as<double>(n, "a fraction or \"train,valid\" weights");
  std::vector<double> w;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    try {
      w.push_back(std::stod(part));
    } catch (...) {
      throw std::invalid_argument("split weights must be numbers, got '" + s + "'");
    }
  }
  double total = 0;
  for (double x : w) total += x;
  if (w.size() < 2 || total <= 0)
    throw std::invalid_argument("split needs at least train,valid weights, got '" + s + "'");
  return w[1] / total;
}

// A router schedule: a number (constant) or a mapping {type, start, end, steps, rate, floor};
// fields not given keep their current value.
void parse_schedule(const YAML::Node& n, Schedule& s) {
  if (n.IsScalar()) {
    s = Schedule::constant(as<double>(n, "a number or a schedule mapping"));
    return;
  }
  if (!n.IsMap())
    throw std::invalid_argument(
        "expected a number or a schedule {type: constant|linear|cosine|exponential, start, end, "
        "steps, rate, floor}");
  for (const auto& kv : n) {
    const std::string k = kv.first.Scalar();
    if (k == "type") s.type = parse_schedule_type(as<std::string>(kv.second, "a schedule type"));
    else if (k == "start") s.start = as<double>(kv.second, "a number for start");
    else if (k == "end") s.end = as<double>(kv.second, "a number for end");
    else if (k == "steps") s.steps = as<int64_t>(kv.second, "an integer for steps");
    else if (k == "rate") s.rate = as<double>(kv.second, "a number for rate");
    else if (k == "floor") s.floor = as<double>(kv.second, "a number for floor");
    else
      throw std::invalid_argument("unknown key '" + k +
                                  "' in a schedule (type, start, end, steps, rate, floor)");
  }
}

const std::map<std::string, Setter>& schema() {
#define F(key, body) {key, [](Config& c, const YAML::Node& n) { body; }}
  static const std::map<std::string, Setter> s = {
      F("device", c.device = as<std::string>(n, "cpu|auto")),
      F("model.vocab_size", c.model.vocab_size = as<int64_t>(n, "an integer")),
      F("model.vocab_multiple", c.model.vocab_multiple = as<int64_t>(n, "an integer")),
      F("model.hidden", c.model.hidden = as<int64_t>(n, "an integer")),
      F("model.layers", c.model.layers = as<int>(n, "an integer")),
      F("model.heads", c.model.heads = as<int>(n, "an integer")),
      F("model.kv_heads", c.model.kv_heads = as<int>(n, "an integer")),
      F("model.ffn_hidden", c.model.ffn_hidden = as<int64_t>(n, "an integer")),
      F("model.rope_base", c.model.rope_base = as<double>(n, "a number")),
      F("model.init_std", c.model.init_std = as<double>(n, "a number")),
      F("model.seq_len", c.model.seq_len = as<int64_t>(n, "an integer")),
      F("model.norm_eps", c.model.norm_eps = as<double>(n, "a number")),
      F("model.dtype", c.model.dtype = as<std::string>(n, "f32|f64|bf16")),
      F("moe.num_experts", c.moe.num_experts = as<int>(n, "an integer")),
      F("moe.capacity_factor",
        c.moe.capacity_factor = (n.IsNull() || (n.IsScalar() && n.Scalar() == "none"))
                                    ? 0.0
                                    : as<double>(n, "a number or none")),
      F("moe.router.type", c.moe.router.type = as<std::string>(n, "a router type")),
      F("moe.router.k", c.moe.router.k = as<int>(n, "an integer")),
      F("moe.router.renormalize", c.moe.router.renormalize = parse_bool(n)),
      F("moe.router.aux_loss_coef", c.moe.router.aux_loss_coef = as<double>(n, "a number")),
      F("moe.router.z_loss_coef", c.moe.router.z_loss_coef = as<double>(n, "a number")),
      F("moe.router.dirmoe.tau", parse_schedule(n, c.moe.router.dirmoe.tau)),
      F("moe.router.dirmoe.r_min", c.moe.router.dirmoe.r_min = as<double>(n, "a number")),
      F("moe.router.dirmoe.max_active",
        c.moe.router.dirmoe.max_active = as<int>(n, "an integer")),
      F("moe.router.dirmoe.lambda_q", parse_schedule(n, c.moe.router.dirmoe.lambda_q)),
      F("moe.router.dirmoe.alpha_floor",
        c.moe.router.dirmoe.alpha_floor = as<double>(n, "a number")),
      F("moe.router.dirmoe.prior.m", c.moe.router.dirmoe.prior.m = as<double>(n, "a number")),
      F("moe.router.dirmoe.prior.h", c.moe.router.dirmoe.prior.h = as<double>(n, "a number")),
      F("moe.router.dirmoe.prior.a_hi",
        c.moe.router.dirmoe.prior.a_hi = as<double>(n, "a number")),
      F("moe.router.dirmoe.prior.a_lo",
        c.moe.router.dirmoe.prior.a_lo = as<double>(n, "a number")),
      F("moe.router.dirmoe.prior.lambda_p",
        c.moe.router.dirmoe.prior.lambda_p = as<double>(n, "a number")),
      F("moe.router.dirmoe.beta", parse_schedule(n, c.moe.router.dirmoe.beta)),
      F("moe.router.dirmoe.recon_weight", parse_schedule(n, c.moe.router.dirmoe.recon_weight)),
      F("moe.router.dirmoe.lambda_sparsity",
        parse_schedule(n, c.moe.router.dirmoe.lambda_sparsity)),
      F("moe.router.dirmoe.sparsity_on",
        c.moe.router.dirmoe.sparsity_on = as<std::string>(n, "sample|expected")),
      F("moe.router.dirmoe.eval", c.moe.router.dirmoe.eval = as<std::string>(n, "gate|soft|sample")),
      F("moe.router.dirmoe.gamma_sampler",
        c.moe.router.dirmoe.gamma_sampler = as<std::string>(n, "marsaglia_tsang|inverse_cdf")),
      F("moe.router.probmoe.mode", c.moe.router.probmoe.mode = as<std::string>(n, "exact|dynamic")),
      F("moe.router.probmoe.k_min", c.moe.router.probmoe.k_min = as<int>(n, "an integer")),
      F("moe.router.probmoe.k_max", c.moe.router.probmoe.k_max = as<int>(n, "an integer")),
      F("moe.router.remoe.lambda_init",
        c.moe.router.remoe.lambda_init = as<double>(n, "a number")),
      F("moe.router.remoe.alpha", c.moe.router.remoe.alpha = as<double>(n, "a number")),
      F("parallel.ep", c.parallel.ep = as<int>(n, "an integer")),
      F("experts.placement", c.parallel.placement = parse_placement(n)),
      F("train.micro_batch", c.train.micro_batch = as<int64_t>(n, "an integer")),
      F("train.grad_accum", c.train.grad_accum = as<int>(n, "an integer")),
      F("train.steps", c.train.steps = as<int64_t>(n, "an integer")),
      F("train.lr", c.train.lr = as<double>(n, "a number")),
      F("train.warmup", c.train.warmup = as<int64_t>(n, "an integer")),
      F("train.min_lr", c.train.min_lr = as<double>(n, "a number")),
      F("train.weight_decay", c.train.weight_decay = as<double>(n, "a number")),
      F("train.betas",
        if (!n.IsSequence() || n.size() != 2) throw std::invalid_argument(
            "expected [beta1, beta2]");
        c.train.beta1 = as<double>(n[0], "a number"); c.train.beta2 = as<double>(n[1], "a number")),
      F("train.eps", c.train.eps = as<double>(n, "a number")),
      F("train.clip", c.train.clip = as<double>(n, "a number")),
      F("train.seed", c.train.seed = as<uint64_t>(n, "a non-negative integer")),
      F("train.eval_interval", c.train.eval_interval = as<int64_t>(n, "an integer")),
      F("train.eval_batches", c.train.eval_batches = as<int64_t>(n, "an integer")),
      F("train.log_interval", c.train.log_interval = as<int64_t>(n, "an integer")),
      F("train.stop_at", c.train.stop_at = as<int64_t>(n, "an integer")),
      F("data.paths", c.data.sources = parse_paths(n)),
      F("data.split", c.data.valid_fraction = parse_split(n)),
      F("output.run_dir", c.output.run_dir = as<std::string>(n, "a directory")),
      F("output.tensorboard", c.output.tensorboard = parse_bool(n)),
      F("train.max_nonfinite_steps", c.train.max_nonfinite_steps = as<int>(n, "an integer")),
      F("train.watchdog_s", c.train.watchdog_s = as<double>(n, "a number of seconds")),
      F("checkpoint.interval", c.checkpoint.interval = as<int64_t>(n, "an integer")),
      F("checkpoint.keep", c.checkpoint.keep = as<int>(n, "an integer")),
      F("checkpoint.at_end", c.checkpoint.at_end = parse_bool(n)),
      F("checkpoint.dir", c.checkpoint.dir = n.IsNull() ? "" : as<std::string>(n, "a directory")),
      F("checkpoint.resume", c.checkpoint.resume = n.IsNull() ? "" : as<std::string>(n, "auto or a checkpoint directory")),
      F("monitor.max_over_mean", c.monitor.max_over_mean = as<double>(n, "a number")),
      F("monitor.patience", c.monitor.patience = as<int64_t>(n, "an integer")),
      F("monitor.dead_window", c.monitor.dead_window = as<int64_t>(n, "an integer")),
      F("profile.every", c.profile.every = as<int64_t>(n, "an integer")),
      F("profile.steps",
        if (n.IsNull()) { c.profile.first = c.profile.last = 0; return; }
        if (!n.IsSequence() || n.size() != 2) throw std::invalid_argument(
            "expected [first, last] (1-based steps) or null");
        c.profile.first = as<int64_t>(n[0], "an integer"); c.profile.last = as<int64_t>(n[1], "an integer")),
      F("profile.trace", c.profile.trace = parse_bool(n)),
  };
#undef F
  return s;
}

std::string known_keys_under(const std::string& prefix) {
  std::string out;
  for (const auto& [k, _] : schema()) {
    if (prefix.empty() ? k.find('.') == std::string::npos : k.rfind(prefix + ".", 0) == 0) {
      std::string rest = prefix.empty() ? k : k.substr(prefix.size() + 1);
      out += (out.empty() ? "" : ", ") + rest;
    }
  }
  for (const auto& s : sections())
    if (prefix.empty() && s.find('.') == std::string::npos) out += ", " + s;
  return out;
}

struct Walker {
  Config& cfg;
  const std::string& origin;
  const std::set<std::string>& overridden;

  std::string where(const std::string& path, const YAML::Node& node) const {
    if (overridden.count(path)) return "--set " + path;
    return origin + ":" + std::to_string(node.Mark().line + 1);
  }

  void walk(const YAML::Node& map, const std::string& prefix) {
    for (const auto& kv : map) {
      std::string key = kv.first.Scalar();
      std::string path = prefix.empty() ? key : prefix + "." + key;
      auto it = schema().find(path);
      if (it != schema().end()) {
        try {
          it->second(cfg, kv.second);
        } catch (const std::invalid_argument& e) {
          DIRMOE_FAIL(where(path, kv.first), ": key '", path, "': ", e.what());
        }
      } else if (sections().count(path)) {
        if (kv.second.IsNull()) continue;
        if (!kv.second.IsMap())
          DIRMOE_FAIL(where(path, kv.first), ": section '", path, "' must be a mapping");
        walk(kv.second, path);
      } else {
        DIRMOE_FAIL(where(path, kv.first), ": unknown key '", path, "' (known here: ",
                    known_keys_under(prefix), ")");
      }
    }
  }
};

void apply_override(YAML::Node& root, const std::string& assignment, std::set<std::string>& seen) {
  auto eq = assignment.find('=');
  DIRMOE_CHECK(eq != std::string::npos && eq > 0, "--set expects key=value, got '", assignment, "'");
  std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  DIRMOE_CHECK(schema().count(path), "--set ", path, ": no such configuration key");
  YAML::Node parsed;
  try {
    parsed = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    DIRMOE_FAIL("--set ", path, ": value '", value, "' is not valid YAML: ", e.msg);
  }
  // Walk/create the parent maps; yaml-cpp nodes are handles, so assign through copies.
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  std::vector<YAML::Node> chain = {root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsMap()) {
      YAML::Node fresh(YAML::NodeType::Map);
      chain.back()[parts[i]] = fresh;
      next = chain.back()[parts[i]];
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = parsed;
  seen.insert(path);
}

void check_range(bool ok, const char* key, const std::string& what) {
  if (!ok) DIRMOE_FAIL("config: ", key, ": ", what);
}

void validate(const Config& c) {
  const auto& m = c.model;
  auto num = [](auto v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  check_range(m.vocab_size >= 2, "model.vocab_size", "must be at least 2, got " + num(m.vocab_size));
  check_range(m.vocab_multiple >= 1, "model.vocab_multiple", "must be >= 1, got " + num(m.vocab_multiple));
  check_range(m.hidden >= 1, "model.hidden", "must be positive, got " + num(m.hidden));
  check_range(m.layers >= 1, "model.layers", "must be >= 1, got " + num(m.layers));
  check_range(m.heads >= 1, "model.heads", "must be >= 1, got " + num(m.heads));
  check_range(m.kv_heads >= 1, "model.kv_heads", "must be >= 1, got " + num(m.kv_heads));
  check_range(m.hidden % m.heads == 0, "model.heads",
              num(m.heads) + " heads do not divide model.hidden = " + num(m.hidden));
  check_range(m.heads % m.kv_heads == 0, "model.kv_heads",
              num(m.kv_heads) + " kv heads do not divide model.heads = " + num(m.heads));
  check_range(m.head_dim() % 2 == 0, "model.heads",
              "head dimension hidden/heads = " + num(m.head_dim()) + " must be even for RoPE");
  check_range(m.ffn_hidden >= 1, "model.ffn_hidden", "must be positive, got " + num(m.ffn_hidden));
  check_range(m.rope_base > 1, "model.rope_base", "must be > 1, got " + num(m.rope_base));
  check_range(m.init_std > 0 && std::isfinite(m.init_std), "model.init_std",
              "must be positive, got " + num(m.init_std));
  check_range(m.seq_len >= 1, "model.seq_len", "must be >= 1, got " + num(m.seq_len));
  check_range(m.norm_eps > 0, "model.norm_eps", "must be positive, got " + num(m.norm_eps));
  check_range(m.dtype == "f32" || m.dtype == "f64" || m.dtype == "bf16", "model.dtype",
              "must be f32, f64 or bf16, got '" + m.dtype + "'");
  const auto& e = c.moe;
  check_range(e.num_experts >= 1, "moe.num_experts", "must be >= 1, got " + num(e.num_experts));
  check_range(e.capacity_factor >= 0, "moe.capacity_factor",
              "must be none or positive, got " + num(e.capacity_factor));
  validate_router_config(e.router, m.hidden, e.num_experts);  // names the moe.router.* key
  const auto& p = c.parallel;
  check_range(p.ep >= 1, "parallel.ep", "must be >= 1, got " + num(p.ep));
  if (p.placement.empty()) {
    check_range(e.num_experts % p.ep == 0, "parallel.ep",
                "ep = " + num(p.ep) + " does not divide moe.num_experts = " + num(e.num_experts) +
                    " (give experts.placement for an uneven split)");
  } else {
    check_range(static_cast<int>(p.placement.size()) == p.ep, "experts.placement",
                "has " + num(p.placement.size()) + " lists but parallel.ep = " + num(p.ep));
    try {
      Placement::explicit_lists(e.num_experts, p.placement);
    } catch (const Error& err) {
      DIRMOE_FAIL("config: experts.placement: ", err.what());
    }
  }
  const auto& t = c.train;
  check_range(t.micro_batch >= 1, "train.micro_batch", "must be >= 1, got " + num(t.micro_batch));
  check_range(t.grad_accum >= 1, "train.grad_accum", "must be >= 1, got " + num(t.grad_accum));
  check_range(t.steps >= 1, "train.steps", "must be >= 1, got " + num(t.steps));
  check_range(t.lr > 0 && std::isfinite(t.lr), "train.lr", "must be positive, got " + num(t.lr));
  check_range(t.warmup >= 0, "train.warmup", "must be >= 0, got " + num(t.warmup));
  check_range(t.min_lr >= 0 && t.min_lr <= t.lr, "train.min_lr",
              "must lie in [0, train.lr = " + num(t.lr) + "], got " + num(t.min_lr));
  check_range(t.weight_decay >= 0, "train.weight_decay", "must be >= 0, got " + num(t.weight_decay));
  check_range(t.beta1 >= 0 && t.beta1 < 1, "train.betas", "beta1 must lie in [0, 1), got " + num(t.beta1));
  check_range(t.beta2 >= 0 && t.beta2 < 1, "train.betas", "beta2 must lie in [0, 1), got " + num(t.beta2));
  check_range(t.eps > 0, "train.eps", "must be positive, got " + num(t.eps));
  check_range(t.clip >= 0, "train.clip", "must be >= 0 (0 = off), got " + num(t.clip));
  check_range(t.eval_interval >= 0, "train.eval_interval", "must be >= 0, got " + num(t.eval_interval));
  check_range(t.eval_batches >= 1, "train.eval_batches", "must be >= 1, got " + num(t.eval_batches));
  check_range(t.log_interval >= 1, "train.log_interval", "must be >= 1, got " + num(t.log_interval));
  check_range(t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps",
              "must be >= 1, got " + num(t.max_nonfinite_steps));
  check_range(t.watchdog_s >= 0 && std::isfinite(t.watchdog_s), "train.watchdog_s",
              "must be >= 0 (0 = off), got " + num(t.watchdog_s));
  check_range(c.checkpoint.interval >= 0, "checkpoint.interval",
              "must be >= 0 (0 = only at the end), got " + num(c.checkpoint.interval));
  check_range(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1, got " + num(c.checkpoint.keep));
  check_range(t.stop_at >= 0 && t.stop_at <= t.steps, "train.stop_at",
              "must lie in [0, train.steps = " + num(t.steps) + "], got " + num(t.stop_at));
  check_range(!c.data.sources.empty(), "data.paths", "no data source given");
  double total = 0;
  for (const auto& s : c.data.sources) {
    check_range(s.weight >= 0 && std::isfinite(s.weight), "data.paths",
                "blend weight of " + s.path + " must be >= 0, got " + num(s.weight));
    total += s.weight;
  }
  check_range(total > 0, "data.paths", "blend weights are all zero");
  check_range(c.data.valid_fraction > 0 && c.data.valid_fraction < 1, "data.split",
              "held-out fraction must lie in (0, 1), got " + num(c.data.valid_fraction));
  check_range(c.device == "cpu" || c.device == "auto" || c.device == "cuda", "device",
              "must be cpu, cuda or auto, got '" + c.device + "'");
  check_range(c.model.dtype != "bf16" || c.device != "cpu", "model.dtype",
              "bf16 runs on the GPU only (device: cuda or auto); the CPU backend takes f32 or f64");
  check_range(c.model.dtype != "f64" || c.device != "cuda", "model.dtype",
              "f64 runs on the CPU only; the GPU takes bf16 (or f32 for parity runs)");
  check_range(!c.output.run_dir.empty(), "output.run_dir", "must not be empty");
  check_range(c.monitor.max_over_mean >= 1 || c.monitor.max_over_mean == 0, "monitor.max_over_mean",
              "must be >= 1 (0 = no warnings), got " + num(c.monitor.max_over_mean));
  check_range(c.monitor.patience >= 1, "monitor.patience", "must be >= 1, got " + num(c.monitor.patience));
  check_range(c.monitor.dead_window >= 1, "monitor.dead_window",
              "must be >= 1, got " + num(c.monitor.dead_window));
  check_range(c.profile.every >= 0, "profile.every", "must be >= 0 (0 = off), got " + num(c.profile.every));
  check_range(c.profile.first == 0 || (c.profile.first >= 1 && c.profile.last >= c.profile.first),
              "profile.steps", "must be [first, last] with 1 <= first <= last, got [" +
                                   num(c.profile.first) + ", " + num(c.profile.last) + "]");
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides,
                    const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    DIRMOE_FAIL(origin, ":", e.mark.line + 1, ":", e.mark.column + 1, ": malformed YAML: ", e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  DIRMOE_CHECK(root.IsMap(), origin, ": the configuration must be a mapping of sections");
  std::set<std::string> overridden;
  for (const auto& o : overrides) apply_override(root, o, overridden);
  Config cfg;
  cfg.source = origin;
  Walker{cfg, origin, overridden}.walk(root, "");
  validate(cfg);
  return cfg;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  DIRMOE_CHECK(in.good(), "cannot read config file '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), overrides, path);
}

void validate_for_world(const Config& cfg, int world_size) {
  if (world_size % cfg.parallel.ep != 0)
    DIRMOE_FAIL("config: parallel.ep = ", cfg.parallel.ep, " does not divide the number of ranks (",
                world_size, ")");
}

std::string to_yaml(const Config& c) {
  YAML::Emitter y;
  y.SetDoublePrecision(10);
  y << YAML::BeginMap;
  y << YAML::Key << "device" << YAML::Value << c.device;
  y << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "vocab_size" << YAML::Value << c.model.vocab_size;
  y << YAML::Key << "vocab_multiple" << YAML::Value << c.model.vocab_multiple;
  y << YAML::Key << "hidden" << YAML::Value << c.model.hidden;
  y << YAML::Key << "layers" << YAML::Value << c.model.layers;
  y << YAML::Key << "heads" << YAML::Value << c.model.heads;
  y << YAML::Key << "kv_heads" << YAML::Value << c.model.kv_heads;
  y << YAML::Key << "ffn_hidden" << YAML::Value << c.model.ffn_hidden;
  y << YAML::Key << "rope_base" << YAML::Value << c.model.rope_base;
  y << YAML::Key << "init_std" << YAML::Value << c.model.init_std;
  y << YAML::Key << "seq_len" << YAML::Value << c.model.seq_len;
  y << YAML::Key << "norm_eps" << YAML::Value << c.model.norm_eps;
  y << YAML::Key << "dtype" << YAML::Value << c.model.dtype;
  y << YAML::EndMap;
  y << YAML::Key << "moe" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "num_experts" << YAML::Value << c.moe.num_experts;
  y << YAML::Key << "capacity_factor" << YAML::Value;
  if (c.moe.capacity_factor > 0) y << c.moe.capacity_factor; else y << "none";
  y << YAML::Key << "router" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "type" << YAML::Value << c.moe.router.type;
  y << YAML::Key << "k" << YAML::Value << c.moe.router.k;
  y << YAML::Key << "renormalize" << YAML::Value << c.moe.router.renormalize;
  y << YAML::Key << "aux_loss_coef" << YAML::Value << c.moe.router.aux_loss_coef;
  y << YAML::Key << "z_loss_coef" << YAML::Value << c.moe.router.z_loss_coef;
  auto schedule = [&y](const char* key, const Schedule& s) {
    y << YAML::Key << key << YAML::Value;
    if (s.type == ScheduleType::kConstant) {
      y << s.start;
      return;
    }
    y << YAML::Flow << YAML::BeginMap;
    y << YAML::Key << "type" << YAML::Value << schedule_type_name(s.type);
    y << YAML::Key << "start" << YAML::Value << s.start;
    if (s.type == ScheduleType::kExponential) {
      y << YAML::Key << "rate" << YAML::Value << s.rate;
      y << YAML::Key << "floor" << YAML::Value << s.floor;
    } else {
      y << YAML::Key << "end" << YAML::Value << s.end;
      y << YAML::Key << "steps" << YAML::Value << s.steps;
    }
    y << YAML::EndMap;
  };
  const DirMoEConfig& dm = c.moe.router.dirmoe;
  y << YAML::Key << "dirmoe" << YAML::Value << YAML::BeginMap;
  schedule("tau", dm.tau);
  y << YAML::Key << "r_min" << YAML::Value << dm.r_min;
  y << YAML::Key << "max_active" << YAML::Value << dm.max_active;
  schedule("lambda_q", dm.lambda_q);
  y << YAML::Key << "alpha_floor" << YAML::Value << dm.alpha_floor;
  y << YAML::Key << "prior" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "m" << YAML::Value << dm.prior.m;
  y << YAML::Key << "h" << YAML::Value << dm.prior.h;
  y << YAML::Key << "a_hi" << YAML::Value << dm.prior.a_hi;
  y << YAML::Key << "a_lo" << YAML::Value << dm.prior.a_lo;
  y << YAML::Key << "lambda_p" << YAML::Value << dm.prior.lambda_p;
  y << YAML::EndMap;
  schedule("beta", dm.beta);
  schedule("recon_weight", dm.recon_weight);
  schedule("lambda_sparsity", dm.lambda_sparsity);
  y << YAML::Key << "sparsity_on" << YAML::Value << dm.sparsity_on;
  y << YAML::Key << "eval" << YAML::Value << dm.eval;
  y << YAML::Key << "gamma_sampler" << YAML::Value << dm.gamma_sampler;
  y << YAML::EndMap;
  y << YAML::Key << "probmoe" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "mode" << YAML::Value << c.moe.router.probmoe.mode;
  y << YAML::Key << "k_min" << YAML::Value << c.moe.router.probmoe.k_min;
  y << YAML::Key << "k_max" << YAML::Value << c.moe.router.probmoe.k_max;
  y << YAML::EndMap;
  y << YAML::Key << "remoe" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "lambda_init" << YAML::Value << c.moe.router.remoe.lambda_init;
  y << YAML::Key << "alpha" << YAML::Value << c.moe.router.remoe.alpha;
  y << YAML::EndMap;
  y << YAML::EndMap << YAML::EndMap;
  y << YAML::Key << "parallel" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "ep" << YAML::Value << c.parallel.ep << YAML::EndMap;
  y << YAML::Key << "experts" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "placement" << YAML::Value;
  if (c.parallel.placement.empty()) {
    y << YAML::Null;
  } else {
    y << YAML::Flow << YAML::BeginSeq;
    for (const auto& row : c.parallel.placement) y << YAML::Flow << row;
    y << YAML::EndSeq;
  }
  y << YAML::EndMap;
  const auto& t = c.train;
  y << YAML::Key << "train" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "micro_batch" << YAML::Value << t.micro_batch;
  y << YAML::Key << "grad_accum" << YAML::Value << t.grad_accum;
  y << YAML::Key << "steps" << YAML::Value << t.steps;
  y << YAML::Key << "lr" << YAML::Value << t.lr;
  y << YAML::Key << "warmup" << YAML::Value << t.warmup;
  y << YAML::Key << "min_lr" << YAML::Value << t.min_lr;
  y << YAML::Key << "weight_decay" << YAML::Value << t.weight_decay;
  y << YAML::Key << "betas" << YAML::Value << YAML::Flow << std::vector<double>{t.beta1, t.beta2};
  y << YAML::Key << "eps" << YAML::Value << t.eps;
  y << YAML::Key << "clip" << YAML::Value << t.clip;
  y << YAML::Key << "seed" << YAML::Value << t.seed;
  y << YAML::Key << "eval_interval" << YAML::Value << t.eval_interval;
  y << YAML::Key << "eval_batches" << YAML::Value << t.eval_batches;
  y << YAML::Key << "log_interval" << YAML::Value << t.log_interval;
  y << YAML::Key << "stop_at" << YAML::Value << t.stop_at;
  y << YAML::Key << "max_nonfinite_steps" << YAML::Value << t.max_nonfinite_steps;
  y << YAML::Key << "watchdog_s" << YAML::Value << t.watchdog_s;
  y << YAML::EndMap;
  y << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "paths" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const auto& s : c.data.sources) y << s.weight << s.path;
  y << YAML::EndSeq;
  y << YAML::Key << "split" << YAML::Value << c.data.valid_fraction << YAML::EndMap;
  y << YAML::Key << "output" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "run_dir" << YAML::Value << c.output.run_dir;
  y << YAML::Key << "tensorboard" << YAML::Value << c.output.tensorboard << YAML::EndMap;
  const auto& ck = c.checkpoint;
  y << YAML::Key << "checkpoint" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "interval" << YAML::Value << ck.interval;
  y << YAML::Key << "keep" << YAML::Value << ck.keep;
  y << YAML::Key << "at_end" << YAML::Value << ck.at_end;
  y << YAML::Key << "dir" << YAML::Value;
  if (ck.dir.empty()) y << YAML::Null; else y << ck.dir;
  y << YAML::Key << "resume" << YAML::Value;
  if (ck.resume.empty()) y << YAML::Null; else y << ck.resume;
  y << YAML::EndMap;
  y << YAML::Key << "monitor" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "max_over_mean" << YAML::Value << c.monitor.max_over_mean;
  y << YAML::Key << "patience" << YAML::Value << c.monitor.patience;
  y << YAML::Key << "dead_window" << YAML::Value << c.monitor.dead_window << YAML::EndMap;
  y << YAML::Key << "profile" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "every" << YAML::Value << c.profile.every;
  y << YAML::Key << "steps" << YAML::Value;
  if (c.profile.first > 0) y << YAML::Flow << std::vector<int64_t>{c.profile.first, c.profile.last};
  else y << YAML::Null;
  y << YAML::Key << "trace" << YAML::Value << c.profile.trace << YAML::EndMap;
  y << YAML::EndMap;
  return std::string(y.c_str()) + "\n";
}

ParamCounts count_params(const Config& c) {
  const auto& m = c.model;
  int64_t d = m.hidden, hd = m.head_dim(), Vp = m.padded_vocab(), E = c.moe.num_experts;
  int64_t attn = d * (m.heads * hd) * 2 + d * (m.kv_heads * hd) * 2 + 2 * d;  // q,o,k,v, 2 norms
  // topk, probmoe, remoe: gate logits [E, d] (remoe: k is its target). dirmoe: heads [3E, d] (l,
  // a_hi, a_lo) and the reconstruction decoder [d, E] with bias [d].
  int64_t router = c.moe.router.type == "dirmoe" ? 3 * E * d + E * d + d : E * d;
  int64_t expert = 3 * d * m.ffn_hidden;
  ParamCounts p;
  int64_t per_layer_dense = attn + router;
  int64_t embed = Vp * d, head = Vp * d, final_norm = d;
  p.expert = m.layers * E * expert;
  p.total = embed + head + final_norm + m.layers * per_layer_dense + p.expert;
  p.active = embed + head + final_norm + m.layers * (per_layer_dense + c.moe.router.k * expert);
  int64_t max_local = 0;
  if (c.parallel.placement.empty()) {
    max_local = E / std::max(1, c.parallel.ep);
  } else {
    for (const auto& row : c.parallel.placement) max_local = std::max<int64_t>(max_local, row.size());
  }
  p.per_rank = embed + head + final_norm + m.layers * (per_layer_dense + max_local * expert);
  return p;
}

MemoryEstimate estimate_memory(const Config& c) {
  const auto& m = c.model;
  // bf16 (GPU): fp32 master weights plus their bf16 copy, fp32 gradients and moments, bf16
  // activations.
  const bool bf16 = m.dtype == "bf16";
  int64_t elem = m.dtype == "f64" ? 8 : bf16 ? 2 : 4;
  ParamCounts p = count_params(c);
  MemoryEstimate mem;
  mem.params = p.per_rank * (bf16 ? 6 : elem);
  mem.grads = p.per_rank * (bf16 ? 4 : elem);
  mem.optimizer = 2 * p.per_rank * (bf16 ? 4 : elem);
  int64_t N = c.train.micro_batch * m.seq_len, d = m.hidden, k = c.moe.router.k;
  int64_t kv = m.kv_heads * m.head_dim();
  // Saved per layer: norms, q/k/v/attention output, MoE input/output, k routed copies through the
  // expert (input, gate, up, activation, output); then final norm and logits (+ their gradient).
  int64_t per_layer = N * (6 * d + 2 * kv) + N * k * (2 * d + 3 * m.ffn_hidden);
  // The GPU keeps one logits buffer (its gradient overwrites it in place).
  mem.activations = elem * (m.layers * per_layer + N * d * 2 + (bf16 ? 1 : 2) * N * m.padded_vocab());
  return mem;
}

}  // namespace dirmoe
