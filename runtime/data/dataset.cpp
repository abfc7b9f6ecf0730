// TrainingData: per-source document split, per-epoch shuffles from Philox, Megatron's greedy
// blending (BlendedDataset / helpers.cpp build_blending_indices), samples by global index.
#include "runtime/data/dataset.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "runtime/core/error.h"
#include "runtime/core/philox.h"
#include "runtime/data/indexed_dataset.h"
#include "runtime/data/tokenizer.h"

namespace dirmoe::data {
namespace {

enum ShuffleStream : uint32_t { kDocOrder = 1, kSampleOrder = 2 };

// Fisher-Yates driven by Philox keyed by (seed, stream); counter = (i, epoch). The draw of j in
// [0, i] maps 64 random bits by multiply-shift (bias below 2^-30 for any realistic n).
void shuffle(std::vector<int64_t>* v, uint64_t seed, uint32_t stream, uint32_t epoch) {
  const PhiloxStream ps{seed, stream};
  for (int64_t i = static_cast<int64_t>(v->size()) - 1; i > 0; --i) {
    const Philox4 r = ps.at(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), epoch);
    const uint64_t x = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
    const int64_t j = static_cast<int64_t>(
        (static_cast<unsigned __int128>(x) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap((*v)[i], (*v)[j]);
  }
}

struct EpochState {
  uint32_t epoch = 0;
  std::vector<int64_t> doc_order;    // (num_docs) split-local document ids
  std::vector<int64_t> doc_end;      // (num_docs) running token count after each document
  std::vector<int64_t> sample_perm;  // (num_samples) sample slot -> position / seq_len
};

struct Source {
  std::string path;
  double weight = 0;
  std::unique_ptr<IndexedDataset> megatron;
  std::unique_ptr<TokenShard> shard;
  std::vector<int64_t> doc_start;  // (documents + 1) token offsets of the whole source
  int64_t first_doc = 0, num_docs = 0, num_tokens = 0, num_samples = 0;
  uint32_t stream_base = 0;

  mutable std::mutex mutex;
  mutable std::shared_ptr<const EpochState> recent[2];

  void read(int64_t offset, int64_t count, int32_t* out) const {
    if (megatron) {
      megatron->read_tokens(offset, count, out);
    } else {
      shard->read_tokens(offset, count, out);
    }
  }
  int64_t doc_length(int64_t local) const {
    return doc_start[first_doc + local + 1] - doc_start[first_doc + local];
  }
  std::shared_ptr<const EpochState> epoch_state(uint32_t epoch, int64_t seq_len,
                                                uint64_t seed) const;
  void read_sample(int64_t s, int64_t seq_len, uint64_t seed, int32_t* out) const;
};

std::shared_ptr<const EpochState> Source::epoch_state(uint32_t epoch, int64_t seq_len,
                                                      uint64_t seed) const {
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& st : recent) {
      if (st && st->epoch == epoch) return st;
    }
  }
  auto st = std::make_shared<EpochState>();
  st->epoch = epoch;
  st->doc_order.resize(num_docs);
  for (int64_t i = 0; i < num_docs; ++i) st->doc_order[i] = i;
  shuffle(&st->doc_order, seed, stream_base + kDocOrder, epoch);
  st->doc_end.resize(num_docs);
  int64_t total = 0;
  for (int64_t i = 0; i < num_docs; ++i) st->doc_end[i] = (total += doc_length(st->doc_order[i]));
  st->sample_perm.resize(num_samples);
  for (int64_t i = 0; i < num_samples; ++i) st->sample_perm[i] = i;
  shuffle(&st->sample_perm, seed, stream_base + kSampleOrder, epoch);
  std::lock_guard<std::mutex> lock(mutex);
  recent[1] = recent[0];
  recent[0] = st;
  return st;
}

void Source::read_sample(int64_t s, int64_t seq_len, uint64_t seed, int32_t* out) const {
  const int64_t epoch = s / num_samples;
  DIRMOE_CHECK(epoch <= UINT32_MAX, "sample index too large for ", path);
  const auto st = epoch_state(static_cast<uint32_t>(epoch), seq_len, seed);
  int64_t pos = st->sample_perm[s % num_samples] * seq_len;
  int64_t remaining = seq_len + 1;
  auto it = std::upper_bound(st->doc_end.begin(), st->doc_end.end(), pos);
  for (int64_t k = it - st->doc_end.begin(); remaining > 0; ++k) {
    DIRMOE_CHECK(k < num_docs, "sample ", s, " runs past the end of ", path);
    const int64_t local = st->doc_order[k];
    const int64_t begin = st->doc_end[k] - doc_length(local);
    const int64_t within = pos - begin;
    const int64_t take = std::min(remaining, st->doc_end[k] - pos);
    if (take > 0) {
      read(doc_start[first_doc + local] + within, take, out);
      out += take;
      remaining -= take;
      pos += take;
    }
  }
}

void open_source(Source* src, int64_t vocab_size) {
  const std::string& path = src->path;
  const std::string prefix = megatron_prefix_of(path);
  if (!prefix.empty()) {
    src->megatron = std::make_unique<IndexedDataset>(prefix);
    const IndexedDataset& ds = *src->megatron;
    ds.validate_tokens(vocab_size);
    const int64_t docs = ds.num_documents();
    src->doc_start.resize(docs + 1);
    for (int64_t d = 0; d <= docs; ++d) {
      const int64_t seq = ds.document_index_entry(d);
      src->doc_start[d] = seq < ds.num_sequences() ? ds.sequence_offset(seq) : ds.num_tokens();
    }
  } else if (file_exists(path)) {
    DIRMOE_CHECK(looks_like_token_shard(path), "data source ", path,
                 " is neither a Megatron prefix (no ", path,
                 ".idx) nor an llm.c token shard (its magic is neither ", kShardMagic, " nor ",
                 kShardMagicLlama3, ")");
    src->shard = std::make_unique<TokenShard>(path);
    const TokenShard& sh = *src->shard;
    sh.validate_tokens(vocab_size);
    src->doc_start = shard_document_starts(sh, sh.document_token());
  } else {
    DIRMOE_FAIL("data source ", path, " does not exist (neither ", path, ".idx + ", path,
                ".bin nor an llm.c shard file ", path, ")");
  }
}

}  // namespace

