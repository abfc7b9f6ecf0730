// Mixtral export (see hf_export.h). Name map, dirmoe -> transformers:
//   embed -> model.embed_tokens.weight              final_norm -> model.norm.weight
//   lm_head -> lm_head.weight                       layers.{i}.attn_norm ->
//   ...input_layernorm.weight layers.{i}.attn.w{q,k,v,o} -> ...self_attn.{q,k,v,o}_proj.weight
//   layers.{i}.ffn_norm -> ...post_attention_layernorm.weight
//   layers.{i}.moe.router.weight -> ...block_sparse_moe.gate.weight [E, H]
//   layers.{i}.moe.experts.{e}.w{1,2,3} -> ...block_sparse_moe.experts.{e}.w{1,2,3}.weight
// Both use the rotate_half RoPE layout and heads as contiguous row blocks of q/k/v_proj, so the
// weights carry over unpermuted. The vocabulary stays padded (vocab_size = padded size).
#include "runtime/hf_export.h"

#include <cstdio>
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
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  DIRMOE_CHECK(!ec, "cannot create '", out_dir, "': ", ec.message());
  const int n = static_cast<int>(shards.size());
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
    w.write((fs::path(out_dir) / fname).string());
  }
  ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  std::ofstream(fs::path(out_dir) / "model.safetensors.index.json") << index.dump(2) << "\n";

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
                    {"rope_theta", m.rope_base},
                    {"sliding_window", nullptr},
                    {"attention_dropout", 0.0},
                    {"num_local_experts", E},
                    {"num_experts_per_tok", r.k},
                    {"output_router_logits", false},
                    {"router_aux_loss_coef", r.aux_loss_coef},
                    {"router_jitter_noise", 0.0},
                    {"tie_word_embeddings", false},
                    {"use_cache", true},
                    {"torch_dtype", "float32"}};
  if (m.vocab_size == 50257) {  // GPT-2 BPE: <|endoftext|>
    c["bos_token_id"] = 50256;
    c["eos_token_id"] = 50256;
  }
  c["dirmoe_vocab_size"] = m.vocab_size;  // rows at and past this index are padding
  c["dirmoe_step"] = st.value("step", int64_t{0});
  std::ofstream cf(fs::path(out_dir) / "config.json");
  cf << c.dump(2) << "\n";
  DIRMOE_CHECK(cf.good(), "cannot write '", (fs::path(out_dir) / "config.json").string(), "'");
  return {n, static_cast<int>(src.size()), total, st.value("step", int64_t{0})};
}

}  // namespace dirmoe
