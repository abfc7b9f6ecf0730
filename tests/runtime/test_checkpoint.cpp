// Checkpoints on 1 and 2 ranks: a save/load round trip restores every weight and AdamW moment bit
// for bit; loading with another EP size re-shards the experts (each matches the
// sharding-independent initialisation); truncated, corrupted, mis-shaped and foreign checkpoints
// are refused naming the file and the tensor or key, and resume "auto" falls back to the previous
// one; the Mixtral export gives the logits of an independent numpy implementation of transformers'
// Mixtral forward.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/core/philox.h"
#include "runtime/hf_export.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"
#include "tests/common/error_of.h"

namespace dirmoe {
namespace {

namespace fs = std::filesystem;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

std::string root_dir(const std::string& name) {
  return (fs::current_path() / ("ckpt_np" + std::to_string(world_size())) / name).string();
}

Config small_config(int ep, const std::string& dir, const std::string& extra = "") {
  return parse_config(R"(model:
  vocab_size: 50
  vocab_multiple: 16
  hidden: 16
  layers: 2
  heads: 4
  kv_heads: 2
  ffn_hidden: 12
  seq_len: 6
  init_std: 0.4
moe:
  num_experts: 4
  router: {type: topk, k: 2, renormalize: true}
train: {micro_batch: 2}
data: {paths: [unused]}
)" + extra,
                      {"parallel.ep=" + std::to_string(ep), "checkpoint.dir=" + dir}, "small.yaml");
}

// A model with its moments on this rank; EP groups of `ep` consecutive ranks.
struct Rig {
  Config cfg;
  MpiCommunicator world{MPI_COMM_WORLD, false, "world"};
  std::unique_ptr<Communicator> ep_comm;
  Placement placement;
  std::unique_ptr<Model<float>> model;
  std::vector<Parameter<float>*> params;
  std::vector<Buffer<float>> m, v;
  std::unique_ptr<Checkpointer<float>> ckpt;

  Rig(Config c, uint64_t seed) : cfg(std::move(c)) {
    const int ep = cfg.parallel.ep, r = world.rank();
    ep_comm = world.split(r / ep, r, "ep");
    placement = Placement::contiguous(cfg.moe.num_experts, ep);
    model = std::make_unique<Model<float>>(cfg, ep_comm.get(), placement);
    model->init_weights(seed);
    params = model->parameters();
    m.resize(params.size());
    v.resize(params.size());
    std::vector<Buffer<float>*> mp, vp;
    for (size_t i = 0; i < params.size(); ++i) {
      m[i].resize(params[i]->numel());
      v[i].resize(params[i]->numel());
      // Moments keyed by (name, index) so that they, too, do not depend on the sharding.
      PhiloxStream rng{seed + 1, stable_hash32(params[i]->name.c_str())};
      for (int64_t j = 0; j < params[i]->numel(); ++j) {
        m[i][j] = static_cast<float>(rng.normal(static_cast<uint32_t>(j), 0, 0));
        v[i][j] = static_cast<float>(std::abs(rng.normal(static_cast<uint32_t>(j), 1, 0)));
      }
      mp.push_back(&m[i]);
      vp.push_back(&v[i]);
    }
    ckpt = std::make_unique<Checkpointer<float>>(cfg, world, *ep_comm, r / ep, params, mp, vp);
  }
  TrainerState state(int64_t step) const {
    TrainerState s;
    s.step = step;
    s.global_batch = cfg.train.micro_batch * cfg.train.grad_accum * world_size();
    s.next_sample = step * s.global_batch;
    s.seed = cfg.train.seed;
    s.lr = 1e-3;
    return s;
  }
};

void clean(const std::string& dir) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
  MPI_Barrier(MPI_COMM_WORLD);
}

using test::error_of;

// Rank 0 edits a file of the checkpoint; everyone waits.
template <class F>
void on_rank0(F&& f) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) f();
  MPI_Barrier(MPI_COMM_WORLD);
}

void flip_byte(const fs::path& p, uint64_t from_end) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(0, std::ios::end);
  auto pos = static_cast<std::streamoff>(f.tellg()) - static_cast<std::streamoff>(from_end);
  f.seekg(pos);
  char c;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(pos);
  f.write(&c, 1);
}