std::string megatron_prefix_of(const std::string& path) {
  if (file_exists(path + ".idx")) return path;
  if (path.size() > 4 && path.ends_with(".bin") &&
      file_exists(path.substr(0, path.size() - 4) + ".idx")) {
    return path.substr(0, path.size() - 4);
  }
  return "";
}

bool data_source_exists(const std::string& path) {
  return !megatron_prefix_of(path).empty() || file_exists(path);
}

struct TrainingData::Impl {
  Split split = Split::kTrain;
  int64_t seq_len = 0;
  uint64_t seed = 0;
  std::vector<std::unique_ptr<Source>> sources;
  int64_t num_samples = 0;
  std::vector<int32_t> blend_source;     // (num_samples) source of each slot of a blended epoch
  std::vector<int64_t> blend_sample;     // (num_samples) the source's own sample index
  std::vector<int64_t> blend_per_epoch;  // (sources) slots of a blended epoch per source
  int single_source = -1;                // the only weighted source, when there is one

  const Source& source(int s) const {
    DIRMOE_CHECK(s >= 0 && s < static_cast<int>(sources.size()), "source ", s, " out of range [0, ",
                 sources.size(), ")");
    return *sources[s];
  }
};

TrainingData::TrainingData(const DataConfig& cfg, Split split, int64_t seq_len, uint64_t seed,
                           int64_t vocab_size)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.split = split;
  m.seq_len = seq_len;
  m.seed = seed;
  const char* split_name = split == Split::kTrain ? "train" : "valid";
  DIRMOE_CHECK(seq_len >= 1, "seq_len must be at least 1, got ", seq_len);
  DIRMOE_CHECK(vocab_size >= 1, "vocab_size must be positive, got ", vocab_size);
  DIRMOE_CHECK(!cfg.sources.empty(), "no data sources given");
  DIRMOE_CHECK(cfg.sources.size() < (1u << 20), "too many data sources: ", cfg.sources.size());
  DIRMOE_CHECK(
      std::isfinite(cfg.valid_fraction) && cfg.valid_fraction >= 0 && cfg.valid_fraction < 1,
      "valid_fraction must be in [0, 1), got ", cfg.valid_fraction);
  double weight_sum = 0;
  for (size_t i = 0; i < cfg.sources.size(); ++i) {
    const double w = cfg.sources[i].weight;
    DIRMOE_CHECK(std::isfinite(w) && w >= 0, "data source ", i, " (", cfg.sources[i].path,
                 ") has weight ", w, ": blend weights must be finite and non-negative");
    weight_sum += w;
  }
  DIRMOE_CHECK(weight_sum > 0, "all blend weights are zero: at least one data source needs a ",
               "positive weight");

  for (size_t i = 0; i < cfg.sources.size(); ++i) {
    auto src = std::make_unique<Source>();
    src->path = cfg.sources[i].path;
    src->weight = cfg.sources[i].weight / weight_sum;
    src->stream_base = static_cast<uint32_t>(i) * 16 + (split == Split::kTrain ? 0 : 8);
    open_source(src.get(), vocab_size);
    const int64_t docs = static_cast<int64_t>(src->doc_start.size()) - 1;
    DIRMOE_CHECK(docs >= 1, "data source ", src->path, " has no documents");
    int64_t num_valid = 0;
    if (cfg.valid_fraction > 0) {
      DIRMOE_CHECK(docs >= 2, "data source ", src->path, " has ", docs,
                   " document; a train/valid split (valid_fraction ", cfg.valid_fraction,
                   ") needs at least 2");
      num_valid = static_cast<int64_t>(std::llround(cfg.valid_fraction * docs));
      num_valid = std::clamp<int64_t>(num_valid, 1, docs - 1);
    }
    const int64_t num_train = docs - num_valid;
    src->first_doc = split == Split::kTrain ? 0 : num_train;
    src->num_docs = split == Split::kTrain ? num_train : num_valid;
    DIRMOE_CHECK(src->num_docs >= 1, "the ", split_name, " split of data source ", src->path,
                 " is empty (valid_fraction ", cfg.valid_fraction, ")");
    src->num_tokens =
        src->doc_start[src->first_doc + src->num_docs] - src->doc_start[src->first_doc];
    src->num_samples = src->num_tokens > 0 ? (src->num_tokens - 1) / seq_len : 0;
    if (src->weight > 0) {
      DIRMOE_CHECK(src->num_samples >= 1, "the ", split_name, " split of data source ", src->path,
                   " has ", src->num_tokens, " tokens in ", src->num_docs,
                   " documents: too few for one sample of seq_len + 1 = ", seq_len + 1);
    }
    m.sources.push_back(std::move(src));
  }

  // One blended epoch covers every weighted source's own epoch once; the greedy below assigns
  // each slot to the source furthest behind its share.
  const int num = static_cast<int>(m.sources.size());
  int weighted = 0;
  for (int d = 0; d < num; ++d) {
    if (m.sources[d]->weight > 0) {
      m.num_samples += m.sources[d]->num_samples;
      ++weighted;
      m.single_source = d;
    }
  }
  m.blend_per_epoch.assign(num, 0);
  if (weighted == 1) {
    m.blend_per_epoch[m.single_source] = m.num_samples;
    return;
  }
  m.single_source = -1;
  m.blend_source.resize(m.num_samples);
  m.blend_sample.resize(m.num_samples);
  std::vector<double> weights(num);
  for (int d = 0; d < num; ++d) weights[d] = m.sources[d]->weight;
  std::vector<int64_t>& current = m.blend_per_epoch;
  for (int64_t i = 0; i < m.num_samples; ++i) {
    const double at = std::max(static_cast<double>(i), 1.0);
    int best = 0;
    double best_error = weights[0] * at - static_cast<double>(current[0]);
    for (int d = 1; d < num; ++d) {
      const double error = weights[d] * at - static_cast<double>(current[d]);
      if (error > best_error) {
        best_error = error;
        best = d;
      }
    }
    m.blend_source[i] = best;
    m.blend_sample[i] = current[best]++;
  }
}

