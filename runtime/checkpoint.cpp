// Checkpoint writer and loader (see checkpoint.h).
#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "experts/placement.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/safetensors.h"

namespace dirmoe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kFormatVersion = 1;
constexpr const char* kReplicatedFile = "replicated.safetensors";
constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kManifestFile = "manifest.json";

// Keys that define the tensors: a checkpoint written with other values cannot be loaded.
const char* const kModelKeys[] = {"model.vocab_size", "model.vocab_multiple", "model.hidden",
                                  "model.layers",     "model.heads",          "model.kv_heads",
                                  "model.ffn_hidden", "model.dtype",          "moe.num_experts",
                                  "moe.router.type"};
// Keys that do not change what a step computes (launch shape, logging, checkpointing, the stop).
bool run_only_key(const std::string& k) {
  for (const char* p : {"output.", "checkpoint.", "parallel.", "experts."})
    if (k.rfind(p, 0) == 0) return true;
  for (const char* p : {"train.stop_at", "train.log_interval", "train.eval_interval",
                        "train.eval_batches", "train.watchdog_s", "train.max_nonfinite_steps",
                        "train.micro_batch", "train.grad_accum", "device"})
    if (k == p) return true;
  return false;
}

void flatten(const YAML::Node& n, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (n.IsMap()) {
    for (const auto& kv : n)
      flatten(kv.second, prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar(),
              out);
    return;
  }
  YAML::Emitter e;
  e << YAML::Flow << n;
  out[prefix] = e.c_str();
}

std::map<std::string, std::string> flat_config(const Config& cfg) {
  std::map<std::string, std::string> out;
  flatten(YAML::Load(to_yaml(cfg)), "", out);
  return out;
}

std::string errno_str() { return std::strerror(errno); }

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  DIRMOE_CHECK(fd >= 0, "cannot open '", path, "' to fsync it: ", errno_str());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  DIRMOE_CHECK(rc == 0 || err == EINVAL || err == EROFS, "cannot fsync '", path,
               "': ", std::strerror(err));
}

void write_synced(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DIRMOE_CHECK(fd >= 0, "cannot create '", path, "': ", errno_str());
  size_t done = 0;
  while (done < text.size()) {
    ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      std::string msg = w < 0 ? errno_str() : "short write";
      ::close(fd);
      ::unlink(path.c_str());
      DIRMOE_FAIL("cannot write '", path, "': ", msg);
    }
    done += static_cast<size_t>(w);
  }
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != EROFS) {
    ::unlink(path.c_str());
    DIRMOE_FAIL("cannot fsync '", path, "': ", std::strerror(err));
  }
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  DIRMOE_CHECK(in.good(), "cannot read '", path, "' (missing: an incomplete checkpoint?)");
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  DIRMOE_CHECK(!j.is_discarded() && j.is_object(), "'", path, "' is not valid JSON (corrupted?)");
  return j;
}

std::string expert_file(int ep_rank) {
  return "experts-ep" + std::to_string(ep_rank) + ".safetensors";
}
std::string moment_name(const char* which, const std::string& name) {
  return std::string("optimizer.") + which + "." + name;
}

// Every rank passes its own error ("" = fine); all get back the first one, prefixed with its rank.
std::string agree(Communicator& world, const std::string& local_error) {
  constexpr int64_t kLen = 1024;
  std::vector<char> mine(kLen, '\0'), all(static_cast<size_t>(kLen) * world.size(), '\0');
  std::strncpy(mine.data(), local_error.c_str(), kLen - 1);
  world.all_gather(mine.data(), all.data(), kLen, DType::kU8);
  for (int r = 0; r < world.size(); ++r) {
    std::string e(all.data() + static_cast<size_t>(r) * kLen);
    if (!e.empty()) return world.size() > 1 ? "rank " + std::to_string(r) + ": " + e : e;
  }
  return "";
}

std::string broadcast_string(Communicator& world, std::string s) {
  int64_t n = static_cast<int64_t>(s.size());
  world.broadcast(&n, 1, DType::kI64, 0);
  s.resize(static_cast<size_t>(n));
  if (n > 0) world.broadcast(s.data(), n, DType::kU8, 0);
  return s;
}

