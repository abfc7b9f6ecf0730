// Training samples from tokenized corpora: Megatron-LM indexed datasets (PREFIX.bin/.idx) and llm.c
// token shards, blended by weight as Megatron's `--data-path w1 p1 w2 p2` does, with a held-out
// split by document. Random access by global sample index: the trainer's count of consumed samples
// is the data cursor a checkpoint saves, and rank r of a data-parallel group simply reads other
// indices than rank r' (disjoint by construction).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dirmoe::data {

struct DataSource {
  double weight = 1.0;
  std::string path;  // Megatron prefix (PREFIX.bin + PREFIX.idx) or an llm.c shard file (.bin)
};

// The Megatron prefix `path` names (`path` itself, or `path` without a ".bin" whose ".idx" exists)
// when its PREFIX.idx exists; else "" (then `path` must be an llm.c shard). Training opens sources
// by this rule; `config check` warns with it about sources that do not exist yet.
std::string megatron_prefix_of(const std::string& path);
// True when `path` names an existing Megatron prefix or file.
bool data_source_exists(const std::string& path);

struct DataConfig {
  std::vector<DataSource> sources;
  double valid_fraction = 0.05;  // share of each source's documents held out for evaluation
};

enum class Split { kTrain, kValid };

class TrainingData {
 public:
  // Opens and validates every source; a missing/truncated/corrupt file, a token id >= vocab_size,
  // an empty split, or bad blend weights throw an Error naming the file and the problem.
  TrainingData(const DataConfig& cfg, Split split, int64_t seq_len, uint64_t seed,
               int64_t vocab_size);
  ~TrainingData();
  TrainingData(TrainingData&&) noexcept;

  // Samples in one epoch of this split: the sum of the own epochs of the sources with weight > 0.
  // A source's epoch cuts the concatenation of its split's documents (in an order shuffled per
  // epoch) into (tokens - 1) / seq_len samples with stride seq_len, as Megatron's GPTDataset does.
  int64_t num_samples() const;
  int64_t seq_len() const;
  // Writes sample `index` (any index >= 0; later epochs reshuffle deterministically from the seed)
  // as seq_len + 1 tokens: inputs are out[0..seq_len), targets out[1..seq_len].
  void sample(int64_t index, int32_t* out) const;
  // Which source (index into cfg.sources) sample `index` comes from.
  int source_of(int64_t index) const;

  // Per-source figures for this split (source = index into cfg.sources).
  int num_sources() const;
  int64_t source_num_documents(int source) const;
  int64_t source_num_tokens(int source) const;
  int64_t source_num_samples(int source) const;  // samples in one epoch of the source alone
  // Samples of one blended epoch (num_samples()) drawn from `source`.
  int64_t source_samples_per_epoch(int source) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dirmoe::data