TrainingData::~TrainingData() = default;
TrainingData::TrainingData(TrainingData&&) noexcept = default;

int64_t TrainingData::num_samples() const { return impl_->num_samples; }
int64_t TrainingData::seq_len() const { return impl_->seq_len; }

int TrainingData::source_of(int64_t index) const {
  DIRMOE_CHECK(index >= 0, "sample index must be non-negative, got ", index);
  const Impl& m = *impl_;
  if (m.single_source >= 0) return m.single_source;
  return m.blend_source[index % m.num_samples];
}

void TrainingData::sample(int64_t index, int32_t* out) const {
  DIRMOE_CHECK(index >= 0, "sample index must be non-negative, got ", index);
  const Impl& m = *impl_;
  const int64_t epoch = index / m.num_samples, slot = index % m.num_samples;
  int d;
  int64_t s;
  if (m.single_source >= 0) {
    d = m.single_source;
    s = index;
  } else {
    d = m.blend_source[slot];
    s = epoch * m.blend_per_epoch[d] + m.blend_sample[slot];
  }
  m.sources[d]->read_sample(s, m.seq_len, m.seed, out);
}

int TrainingData::num_sources() const { return static_cast<int>(impl_->sources.size()); }
int64_t TrainingData::source_num_documents(int source) const {
  return impl_->source(source).num_docs;
}
int64_t TrainingData::source_num_tokens(int source) const {
  return impl_->source(source).num_tokens;
}
int64_t TrainingData::source_num_samples(int source) const {
  return impl_->source(source).num_samples;
}
int64_t TrainingData::source_samples_per_epoch(int source) const {
  impl_->source(source);
  return impl_->blend_per_epoch[source];
}

}  // namespace dirmoe::data