TEST(Checkpoint, RoundTripRestoresWeightsAndMomentsExactly) {
  const std::string dir = root_dir("roundtrip");
  clean(dir);
  Rig a(small_config(world_size(), dir), 5);
  std::string path = a.ckpt->save(a.state(7));
  EXPECT_EQ(fs::path(path).filename(), "step_7");
  Rig b(small_config(world_size(), dir), 99);  // other weights and moments
  TrainerState st = b.ckpt->load(path);
  EXPECT_EQ(st.step, 7);
  EXPECT_EQ(st.next_sample, 7 * a.state(7).global_batch);
  EXPECT_EQ(st.seed, a.cfg.train.seed);
  ASSERT_EQ(a.params.size(), b.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    ASSERT_EQ(a.params[i]->name, b.params[i]->name);
    for (int64_t j = 0; j < a.params[i]->numel(); ++j) {
      ASSERT_EQ(a.params[i]->value[j], b.params[i]->value[j])
          << a.params[i]->name << "[" << j << "]";
      ASSERT_EQ(a.m[i][j], b.m[i][j]) << a.params[i]->name;
      ASSERT_EQ(a.v[i][j], b.v[i][j]) << a.params[i]->name;
    }
  }
  // Layout: the pointer, the manifest, one expert file per EP rank with global expert names.
  if (world_rank() == 0) {
    std::ifstream latest(fs::path(dir) / "latest");
    std::string target;
    std::getline(latest, target);
    EXPECT_EQ(target, "step_7");
    safetensors::Reader r(
        (fs::path(path) / ("experts-ep" + std::to_string(world_size() - 1) + ".safetensors"))
            .string());
    const int E = 4, last_first = E - E / world_size();
    EXPECT_NE(r.find("layers.1.moe.experts." + std::to_string(last_first) + ".w2"), nullptr);
    EXPECT_NE(r.find("optimizer.exp_avg_sq.layers.1.moe.experts." + std::to_string(E - 1) + ".w3"),
              nullptr);
  }
}

TEST(Checkpoint, KeepsTheNewestK) {
  const std::string dir = root_dir("keep");
  clean(dir);
  Rig a(small_config(world_size(), dir, "checkpoint: {keep: 2}\n"), 5);
  for (int s : {1, 2, 3, 4}) a.ckpt->save(a.state(s));
  auto all = list_checkpoints(dir);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(fs::path(all[0]).filename(), "step_4");
  EXPECT_EQ(fs::path(all[1]).filename(), "step_3");
}

TEST(Checkpoint, LoadingWithAnotherEpSizeReshardsTheExperts) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks to write an EP=2 checkpoint";
  const std::string dir = root_dir("reshard");
  clean(dir);
  Rig a(small_config(2, dir), 5);
  std::string path = a.ckpt->save(a.state(3));
  // EP=1 on each of the 2 ranks: every rank holds all experts, read from both files.
  Rig b(small_config(1, dir), 77);
  b.ckpt->load(path);
  Rig ref(small_config(1, dir), 5);  // the same initialisation, unsharded
  int experts_seen = 0;
  for (size_t i = 0; i < b.params.size(); ++i) {
    ASSERT_EQ(b.params[i]->name, ref.params[i]->name);
    experts_seen += b.params[i]->kind == ParamKind::kExpert;
    for (int64_t j = 0; j < b.params[i]->numel(); ++j) {
      ASSERT_EQ(b.params[i]->value[j], ref.params[i]->value[j]) << b.params[i]->name;
      ASSERT_EQ(b.m[i][j], ref.m[i][j]) << b.params[i]->name;
    }
  }
  EXPECT_EQ(experts_seen, 2 * 4 * 3);  // layers x experts x {w1, w2, w3}
}