int64_t step_of(const std::string& name) {
  if (name.rfind("step_", 0) != 0 || name.size() == 5) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (int64_t{1} << 50)) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

}  // namespace

std::string checkpoint_root(const Config& cfg) {
  return cfg.checkpoint.dir.empty() ? (fs::path(cfg.output.run_dir) / "checkpoints").string()
                                    : cfg.checkpoint.dir;
}

std::vector<std::string> list_checkpoints(const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    int64_t s = step_of(it->path().filename().string());
    if (s >= 0 && fs::exists(it->path() / kManifestFile))
      found.emplace_back(s, it->path().string());
  }
  std::sort(found.begin(), found.end(), std::greater<>());
  std::vector<std::string> out;
  std::ifstream latest(fs::path(root) / "latest");
  std::string target;
  if (latest && std::getline(latest, target)) {
    for (const auto& [s, p] : found)
      if (fs::path(p).filename() == target) out.push_back(p);
  }
  for (const auto& [s, p] : found)
    if (out.empty() || p != out.front()) out.push_back(p);
  return out;
}

std::string config_hash(const Config& cfg) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (const auto& [k, v] : flat_config(cfg)) {
    if (run_only_key(k)) continue;
    for (char c : k + "=" + v + "\n") h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  }
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

template <class T>
Checkpointer<T>::Checkpointer(const Config& cfg, Communicator& world, Communicator& ep_comm,
                              int replica, std::vector<Parameter<T>*> params,
                              std::vector<Buffer<T>*> m, std::vector<Buffer<T>*> v)
    : cfg_(cfg),
      world_(world),
      ep_comm_(ep_comm),
      replica_(replica),
      params_(std::move(params)),
      m_(std::move(m)),
      v_(std::move(v)) {
  DIRMOE_CHECK(m_.size() == params_.size() && v_.size() == params_.size(),
               "checkpointer: moments do not match the parameters");
}

template <class T>
void Checkpointer<T>::write_own_files(const std::string& tmp, const TrainerState& state) {
  const DType dt = dtype_of<T>();
  auto add = [&](safetensors::Writer& w, size_t i) {
    const auto* p = params_[i];
    w.add(p->name, dt, p->shape, p->value.data());
    w.add(moment_name("exp_avg", p->name), dt, p->shape, m_[i]->data());
    w.add(moment_name("exp_avg_sq", p->name), dt, p->shape, v_[i]->data());
  };
  const std::string step = std::to_string(state.step);
  if (world_.rank() == 0) {
    safetensors::Writer w;
    w.set_metadata("format", "pt");
    w.set_metadata("dirmoe.step", step);
    for (size_t i = 0; i < params_.size(); ++i)
      if (params_[i]->kind == ParamKind::kReplicated) add(w, i);
    w.write((fs::path(tmp) / kReplicatedFile).string());
  }
  if (replica_ == 0) {
    safetensors::Writer w;
    w.set_metadata("format", "pt");
    w.set_metadata("dirmoe.step", step);
    for (size_t i = 0; i < params_.size(); ++i)
      if (params_[i]->kind == ParamKind::kExpert) add(w, i);
    w.write((fs::path(tmp) / expert_file(ep_comm_.rank())).string());
  }
}

