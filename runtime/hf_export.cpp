// Mixtral export (see hf_export.h). Name map, dirmoe -> transformers:
//   embed -> model.embed_tokens.weight              final_norm -> model.norm.weight
//   lm_head -> lm_head.weight                       layers.{i}.attn_norm ->
//   ...input_layernorm.weight layers.{i}.attn.w{q,k,v,o} -> ...self_attn.{q,k,v,o}_proj.weight
//   layers.{i}.ffn_norm -> ...post_attention_layernorm.weight
//   layers.{i}.moe.router.weight -> ...block_sparse_moe.gate.weight [E, H]
//   layers.{i}.moe.experts.{e}.w{1,2,3} -> ...block_sparse_moe.experts.{e}.w{1,2,3}.weight
// Both use the rotate_half RoPE layout and heads as contiguous row blocks of q/k/v_proj, so the
// weights carry over unpermuted. The vocabulary stays padded (vocab_size = padded size).
// NOTE: these are the transformers 4.x per-expert names; transformers 5 stores the experts fused
// (mlp.experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]) and converts these names when
// from_pretrained loads them (its conversion_mapping.py, "mixtral"), so both versions load it.
// The export is written into OUT.tmp/ and renamed into place (swapped atomically with an earlier
// export, which is then removed), so OUT never mixes two exports' shards.
#include "runtime/hf_export.h"

#include <fcntl.h>  // AT_FDCWD
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/checkpoint.h"
#include "runtime/core/error.h"
#include "runtime/safetensors.h"

namespace dirmoe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  DIRMOE_CHECK(in.good(), "cannot read '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  DIRMOE_CHECK(!j.is_discarded() && j.is_object(), "'", path, "' is not valid JSON (corrupted?)");
  return j;
}

struct Source {
  std::string hf_name, file, name;
};

// The names an export writes: config.json, model.safetensors.index.json and the shards
// model-NNNNN-of-NNNNN.safetensors.
bool is_export_file(const std::string& name) {
  if (name == "config.json" || name == "model.safetensors.index.json") return true;
  static const std::string pattern = "model-#####-of-#####.safetensors";
  if (name.size() != pattern.size()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (pattern[i] == '#' ? !std::isdigit(static_cast<unsigned char>(name[i]))
                          : name[i] != pattern[i]) {
      return false;
    }
  }
  return true;
}

// Why `dir` (an existing directory) is not an earlier dirmoe export, or "" when it is one: a
// config.json written by dirmoe (it has dirmoe_step) and nothing but the files an export writes.
std::string not_an_export(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || !is_export_file(name)) {
      return "it holds '" + name + "', which a dirmoe export does not write";
    }
  }
  if (ec) return "it cannot be listed: " + ec.message();
  std::ifstream in(dir / "config.json");
  if (!in.good()) return "it has no config.json";
  json c = json::parse(in, nullptr, false);
  if (c.is_discarded() || !c.is_object() || !c.contains("dirmoe_step")) {
    return "its config.json was not written by dirmoe (no dirmoe_step)";
  }
  return "";
}

// True when every entry of `dir` is a file an export writes (an unfinished export's leftovers).
bool only_export_files(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file() || !is_export_file(e.path().filename().string())) return false;
  }
  return !ec;
}

bool is_empty_dir(const fs::path& dir) {
  std::error_code ec;
  return fs::is_empty(dir, ec) && !ec;
}

// Moves the finished export `tmp` to `out`. An earlier export at `out` is swapped with it in one
// step (renameat2 RENAME_EXCHANGE) and removed; where the file system cannot exchange, it is
// moved aside, replaced, and removed.
void install_export(const fs::path& tmp, const fs::path& out, bool replace) {
  auto fail = [&](const std::string& what) {
    DIRMOE_FAIL("export hf: cannot ", what, ": ", std::strerror(errno), " (the export is in ",
                tmp.string(), ")");
  };
  if (!replace) {
    // An empty directory at out (checked by the caller) gives way; none is fine too.
    if (::rmdir(out.c_str()) != 0 && errno != ENOENT) fail("replace the empty " + out.string());
    if (std::rename(tmp.c_str(), out.c_str()) != 0) fail("move it to " + out.string());
    return;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(tmp);  // now the earlier export
    return;
  }
  if (errno != EINVAL && errno != ENOSYS) fail("replace " + out.string());
  const fs::path old = out.string() + ".old";
  fs::remove_all(old);
  if (std::rename(out.c_str(), old.c_str()) != 0) fail("move the earlier export aside");
  if (std::rename(tmp.c_str(), out.c_str()) != 0) fail("move it to " + out.string());
  fs::remove_all(old);
}

}  // namespace

