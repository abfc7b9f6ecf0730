// TrainingData: blending proportions (Megatron's greedy), document split disjointness, sample
// windows with stride seq_len, deterministic shuffles across epochs, llm.c shard sources, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>

#include "runtime/core/error.h"
#include "runtime/data/dataset.h"
#include "runtime/data/indexed_dataset.h"
#include "tests/data/data_test_util.h"

// The tests' Python interpreter (DIRMOE_PYTHON from CTest: Debian's, which has numpy), else
// python3.
static std::string test_python() {
  const char* p = std::getenv("DIRMOE_PYTHON");
  return p != nullptr && *p != '\0' ? p : "python3";
}

namespace dirmoe::data {
namespace {

using testing::TempDir;

// Writes a Megatron dataset whose document d has `len(d)` tokens, all equal to base + d.
void write_docs(const std::string& prefix, int num_docs, int32_t base,
                const std::function<int(int)>& len) {
  IndexedDatasetWriter w(prefix, TokenDType::kUInt16);
  for (int d = 0; d < num_docs; ++d) w.add_document(std::vector<int32_t>(len(d), base + d));
  w.finalize();
}

std::vector<int32_t> get(const TrainingData& td, int64_t i) {
  std::vector<int32_t> out(td.seq_len() + 1, -1);
  td.sample(i, out.data());
  return out;
}

template <class Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TrainingData, SamplesAreStrideWindowsOfTheConcatenation) {
  TempDir dir;
  // One document 0..99: samples must be [8k, 8k + 8] for k in [0, 99 / 8 = 12).
  IndexedDatasetWriter w(dir / "one", TokenDType::kUInt16);
  std::vector<int32_t> doc(100);
  for (int i = 0; i < 100; ++i) doc[i] = i;
  w.add_document(doc);
  w.finalize();
  DataConfig cfg{{{1.0, dir / "one"}}, 0.0};
  TrainingData td(cfg, Split::kTrain, 8, 42, 1000);
  ASSERT_EQ(td.num_samples(), 12);
  std::set<int32_t> starts;
  for (int64_t i = 0; i < td.num_samples(); ++i) {
    const auto s = get(td, i);
    ASSERT_EQ(s[0] % 8, 0);
    for (int k = 0; k < 9; ++k) ASSERT_EQ(s[k], s[0] + k);
    starts.insert(s[0]);
    EXPECT_EQ(td.source_of(i), 0);
  }
  EXPECT_EQ(starts.size(), 12u);
}

TEST(TrainingData, SamplesCrossDocumentBoundaries) {
  TempDir dir;
  write_docs(dir / "d", 10, 1, [](int d) { return 3 + d % 4; });
  DataConfig cfg{{{1.0, dir / "d"}}, 0.0};
  TrainingData td(cfg, Split::kTrain, 16, 1, 100);
  int64_t total = 0;
  for (int d = 0; d < 10; ++d) total += 3 + d % 4;
  EXPECT_EQ(td.source_num_tokens(0), total);
  EXPECT_EQ(td.num_samples(), (total - 1) / 16);
  // Each sample is runs of equal tokens (documents), each run complete except the first and last.
  std::map<int32_t, int> doc_len;
  for (int d = 0; d < 10; ++d) doc_len[1 + d] = 3 + d % 4;
  for (int64_t i = 0; i < td.num_samples(); ++i) {
    const auto s = get(td, i);
    std::vector<std::pair<int32_t, int>> runs;
    for (int32_t t : s) {
      if (runs.empty() || runs.back().first != t) {
        runs.push_back({t, 1});
      } else {
        ++runs.back().second;
      }
    }
    for (size_t r = 1; r + 1 < runs.size(); ++r) EXPECT_EQ(runs[r].second, doc_len[runs[r].first]);
  }
}

TEST(TrainingData, SplitIsByDocumentAndDisjoint) {
  TempDir dir;
  write_docs(dir / "d", 40, 1, [](int d) { return 5 + d % 7; });
  DataConfig cfg{{{1.0, dir / "d"}}, 0.1};
  TrainingData train(cfg, Split::kTrain, 4, 9, 100);
  TrainingData valid(cfg, Split::kValid, 4, 9, 100);
  EXPECT_EQ(train.source_num_documents(0), 36);
  EXPECT_EQ(valid.source_num_documents(0), 4);
  std::set<int32_t> train_docs, valid_docs;
  for (int64_t i = 0; i < train.num_samples(); ++i) {
    for (int32_t t : get(train, i)) train_docs.insert(t);
  }
  for (int64_t i = 0; i < valid.num_samples(); ++i) {
    for (int32_t t : get(valid, i)) valid_docs.insert(t);
  }
  for (int32_t t : valid_docs) EXPECT_EQ(train_docs.count(t), 0u) << "document " << t - 1;
  EXPECT_EQ(*valid_docs.begin(), 37);  // the last 4 documents (ids 36..39) are held out
  EXPECT_EQ(*train_docs.rbegin(), 36);
  EXPECT_EQ(train_docs.size(), 36u);
}

TEST(TrainingData, SplitKeepsOneDocumentEachSide) {
  TempDir dir;
  write_docs(dir / "d", 5, 1, [](int) { return 10; });
  DataConfig cfg{{{1.0, dir / "d"}}, 0.01};
  EXPECT_EQ(TrainingData(cfg, Split::kValid, 4, 1, 100).source_num_documents(0), 1);
  cfg.valid_fraction = 0.99;
  EXPECT_EQ(TrainingData(cfg, Split::kTrain, 4, 1, 100).source_num_documents(0), 1);
  write_docs(dir / "one", 1, 1, [](int) { return 50; });
  DataConfig single{{{1.0, dir / "one"}}, 0.05};
  expect_error([&] { TrainingData(single, Split::kTrain, 4, 1, 100); }, "needs at least 2");
  single.valid_fraction = 0;
  EXPECT_EQ(TrainingData(single, Split::kTrain, 4, 1, 100).source_num_documents(0), 1);
  expect_error([&] { TrainingData(single, Split::kValid, 4, 1, 100); }, "valid split");
}

TEST(TrainingData, BlendFollowsWeights) {
  TempDir dir;
  write_docs(dir / "a", 30, 100, [](int) { return 33; });
  write_docs(dir / "b", 30, 200, [](int) { return 33; });
  write_docs(dir / "c", 30, 300, [](int) { return 33; });
  DataConfig cfg{{{5.0, dir / "a"}, {3.0, dir / "b"}, {2.0, dir / "c"}}, 0.0};
  TrainingData td(cfg, Split::kTrain, 8, 3, 1000);
  const int64_t n = td.num_samples();
  EXPECT_EQ(n, 3 * ((30 * 33 - 1) / 8));
  const double w[3] = {0.5, 0.3, 0.2};
  std::vector<int64_t> count(3, 0);
  for (int64_t i = 0; i < 3 * n; ++i) {
    const int s = td.source_of(i);
    ++count[s];
    const auto tokens = get(td, i);
    for (int32_t t : tokens) ASSERT_EQ(t / 100, s + 1) << "sample " << i << " of source " << s;
    if (i < n) {
      for (int d = 0; d < 3; ++d) ASSERT_LE(std::abs(count[d] - w[d] * (i + 1)), 1.0 + 1e-9);
    }
  }
  for (int d = 0; d < 3; ++d) {
    EXPECT_NEAR(static_cast<double>(count[d]) / (3 * n), w[d], 1.0 / n);
    EXPECT_EQ(td.source_samples_per_epoch(d) * 3, count[d]);
  }
}

TEST(TrainingData, ZeroWeightSourceIsNeverDrawn) {
  TempDir dir;
  write_docs(dir / "a", 10, 100, [](int) { return 20; });
  write_docs(dir / "b", 10, 200, [](int) { return 20; });
  DataConfig cfg{{{0.0, dir / "a"}, {1.0, dir / "b"}}, 0.0};
  TrainingData td(cfg, Split::kTrain, 8, 3, 1000);
  EXPECT_EQ(td.num_samples(), td.source_num_samples(1));
  for (int64_t i = 0; i < 2 * td.num_samples(); ++i) EXPECT_EQ(td.source_of(i), 1);
}

TEST(TrainingData, RejectsBadWeights) {
  TempDir dir;
  write_docs(dir / "a", 10, 100, [](int) { return 20; });
  write_docs(dir / "b", 10, 200, [](int) { return 20; });
  DataConfig cfg{{{1.0, dir / "a"}, {-0.5, dir / "b"}}, 0.0};
  expect_error([&] { TrainingData(cfg, Split::kTrain, 8, 3, 1000); }, "non-negative");
  cfg.sources[1].weight = 0;
  cfg.sources[0].weight = 0;
  expect_error([&] { TrainingData(cfg, Split::kTrain, 8, 3, 1000); }, "all blend weights are zero");
  cfg.sources[0].weight = std::nan("");
  expect_error([&] { TrainingData(cfg, Split::kTrain, 8, 3, 1000); }, "finite");
  expect_error([&] { TrainingData(DataConfig{}, Split::kTrain, 8, 3, 1000); }, "no data sources");
}

TEST(TrainingData, ShuffleIsDeterministicAndReshufflesEachEpoch) {
  TempDir dir;
  write_docs(dir / "d", 50, 1, [](int d) { return 7 + d % 5; });
  DataConfig cfg{{{1.0, dir / "d"}}, 0.0};
  TrainingData a(cfg, Split::kTrain, 8, 1234, 100);
  TrainingData b(cfg, Split::kTrain, 8, 1234, 100);
  TrainingData c(cfg, Split::kTrain, 8, 99, 100);
  const int64_t n = a.num_samples();
  int differ_seed = 0, differ_epoch = 0;
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(get(a, i), get(b, i));
    EXPECT_EQ(get(a, i + 2 * n), get(b, i + 2 * n));
    differ_seed += get(a, i) != get(c, i);
    differ_epoch += get(a, i) != get(a, i + n);
  }
  EXPECT_GT(differ_seed, n / 2);
  EXPECT_GT(differ_epoch, n / 2);
  // Random access in any order gives the same samples.
  TrainingData d(cfg, Split::kTrain, 8, 1234, 100);
  for (int64_t i = 3 * n - 1; i >= 0; i -= 7) EXPECT_EQ(get(d, i), get(a, i));
}