template <class T>
std::string Checkpointer<T>::save(const TrainerState& state) {
  const fs::path root(checkpoint_root(cfg_));
  const std::string name = "step_" + std::to_string(state.step);
  const fs::path final_dir = root / name, tmp = root / (name + ".tmp");
  const bool lead = world_.rank() == 0;
  std::string previous = "none";
  if (lead) {
    auto existing = list_checkpoints(root.string());
    if (!existing.empty()) previous = existing.front();
  }
  auto fail = [&](const std::string& err) {
    if (lead) {
      std::error_code ec;
      fs::remove_all(tmp, ec);
    }
    DIRMOE_FAIL("checkpoint of step ", state.step, " could not be written to '", root.string(),
                "': ", err, "; the previous checkpoint (", broadcast_string(world_, previous),
                ") is untouched");
  };
  std::string err;
  if (lead) {
    try {
      std::error_code ec;
      fs::create_directories(root, ec);
      DIRMOE_CHECK(!ec, "cannot create '", root.string(), "': ", ec.message());
      fs::remove_all(tmp, ec);
      fs::create_directory(tmp, ec);
      DIRMOE_CHECK(!ec, "cannot create '", tmp.string(), "': ", ec.message());
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  if (!(err = agree(world_, err)).empty()) fail(err);
  try {
    write_own_files(tmp.string(), state);
  } catch (const std::exception& e) {
    err = e.what();
    log_error("checkpoint: ", err);
  }
  if (!(err = agree(world_, err)).empty()) fail(err);

  if (lead) {
    try {
      // Which EP rank's file holds which global expert (the placement that wrote it).
      json experts = json::object();
      const int ep = cfg_.parallel.ep;
      Placement placement =
          cfg_.parallel.placement.empty()
              ? Placement::contiguous(cfg_.moe.num_experts, ep)
              : Placement::explicit_lists(cfg_.moe.num_experts, cfg_.parallel.placement);
      for (int r = 0; r < ep; ++r) experts[expert_file(r)] = placement.local_experts(r);
      json st = {
          {"format", "dirmoe-checkpoint"},
          {"version", kFormatVersion},
          {"step", state.step},
          {"next_sample", state.next_sample},
          {"global_batch", state.global_batch},
          {"seed", state.seed},
          {"philox", {{"key", state.seed}, {"counters", "(step, layer, global token, expert)"}}},
          {"lr", state.lr},
          {"consecutive_nonfinite", state.consecutive_nonfinite},
          {"remoe_lambda", state.remoe_lambda},
          {"dtype", cfg_.model.dtype},
          {"ep", ep},
          {"world_size", world_.size()},
          {"config_hash", config_hash(cfg_)},
          {"config", flat_config(cfg_)},
          {"config_yaml", to_yaml(cfg_)},
          {"expert_files", experts}};
      write_synced((tmp / kStateFile).string(), st.dump(2) + "\n");
      json files = json::object();
      for (const auto& entry : fs::directory_iterator(tmp))
        files[entry.path().filename().string()] = {{"bytes", fs::file_size(entry.path())}};
      json manifest = {{"format", "dirmoe-checkpoint"},
                       {"version", kFormatVersion},
                       {"step", state.step},
                       {"files", files}};
      write_synced((tmp / kManifestFile).string(), manifest.dump(2) + "\n");
      fsync_path(tmp.string(), true);
      std::error_code ec;
      fs::path old = root / (name + ".old");
      if (fs::exists(final_dir)) {
        fs::remove_all(old, ec);
        fs::rename(final_dir, old, ec);
        DIRMOE_CHECK(!ec, "cannot move the existing '", final_dir.string(),
                     "' aside: ", ec.message());
      }
      fs::rename(tmp, final_dir, ec);
      DIRMOE_CHECK(!ec, "cannot rename '", tmp.string(), "' to '", final_dir.string(),
                   "': ", ec.message());
      fsync_path(root.string(), true);
      fs::remove_all(old, ec);
      write_synced((root / "latest.tmp").string(), name + "\n");
      fs::rename(root / "latest.tmp", root / "latest", ec);
      DIRMOE_CHECK(!ec, "cannot replace '", (root / "latest").string(), "': ", ec.message());
      fsync_path(root.string(), true);
      // Keep the newest `keep` complete checkpoints.
      auto all = list_checkpoints(root.string());
      std::sort(all.begin(), all.end(), [](const std::string& a, const std::string& b) {
        return step_of(fs::path(a).filename().string()) > step_of(fs::path(b).filename().string());
      });
      for (size_t i = static_cast<size_t>(cfg_.checkpoint.keep); i < all.size(); ++i)
        if (all[i] != final_dir.string()) fs::remove_all(all[i], ec);
    } catch (const std::exception& e) {
      err = e.what();
      log_error("checkpoint: ", err);
    }
  }
  if (!(err = agree(world_, err)).empty()) fail(err);
  return final_dir.string();
}

template <class T>
TrainerState Checkpointer<T>::load_local(const std::string& dir) {
  const fs::path d(dir);
  json manifest = read_json((d / kManifestFile).string());
  DIRMOE_CHECK(manifest.value("format", "") == "dirmoe-checkpoint" &&
                   manifest.value("version", 0) == kFormatVersion,
               "'", (d / kManifestFile).string(), "': not a dirmoe checkpoint of version ",
               kFormatVersion);
  DIRMOE_CHECK(manifest.contains("files") && manifest["files"].is_object(), "'",
               (d / kManifestFile).string(), "': no file list");
  const std::string state_path = (d / kStateFile).string();
  json st = read_json(state_path);
  // Model shape first: any difference here is a refusal naming the key.
  auto now = flat_config(cfg_);
  DIRMOE_CHECK(st.contains("config") && st["config"].is_object(), "'", state_path,
               "': no config recorded");
  for (const char* k : kModelKeys) {
    std::string was = st["config"].value(k, std::string("<absent>"));
    DIRMOE_CHECK(was == now[k], "'", state_path, "' was written for a different model: ", k, " = ",
                 was, " in the checkpoint, ", now[k], " now");
  }
  TrainerState s;
  s.step = st.value("step", int64_t{-1});
  s.next_sample = st.value("next_sample", int64_t{-1});
  s.global_batch = st.value("global_batch", int64_t{0});
  s.seed = st.value("seed", uint64_t{0});
  s.lr = st.value("lr", 0.0);
  s.consecutive_nonfinite = st.value("consecutive_nonfinite", 0);
  s.remoe_lambda = st.contains("remoe_lambda") && st["remoe_lambda"].is_number()
                       ? st["remoe_lambda"].get<double>()
                       : -1.0;
  if (cfg_.moe.router.type == "remoe") {
    const float l32 = static_cast<float>(s.remoe_lambda);
    DIRMOE_CHECK(s.remoe_lambda > 0 && std::isfinite(l32) && l32 > 0 &&
                     static_cast<double>(l32) == s.remoe_lambda,
                 "'", state_path,
                 "': remoe_lambda (the ReMoE controller's fp32 lambda) is missing "
                 "or not a positive fp32 value");
  }
  DIRMOE_CHECK(s.step >= 0 && s.next_sample >= 0, "'", state_path, "': no valid step");
  const int64_t gb = cfg_.train.micro_batch * cfg_.train.grad_accum * world_.size();
  DIRMOE_CHECK(s.global_batch == gb, "'", state_path, "': the checkpoint was trained with ",
               s.global_batch,
               " sequences per step; train.micro_batch x train.grad_accum x ranks = ",
               cfg_.train.micro_batch, " x ", cfg_.train.grad_accum, " x ", world_.size(), " = ",
               gb, " now: keep the global batch (change grad_accum with the number of ranks)");
  if (st.value("config_hash", "") != config_hash(cfg_)) {
    std::string changed;
    for (const auto& [k, v] : now) {
      if (run_only_key(k)) continue;
      std::string was = st["config"].value(k, std::string("<absent>"));
      if (was != v) changed += (changed.empty() ? "" : ", ") + k + ": " + was + " -> " + v;
    }
    if (world_.rank() == 0 && !changed.empty())
      log_warn("resuming ", dir, " with a changed configuration (", changed,
               "): the run will not reproduce an uninterrupted one");
  }

  const DType dt = dtype_of<T>();
  auto load = [&](const safetensors::Reader& r, size_t i) {
    auto* p = params_[i];
    r.read(p->name, dt, p->shape, p->value.data());
    r.read(moment_name("exp_avg", p->name), dt, p->shape, m_[i]->data());
    r.read(moment_name("exp_avg_sq", p->name), dt, p->shape, v_[i]->data());
  };
  safetensors::Reader rep((d / kReplicatedFile).string());
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i]->kind == ParamKind::kReplicated) load(rep, i);
  // Experts: from whichever file holds each one.
  DIRMOE_CHECK(st.contains("expert_files") && st["expert_files"].is_object(), "'", state_path,
               "': no expert file map");
  std::map<int, std::string> where;
  for (auto it = st["expert_files"].begin(); it != st["expert_files"].end(); ++it) {
    DIRMOE_CHECK(it.value().is_array(), "'", state_path, "': bad expert list for ", it.key());
    for (const auto& e : it.value()) {
      DIRMOE_CHECK(e.is_number_integer(), "'", state_path, "': bad expert id in ", it.key());
      where[e.get<int>()] = it.key();
    }
  }
  std::map<std::string, std::unique_ptr<safetensors::Reader>> readers;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto* p = params_[i];
    if (p->kind != ParamKind::kExpert) continue;
    auto it = where.find(p->expert);
    DIRMOE_CHECK(it != where.end(), "'", state_path, "': no file holds expert ", p->expert,
                 " (tensor '", p->name, "')");
    auto& r = readers[it->second];
    if (!r) r = std::make_unique<safetensors::Reader>((d / it->second).string());
    load(*r, i);
  }
  // Last, as a catch-all after the per-tensor checks (which name the tensor): the sizes of the
  // files this rank read (the other expert files are checked by the ranks that read them).
  for (auto it = manifest["files"].begin(); it != manifest["files"].end(); ++it) {
    if (it.key() != kReplicatedFile && it.key() != kStateFile && !readers.count(it.key())) continue;
    fs::path f = d / it.key();
    std::error_code ec;
    uint64_t size = fs::file_size(f, ec);
    DIRMOE_CHECK(!ec, "'", f.string(), "' is missing: ", ec.message());
    uint64_t want = it.value().value("bytes", uint64_t{0});
    DIRMOE_CHECK(size == want, "'", f.string(), "' has ", size, " bytes, the manifest records ",
                 want, " (truncated or overwritten)");
  }
  return s;
}