TEST(Checkpoint, DamagedCheckpointsAreRefusedAndAutoFallsBack) {
  const std::string dir = root_dir("damaged");
  clean(dir);
  Rig a(small_config(world_size(), dir, "checkpoint: {keep: 10}\n"), 5);
  a.ckpt->save(a.state(2));
  const fs::path s4 = a.ckpt->save(a.state(4));
  const fs::path experts = s4 / ("experts-ep" + std::to_string(world_size() - 1) + ".safetensors");
  const fs::path rep = s4 / "replicated.safetensors";

  // Truncated: the last expert file loses its tail.
  on_rank0([&] { fs::resize_file(experts, fs::file_size(experts) - 100); });
  Rig b(small_config(world_size(), dir), 9);
  std::string e = error_of([&] { b.ckpt->load(s4.string()); });
  EXPECT_NE(e.find(experts.string()), std::string::npos) << e;
  EXPECT_NE(e.find("tensor 'optimizer.exp_avg_sq.layers.1.moe.experts.3.w3'"), std::string::npos)
      << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  // resume auto: refuses step_4, loads step_2.
  TrainerState st;
  std::string from;
  ASSERT_TRUE(b.ckpt->resume("auto", &st, &from));
  EXPECT_EQ(st.step, 2);
  EXPECT_EQ(fs::path(from).filename(), "step_2");
  // An explicit path is not replaced by another checkpoint.
  EXPECT_NE(error_of([&] { b.ckpt->resume(s4.string(), &st, &from); }).find("truncated"),
            std::string::npos);

  // Corrupted: one flipped byte in the last tensor of the replicated file (its AdamW v of lm_head).
  const fs::path s6 = a.ckpt->save(a.state(6));
  on_rank0([&] { flip_byte(s6 / "replicated.safetensors", 1); });
  e = error_of([&] { b.ckpt->load(s6.string()); });
  EXPECT_NE(e.find((s6 / "replicated.safetensors").string()), std::string::npos) << e;
  EXPECT_NE(e.find("tensor 'optimizer.exp_avg_sq.lm_head' fails its checksum"), std::string::npos)
      << e;

  // Wrong shape: rank 0 rewrites the replicated file with layers.0.attn.wk transposed.
  const fs::path s8 = a.ckpt->save(a.state(8));
  on_rank0([&] {
    safetensors::Reader r((s8 / "replicated.safetensors").string());
    std::vector<std::vector<char>> data;
    safetensors::Writer w;
    for (const auto& t : r.tensors()) {
      data.emplace_back(t.end - t.begin);
      r.read(t.name, t.dtype, t.shape, data.back().data());
      Shape shape = t.shape;
      if (t.name == "layers.0.attn.wk") std::swap(shape[0], shape[1]);
      w.add(t.name, t.dtype, shape, data.back().data());
    }
    w.write((s8 / "replicated.safetensors").string());
  });
  e = error_of([&] { b.ckpt->load(s8.string()); });
  EXPECT_NE(e.find((s8 / "replicated.safetensors").string()), std::string::npos) << e;
  EXPECT_NE(e.find("tensor 'layers.0.attn.wk' has shape [16,8], expected [8,16]"),
            std::string::npos)
      << e;

  // A different model: refused naming trainer_state.json and the key.
  Config changed = small_config(world_size(), dir);
  changed.model.ffn_hidden = 10;
  Rig other(changed, 5);
  e = error_of([&] { other.ckpt->load((fs::path(dir) / "step_2").string()); });
  EXPECT_NE(e.find((fs::path(dir) / "step_2" / "trainer_state.json").string()), std::string::npos)
      << e;
  EXPECT_NE(e.find("model.ffn_hidden = 12 in the checkpoint, 10 now"), std::string::npos) << e;
}