TEST(TrainingData, LlmcShardDocumentsAreDelimitedByEot) {
  TempDir dir;
  const int32_t e = 50256;
  std::vector<int32_t> tokens = {e, 1, 1, 1, e, 2, 2, 2, 2, e, 3, 3, e, 4, 4, 4, 4, 4};
  write_token_shard(dir / "shard.bin", tokens);
  DataConfig cfg{{{1.0, dir / "shard.bin"}}, 0.25};
  TrainingData train(cfg, Split::kTrain, 2, 5, 50257);
  TrainingData valid(cfg, Split::kValid, 2, 5, 50257);
  EXPECT_EQ(train.source_num_documents(0), 3);
  EXPECT_EQ(valid.source_num_documents(0), 1);
  EXPECT_EQ(train.source_num_tokens(0), 12);
  EXPECT_EQ(valid.source_num_tokens(0), 6);
  for (int64_t i = 0; i < valid.num_samples(); ++i) {
    for (int32_t t : get(valid, i)) EXPECT_TRUE(t == 4 || t == e);
  }
  for (int64_t i = 0; i < train.num_samples(); ++i) {
    for (int32_t t : get(train, i)) EXPECT_NE(t, 4);
  }
}

// A llama-3 shard (uint32 tokens, documents start at <|begin_of_text|> 128000), written as llm.c's
// writer does (numpy, tests/data/write_llmc_shard.py), trains like any other source.
TEST(TrainingData, LlmcLlama3ShardDocumentsAreDelimitedByBeginOfText) {
  const char* src = std::getenv("DIRMOE_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "DIRMOE_SOURCE_DIR unset (run through ctest)";
  TempDir dir;
  const int32_t b = 128000;
  const std::vector<int32_t> tokens = {b, 70000, 1, 1, b, 2, 2, 2, 2, b, 3, 3, b, 128255, 4, 4, 4};
  std::string cmd = test_python();
  cmd.append(" ").append(src).append("/tests/data/write_llmc_shard.py ").append(dir / "l3.bin");
  cmd.append(" llama-3");
  for (int32_t t : tokens) cmd.append(" ").append(std::to_string(t));
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  DataConfig cfg{{{1.0, dir / "l3.bin"}}, 0.25};
  TrainingData train(cfg, Split::kTrain, 2, 5, 128256);
  TrainingData valid(cfg, Split::kValid, 2, 5, 128256);
  EXPECT_EQ(train.source_num_documents(0), 3);
  EXPECT_EQ(valid.source_num_documents(0), 1);
  EXPECT_EQ(train.source_num_tokens(0), 12);
  EXPECT_EQ(valid.source_num_tokens(0), 5);
  for (int64_t i = 0; i < valid.num_samples(); ++i) {
    for (int32_t t : get(valid, i)) EXPECT_TRUE(t == 4 || t == b || t == 128255) << t;
  }
  bool saw_wide = false;
  for (int64_t i = 0; i < train.num_samples(); ++i) {
    for (int32_t t : get(train, i)) {
      EXPECT_NE(t, 4);
      saw_wide |= t == 70000;
    }
  }
  EXPECT_TRUE(saw_wide) << "token 70000 (above uint16) never read back";
  expect_error([&] { TrainingData(cfg, Split::kTrain, 2, 5, 128000); },
               "token 128000 at position 0 is outside the vocabulary [0, 128000)");
}

TEST(TrainingData, BadSources) {
  TempDir dir;
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "missing"}}, 0.0}, Split::kTrain, 8, 1, 100);
      },
      "does not exist");
  write_docs(dir / "big", 4, 90, [](int) { return 20; });
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "big"}}, 0.0}, Split::kTrain, 8, 1, 92);
      },
      "token 92 at position 40 (sequence 2) is outside the vocabulary [0, 92)");
  IndexedDatasetWriter w(dir / "empty", TokenDType::kUInt16);
  w.finalize();
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "empty"}}, 0.0}, Split::kTrain, 8, 1, 100);
      },
      "has no documents");
  write_docs(dir / "short", 3, 1, [](int) { return 2; });
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "short"}}, 0.0}, Split::kTrain, 8, 1, 100);
      },
      "too few for one sample");
  testing::write_file(dir / "junk.bin", std::string(2048, 'j'));
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "junk.bin"}}, 0.0}, Split::kTrain, 8, 1, 100);
      },
      "neither a Megatron prefix");
  write_token_shard(dir / "s.bin", std::vector<int32_t>{1, 2, 60000});
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "s.bin"}}, 0.0}, Split::kTrain, 1, 1, 50257);
      },
      "token 60000 at position 2");
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "big"}}, 0.0}, Split::kTrain, 0, 1, 100);
      },
      "seq_len");
  expect_error(
      [&] {
        TrainingData({{{1.0, dir / "big"}}, 1.0}, Split::kTrain, 8, 1, 100);
      },
      "valid_fraction");
}

TEST(TrainingData, AcceptsPrefixWithBinSuffix) {
  TempDir dir;
  write_docs(dir / "d", 4, 1, [](int) { return 20; });
  TrainingData td({{{1.0, dir / "d.bin"}}, 0.0}, Split::kTrain, 8, 1, 100);
  EXPECT_EQ(td.source_num_documents(0), 4);
}

}  // namespace
}  // namespace dirmoe::data