template <class T>
TrainerState Checkpointer<T>::load(const std::string& dir) {
  TrainerState s;
  std::string err;
  try {
    s = load_local(dir);
  } catch (const std::exception& e) {
    err = e.what();
  }
  err = agree(world_, err);
  if (!err.empty()) DIRMOE_FAIL("cannot resume from '", dir, "': ", err);
  return s;
}

template <class T>
bool Checkpointer<T>::resume(const std::string& spec, TrainerState* state,
                             std::string* loaded_from) {
  std::vector<std::string> candidates;
  bool fallback = false;
  if (spec == "auto" || (fs::is_directory(spec) && !fs::exists(fs::path(spec) / kManifestFile) &&
                         !fs::exists(fs::path(spec) / kStateFile))) {
    const std::string root = spec == "auto" ? checkpoint_root(cfg_) : spec;
    std::string joined;
    if (world_.rank() == 0)
      for (const auto& c : list_checkpoints(root)) joined += c + "\n";
    std::istringstream in(broadcast_string(world_, joined));
    for (std::string line; std::getline(in, line);) candidates.push_back(line);
    fallback = true;
    if (candidates.empty()) {
      DIRMOE_CHECK(spec == "auto", "--resume ", spec, ": no checkpoint (step_<N>/ with ",
                   kManifestFile, ") in that directory");
      log_info("resume: no checkpoint in ", root, "; starting from step 0");
      return false;
    }
  } else {
    candidates.push_back(spec);
  }
  for (size_t i = 0; i < candidates.size(); ++i) {
    try {
      *state = load(candidates[i]);
      *loaded_from = candidates[i];
      return true;
    } catch (const Error& e) {
      if (!fallback) throw;
      if (world_.rank() == 0)
        log_warn("checkpoint refused: ", e.what(),
                 i + 1 < candidates.size() ? "; falling back to the previous one" : "");
    }
  }
  DIRMOE_FAIL("--resume auto: none of the ", candidates.size(), " checkpoint(s) in ",
              fs::path(candidates.front()).parent_path().string(),
              " could be loaded (see the warnings above)");
}

template class Checkpointer<float>;
template class Checkpointer<double>;

}  // namespace dirmoe