void check_mixtral_compatible(const Config& cfg) {
  const auto& r = cfg.moe.router;
  DIRMOE_CHECK(r.type == "topk", "export hf: moe.router.type = ", r.type,
               " cannot be expressed as Mixtral, whose router is a softmax top-k with renormalised "
               "weights; only topk routers can be exported");
  DIRMOE_CHECK(r.renormalize,
               "export hf: moe.router.renormalize = false, but Mixtral renormalises "
               "its top-k weights to sum to 1; the exported model would compute different outputs. "
               "Only models trained with moe.router.renormalize: true can be exported");
  DIRMOE_CHECK(cfg.moe.capacity_factor <= 0,
               "export hf: moe.capacity_factor = ", cfg.moe.capacity_factor,
               " drops tokens, which Mixtral never does");
}

HfExportSummary export_hf_mixtral(const std::string& checkpoint_dir, const std::string& out_dir,
                                  int64_t max_shard_bytes) {
  std::string dir = checkpoint_dir;
  if (!fs::exists(fs::path(dir) / "manifest.json")) {
    auto all = list_checkpoints(dir);
    DIRMOE_CHECK(
        !all.empty(), "export hf: '", dir,
        "' is neither a checkpoint (step_<N>/ with manifest.json) nor a directory of them");
    dir = all.front();
  }
  const std::string state_path = (fs::path(dir) / "trainer_state.json").string();
  json st = read_json_file(state_path);
  DIRMOE_CHECK(st.contains("config_yaml") && st["config_yaml"].is_string(), "'", state_path,
               "': no configuration recorded");
  Config cfg = parse_config(st["config_yaml"].get<std::string>(), {}, state_path);
  check_mixtral_compatible(cfg);
  const auto& m = cfg.model;
  const int L = m.layers, E = cfg.moe.num_experts;

  // dirmoe tensor -> (file, Mixtral name), in Mixtral's order.
  std::map<int, std::string> expert_file;
  for (auto it = st["expert_files"].begin(); it != st["expert_files"].end(); ++it)
    for (const auto& e : it.value()) expert_file[e.get<int>()] = it.key();
  const std::string rep = "replicated.safetensors";
  std::vector<Source> src = {{"model.embed_tokens.weight", rep, "embed"}};
  for (int l = 0; l < L; ++l) {
    const std::string d = "layers." + std::to_string(l) + ".",
                      h = "model.layers." + std::to_string(l) + ".";
    src.push_back({h + "input_layernorm.weight", rep, d + "attn_norm"});
    for (const char* p : {"q", "k", "v", "o"})
      src.push_back({h + "self_attn." + p + "_proj.weight", rep, d + "attn.w" + p});
    src.push_back({h + "post_attention_layernorm.weight", rep, d + "ffn_norm"});
    src.push_back({h + "block_sparse_moe.gate.weight", rep, d + "moe.router.weight"});
    for (int e = 0; e < E; ++e) {
      DIRMOE_CHECK(expert_file.count(e), "'", state_path, "': no file holds expert ", e);
      for (const char* w : {"w1", "w2", "w3"})
        src.push_back({h + "block_sparse_moe.experts." + std::to_string(e) + "." + w + ".weight",
                       expert_file[e], d + "moe.experts." + std::to_string(e) + "." + w});
    }
  }
  src.push_back({"model.norm.weight", rep, "final_norm"});
  src.push_back({"lm_head.weight", rep, "lm_head"});

  std::map<std::string, std::unique_ptr<safetensors::Reader>> readers;
  auto reader = [&](const std::string& f) -> safetensors::Reader& {
    auto& r = readers[f];
    if (!r) r = std::make_unique<safetensors::Reader>((fs::path(dir) / f).string());
    return *r;
  };
  // Shard assignment by size.
  std::vector<std::vector<size_t>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (size_t i = 0; i < src.size(); ++i) {
    const auto* t = reader(src[i].file).find(src[i].name);
    DIRMOE_CHECK(t != nullptr, "'", (fs::path(dir) / src[i].file).string(), "': tensor '",
                 src[i].name, "' is missing");
    int64_t bytes = numel(t->shape) * 4;
    if (!shards.back().empty() && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
    total += bytes;
  }
  // The output: absent, an empty directory, or an earlier dirmoe export (replaced entirely);
  // anything else is refused before anything is written.
  fs::path out = fs::path(out_dir).lexically_normal();
  if (out.has_filename() == false) out = out.parent_path();
  std::error_code ec;
  const fs::file_status out_status = fs::symlink_status(out, ec);
  bool replace = false;
  if (fs::exists(out_status)) {
    DIRMOE_CHECK(fs::is_directory(out_status), "export hf: --out ", out.string(),
                 " exists and is not a directory (a file or a symbolic link)");
    if (!is_empty_dir(out)) {
      const std::string why = not_an_export(out);
      DIRMOE_CHECK(why.empty(), "export hf: --out ", out.string(),
                   " is not empty and not an earlier dirmoe export (", why,
                   "); refusing to replace it: choose a new or empty directory");
      replace = true;
    }
  }
  const fs::path tmp = out.string() + ".tmp";
  if (fs::exists(fs::symlink_status(tmp, ec))) {
    DIRMOE_CHECK(fs::is_directory(fs::symlink_status(tmp, ec)) && only_export_files(tmp),
                 "export hf: ", tmp.string(),
                 " exists and is not an unfinished dirmoe export; remove it or choose another "
                 "--out");
    fs::remove_all(tmp);  // left by an export that did not finish
  }
  if (!out.parent_path().empty()) {
    fs::create_directories(out.parent_path(), ec);
    DIRMOE_CHECK(!ec, "export hf: cannot create ", out.parent_path().string(), " for --out ",
                 out.string(), ": ", ec.message());
  }
  DIRMOE_CHECK(fs::create_directory(tmp, ec) && !ec, "export hf: cannot write ", tmp.string(),
               " (next to --out ", out.string(), "): ", ec ? ec.message() : "it exists");
  const int n = static_cast<int>(shards.size());
  try {
    ordered_json weight_map = ordered_json::object();
    for (int s = 0; s < n; ++s) {
      char fname[64];
      std::snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, n);
      std::vector<std::vector<float>> data;
      data.reserve(shards[s].size());
      safetensors::Writer w;
      w.set_metadata("format", "pt");
      for (size_t i : shards[s]) {
        auto& r = reader(src[i].file);
        const auto* t = r.find(src[i].name);
        std::vector<float> buf(static_cast<size_t>(numel(t->shape)));
        if (t->dtype == DType::kF64) {
          std::vector<double> d(buf.size());
          r.read(src[i].name, DType::kF64, t->shape, d.data());
          for (size_t j = 0; j < d.size(); ++j) buf[j] = static_cast<float>(d[j]);
        } else {
          r.read(src[i].name, DType::kF32, t->shape, buf.data());
        }
        data.push_back(std::move(buf));
        w.add(src[i].hf_name, DType::kF32, t->shape, data.back().data());
        weight_map[src[i].hf_name] = fname;
      }
      w.write((tmp / fname).string());
    }
    ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream ixf(tmp / "model.safetensors.index.json");
    ixf << index.dump(2) << "\n";
    DIRMOE_CHECK(ixf.good(), "export hf: cannot write ",
                 (tmp / "model.safetensors.index.json").string());

    const auto& r = cfg.moe.router;
    ordered_json c = {{"architectures", {"MixtralForCausalLM"}},
                      {"model_type", "mixtral"},
                      {"vocab_size", m.padded_vocab()},
                      {"hidden_size", m.hidden},
                      {"intermediate_size", m.ffn_hidden},
                      {"num_hidden_layers", m.layers},
                      {"num_attention_heads", m.heads},
                      {"num_key_value_heads", m.kv_heads},
                      {"head_dim", m.head_dim()},
                      {"hidden_act", "silu"},
                      {"max_position_embeddings", m.seq_len},
                      {"initializer_range", m.init_std},
                      {"rms_norm_eps", m.norm_eps},
                      {"rope_theta", m.rope_base},  // transformers 4.x
                      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", m.rope_base}}},
                      {"sliding_window", nullptr},
                      {"attention_dropout", 0.0},
                      {"num_local_experts", E},
                      {"num_experts_per_tok", r.k},
                      {"output_router_logits", false},
                      {"router_aux_loss_coef", r.aux_loss_coef},
                      {"router_jitter_noise", 0.0},
                      {"tie_word_embeddings", false},
                      {"use_cache", true},
                      {"dtype", "float32"},         // transformers 5
                      {"torch_dtype", "float32"}};  // transformers 4.x
    if (m.vocab_size == 50257) {                    // GPT-2 BPE: <|endoftext|>
      c["bos_token_id"] = 50256;
      c["eos_token_id"] = 50256;
    }
    c["dirmoe_vocab_size"] = m.vocab_size;  // rows at and past this index are padding
    c["dirmoe_step"] = st.value("step", int64_t{0});
    std::ofstream cf(tmp / "config.json");
    cf << c.dump(2) << "\n";
    DIRMOE_CHECK(cf.good(), "export hf: cannot write ", (tmp / "config.json").string());
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  install_export(tmp, out, replace);
  HfExportSummary summary;
  summary.num_shards = n;
  summary.num_tensors = static_cast<int>(src.size());
  summary.total_bytes = total;
  summary.step = st.value("step", int64_t{0});
  summary.replaced = replace;
  return summary;
}

}  // namespace dirmoe