void write_raw(const fs::path& p, const void* data, size_t bytes) {
  std::ofstream(p, std::ios::binary)
      .write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// Exports the checkpoint twice (in several shards, and in one) next to dirmoe's own logits for
// the same tokens: ROOT/hf/{tokens.bin, logits.bin, inputs.json, mixtral/, mixtral_single/}, the
// inputs of the numpy reference here and of tests/runtime/hf_mixtral_transformers.py on a machine
// with transformers (tests/runtime/hf_transformers_check.sh gathers them).
TEST(HfExport, MixtralCheckpointGivesTheReferenceLogits) {
  const std::string dir = root_dir("hf");
  clean(dir);
  Rig a(small_config(world_size(), dir), 21);
  const std::string path = a.ckpt->save(a.state(1));
  const int64_t B = 2, S = a.cfg.model.seq_len, Vp = a.cfg.model.padded_vocab();
  std::vector<int32_t> tokens(B * (S + 1));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 17 + 3) % 50);
  RouterContext ctx{1, -1, 0, 0, false};
  a.model->forward_backward(tokens.data(), B, ctx, 0.0, false);
  if (world_rank() != 0) return;

  const fs::path out = fs::path(dir) / "mixtral", single = fs::path(dir) / "mixtral_single";
  HfExportSummary s = export_hf_mixtral(path, out.string(), /*max_shard_bytes=*/20000);
  EXPECT_GT(s.num_shards, 1);
  EXPECT_EQ(export_hf_mixtral(path, single.string()).num_shards, 1);
  std::ifstream cf(out / "config.json");
  auto c = nlohmann::json::parse(cf);
  EXPECT_EQ(c["model_type"], "mixtral");
  EXPECT_EQ(c["vocab_size"], 64);
  EXPECT_EQ(c["hidden_size"], 16);
  EXPECT_EQ(c["intermediate_size"], 12);
  EXPECT_EQ(c["num_hidden_layers"], 2);
  EXPECT_EQ(c["num_attention_heads"], 4);
  EXPECT_EQ(c["num_key_value_heads"], 2);
  EXPECT_EQ(c["num_local_experts"], 4);
  EXPECT_EQ(c["num_experts_per_tok"], 2);
  EXPECT_EQ(c["tie_word_embeddings"], false);
  EXPECT_EQ(c["rope_theta"], 10000.0);
  EXPECT_EQ(c["rope_parameters"],
            nlohmann::json({{"rope_type", "default"}, {"rope_theta", 10000.0}}));
  EXPECT_EQ(c["dtype"], "float32");
  EXPECT_EQ(c["torch_dtype"], "float32");
  std::ifstream ix(out / "model.safetensors.index.json");
  auto index = nlohmann::json::parse(ix);
  EXPECT_EQ(index["weight_map"].size(), static_cast<size_t>(s.num_tensors));
  EXPECT_TRUE(index["weight_map"].contains("model.layers.1.block_sparse_moe.experts.3.w2.weight"));

  // dirmoe's logits for the inputs tokens[:, :S] against the numpy Mixtral, for both exports.
  std::vector<int32_t> inputs;
  for (int64_t b = 0; b < B; ++b)
    inputs.insert(inputs.end(), tokens.begin() + b * (S + 1), tokens.begin() + b * (S + 1) + S);
  const fs::path tok = fs::path(dir) / "tokens.bin", logits = fs::path(dir) / "logits.bin";
  write_raw(tok, inputs.data(), inputs.size() * 4);
  write_raw(logits, a.model->logits(), static_cast<size_t>(B * S * Vp) * 4);
  std::ofstream(fs::path(dir) / "inputs.json")
      << nlohmann::json({{"batch", B},
                         {"seq", S},
                         {"vocab", Vp},
                         {"ep", world_size()},
                         {"tokens", "tokens.bin (int32 [batch, seq])"},
                         {"logits", "logits.bin (float32 [batch, seq, vocab], dirmoe's forward)"}})
             .dump(2)
      << "\n";
  const std::string script =
      std::string(std::getenv("DIRMOE_SOURCE_DIR")) + "/tests/runtime/hf_mixtral_reference.py";
  for (const fs::path& model : {out, single}) {
    const std::string log = (fs::path(dir) / (model.filename().string() + ".log")).string();
    const char* py = std::getenv("DIRMOE_PYTHON");
    int rc =
        std::system((std::string(py != nullptr && *py != '\0' ? py : "python3") + " " + script +
                     " " + model.string() + " " + tok.string() + " " + logits.string() + " " +
                     std::to_string(B) + " " + std::to_string(S) + " > " + log + " 2>&1")
                        .c_str());
    std::ifstream lf(log);
    std::stringstream ss;
    ss << lf.rdbuf();
    std::printf("%s: %s", model.filename().string().c_str(), ss.str().c_str());
    EXPECT_EQ(rc, 0) << ss.str();
  }
}

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// Re-exporting into a folder replaces the earlier export entirely (no stale shards); a folder
// holding anything else, a file, or an unwritable location is refused with nothing written.
TEST(HfExport, OutputFolderIsReplacedWholeOrRefused) {
  const std::string dir = root_dir("hf_out");
  clean(dir);
  Rig a(small_config(world_size(), dir), 21);
  const std::string path = a.ckpt->save(a.state(1));
  if (world_rank() != 0) return;
  const fs::path out = fs::path(dir) / "mixtral";
  const HfExportSummary many = export_hf_mixtral(path, out.string(), 5000);
  ASSERT_GT(many.num_shards, 2);
  EXPECT_FALSE(many.replaced);
  EXPECT_EQ(listing(out).size(), static_cast<size_t>(many.num_shards) + 2);
  // Fewer shards the second time: the index names exactly the shards on disk.
  const HfExportSummary two = export_hf_mixtral(path, out.string(), 15000);
  EXPECT_TRUE(two.replaced);
  ASSERT_LT(two.num_shards, many.num_shards);
  std::set<std::string> expected = {"config.json", "model.safetensors.index.json"};
  std::ifstream ix(out / "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(ix);
  for (const auto& [k, v] : index["weight_map"].items()) expected.insert(v.get<std::string>());
  EXPECT_EQ(expected.size(), static_cast<size_t>(two.num_shards) + 2);
  EXPECT_EQ(listing(out), expected);
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));

  // A folder with a file a dirmoe export does not write: refused, untouched.
  std::ofstream(out / "notes.txt") << "mine\n";
  const auto before = listing(out);
  std::string e = error_of([&] { export_hf_mixtral(path, out.string(), 20000); });
  EXPECT_NE(e.find("--out " + out.string() + " is not empty and not an earlier dirmoe export"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("'notes.txt'"), std::string::npos) << e;
  EXPECT_EQ(listing(out), before);
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));

  // A non-empty folder without dirmoe's config.json.
  const fs::path other = fs::path(dir) / "other";
  fs::create_directories(other);
  std::ofstream(other / "config.json") << "{\"model_type\": \"llama\"}\n";
  e = error_of([&] { export_hf_mixtral(path, other.string()); });
  EXPECT_NE(e.find("not written by dirmoe"), std::string::npos) << e;
  EXPECT_EQ(listing(other), std::set<std::string>{"config.json"});

  // A file in place of the folder, and a file in place of its parent (unwritable location).
  const fs::path file = fs::path(dir) / "plain_file";
  std::ofstream(file) << "x";
  e = error_of([&] { export_hf_mixtral(path, file.string()); });
  EXPECT_NE(e.find("--out " + file.string() + " exists and is not a directory"), std::string::npos)
      << e;
  e = error_of([&] { export_hf_mixtral(path, (file / "hf").string()); });
  EXPECT_NE(e.find("export hf: cannot create " + file.string()), std::string::npos) << e;
  EXPECT_NE(e.find("Not a directory"), std::string::npos) << e;
  EXPECT_EQ(fs::file_size(file), 1u);

  // An empty folder is used as is.
  const fs::path empty = fs::path(dir) / "empty";
  fs::create_directories(empty);
  EXPECT_FALSE(export_hf_mixtral(path, empty.string()).replaced);
  EXPECT_TRUE(fs::exists(empty / "config.json"));
}

TEST(HfExport, RoutersMixtralCannotExpressAreRefused) {
  Config c = small_config(1, "unused");
  EXPECT_NO_THROW(check_mixtral_compatible(c));
  c.moe.router.renormalize = false;
  EXPECT_NE(error_of([&] { check_mixtral_compatible(c); }).find("moe.router.renormalize = false"),
            std::string::npos);
  c.moe.router.renormalize = true;
  for (const char* type : {"dirmoe", "probmoe"}) {
    c.moe.router.type = type;
    EXPECT_NE(error_of([&] {
                check_mixtral_compatible(c);
              }).find(std::string("moe.router.type = ") + type + " cannot be expressed as Mixtral"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace dirmoe
