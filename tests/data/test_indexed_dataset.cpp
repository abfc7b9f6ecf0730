// Megatron .idx/.bin and llm.c shards: byte-exact layout against hand-computed values, round
// trips, and one named error for every kind of damaged file.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/data/file_util.h"
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
using testing::write_file;

template <class T>
T at(const std::string& bytes, size_t offset) {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof(T));
  return v;
}

template <class T>
void put(std::string* bytes, size_t offset, T v) {
  std::memcpy(bytes->data() + offset, &v, sizeof(T));
}

// Expects `fn` to throw an Error whose message names `file` and contains `needle`.
template <class Fn>
void expect_error(Fn&& fn, const std::string& file, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected '" << needle << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(file), std::string::npos)
        << "message does not name " << file << ": " << what;
    EXPECT_NE(what.find(needle), std::string::npos) << "message lacks '" << needle << "': " << what;
  }
}

void write_three_docs(const std::string& prefix, TokenDType dtype) {
  IndexedDatasetWriter w(prefix, dtype);
  w.add_document(std::vector<int32_t>{10, 11, 12});
  w.add_document(std::vector<int32_t>{20});
  w.add_document(std::vector<int32_t>{30, 31, 32, 33});
  w.finalize();
}

TEST(IndexedDataset, IdxIsByteExact) {
  TempDir dir;
  const std::string prefix = dir / "tiny";
  write_three_docs(prefix, token_dtype_for_vocab(50257));
  const std::string idx = read_file(prefix + ".idx");
  const std::string bin = read_file(prefix + ".bin");
  ASSERT_EQ(idx.size(), 9u + 8 + 1 + 8 + 8 + 3 * 4 + 3 * 8 + 4 * 8);  // 102
  EXPECT_EQ(idx.substr(0, 9), std::string("MMIDIDX\0\0", 9));
  EXPECT_EQ(at<uint64_t>(idx, 9), 1u);   // version
  EXPECT_EQ(at<uint8_t>(idx, 17), 8u);   // dtype code: uint16
  EXPECT_EQ(at<uint64_t>(idx, 18), 3u);  // sequences
  EXPECT_EQ(at<uint64_t>(idx, 26), 4u);  // document-index entries
  const int32_t lengths[] = {3, 1, 4};
  const int64_t pointers[] = {0, 6, 8};
  const int64_t doc_index[] = {0, 1, 2, 3};
  for (int i = 0; i < 3; ++i) EXPECT_EQ(at<int32_t>(idx, 34 + 4 * i), lengths[i]);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(at<int64_t>(idx, 46 + 8 * i), pointers[i]);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(at<int64_t>(idx, 70 + 8 * i), doc_index[i]);
  ASSERT_EQ(bin.size(), 16u);
  const uint16_t tokens[] = {10, 11, 12, 20, 30, 31, 32, 33};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(at<uint16_t>(bin, 2 * i), tokens[i]);
  EXPECT_FALSE(file_exists(prefix + ".idx.tmp"));
  EXPECT_FALSE(file_exists(prefix + ".bin.tmp"));
}

TEST(IndexedDataset, DtypeFollowsVocabulary) {
  EXPECT_EQ(token_dtype_for_vocab(50257), TokenDType::kUInt16);
  EXPECT_EQ(token_dtype_for_vocab(65499), TokenDType::kUInt16);
  EXPECT_EQ(token_dtype_for_vocab(65500), TokenDType::kInt32);
  EXPECT_EQ(token_dtype_for_vocab(128256), TokenDType::kInt32);
  EXPECT_THROW(token_dtype_for_vocab(0), Error);
}

TEST(IndexedDataset, ReaderRoundTrip) {
  TempDir dir;
  for (TokenDType dt :
       {TokenDType::kUInt16, TokenDType::kInt32, TokenDType::kInt64, TokenDType::kUInt8}) {
    const std::string prefix = dir / ("rt" + std::to_string(static_cast<int>(dt)));
    IndexedDatasetWriter w(prefix, dt);
    std::vector<std::vector<int32_t>> docs = {{1, 2, 3}, {}, {200, 100}, {7}};
    if (dt == TokenDType::kInt32 || dt == TokenDType::kInt64) docs[2] = {100000, 65535};
    for (const auto& d : docs) w.add_document(d);
    // A two-sequence document.
    w.add_item(std::vector<int32_t>{4, 5});
    w.add_item(std::vector<int32_t>{6});
    w.end_document();
    w.finalize();
    EXPECT_EQ(w.num_documents(), 5);
    EXPECT_EQ(w.num_sequences(), 6);

    IndexedDataset ds(prefix);
    EXPECT_EQ(ds.dtype_code(), static_cast<uint8_t>(dt));
    EXPECT_EQ(ds.num_sequences(), 6);
    EXPECT_EQ(ds.num_documents(), 5);
    EXPECT_EQ(ds.num_tokens(), 3 + 0 + 2 + 1 + 3);
    EXPECT_EQ(ds.document_index_entry(4), 4);
    EXPECT_EQ(ds.document_index_entry(5), 6);
    std::vector<int32_t> all(ds.num_tokens());
    ds.read_tokens(0, ds.num_tokens(), all.data());
    std::vector<int32_t> expected;
    for (const auto& d : docs) expected.insert(expected.end(), d.begin(), d.end());
    expected.insert(expected.end(), {4, 5, 6});
    EXPECT_EQ(all, expected);
    EXPECT_EQ(ds.sequence_length(2), 2);
    EXPECT_EQ(ds.sequence_offset(2), 3);
    std::vector<int32_t> two(2);
    ds.read_tokens(3, 2, two.data());
    EXPECT_EQ(two, docs[2]);
    EXPECT_THROW(ds.read_tokens(8, 2, two.data()), Error);
    ds.validate_tokens(200001);
  }
}

TEST(IndexedDataset, WriterRejectsTokensTheDtypeCannotHold) {
  TempDir dir;
  IndexedDatasetWriter w(dir / "x", TokenDType::kUInt16);
  expect_error([&] { w.add_document(std::vector<int32_t>{70000}); }, dir / "x", "does not fit");
  expect_error([&] { w.add_document(std::vector<int32_t>{-1}); }, dir / "x", "does not fit");
}

TEST(IndexedDataset, AbandonedWriterLeavesNoFiles) {
  TempDir dir;
  {
    IndexedDatasetWriter w(dir / "x", TokenDType::kUInt16);
    w.add_document(std::vector<int32_t>{1});
  }
  EXPECT_FALSE(file_exists(dir / "x.bin"));
  EXPECT_FALSE(file_exists(dir / "x.bin.tmp"));
  EXPECT_FALSE(file_exists(dir / "x.idx"));
}

class DamagedIndex : public ::testing::Test {
 protected:
  void SetUp() override {
    prefix_ = dir_ / "d";
    write_three_docs(prefix_, TokenDType::kUInt16);
    idx_ = read_file(prefix_ + ".idx");
    bin_ = read_file(prefix_ + ".bin");
  }
  void expect_open_error(const std::string& idx, const std::string& bin, const std::string& file,
                         const std::string& needle) {
    write_file(prefix_ + ".idx", idx);
    write_file(prefix_ + ".bin", bin);
    expect_error([&] { IndexedDataset ds(prefix_); }, file, needle);
  }
  TempDir dir_;
  std::string prefix_, idx_, bin_;
};

TEST_F(DamagedIndex, WrongMagic) {
  std::string idx = idx_;
  idx[0] = 'X';
  expect_open_error(idx, bin_, prefix_ + ".idx", "wrong magic");
}

TEST_F(DamagedIndex, WrongVersion) {
  std::string idx = idx_;
  put<uint64_t>(&idx, 9, 2);
  expect_open_error(idx, bin_, prefix_ + ".idx", "unsupported version 2");
}

TEST_F(DamagedIndex, UnknownDtypeCode) {
  std::string idx = idx_;
  for (uint8_t code : {0, 9, 200}) {
    idx[17] = static_cast<char>(code);
    expect_open_error(idx, bin_, prefix_ + ".idx", "unknown dtype code " + std::to_string(code));
  }
  idx[17] = 6;
  expect_open_error(idx, bin_, prefix_ + ".idx", "cannot hold token ids");
}

TEST_F(DamagedIndex, TruncatedIndex) {
  expect_open_error(idx_.substr(0, 20), bin_, prefix_ + ".idx", "truncated");
  expect_open_error(idx_.substr(0, idx_.size() - 1), bin_, prefix_ + ".idx", "truncated");
  expect_open_error(idx_ + "x", bin_, prefix_ + ".idx", "corrupt");
  std::string idx = idx_;
  put<uint64_t>(&idx, 18, uint64_t{1} << 62);  // sequence count that overflows the size formula
  expect_open_error(idx, bin_, prefix_ + ".idx", "truncated");
}

// Megatron's multimodal builder appends one int8 mode per sequence after the document index.
TEST_F(DamagedIndex, MultimodalIndexIsUnsupportedNotCorrupt) {
  const uint64_t num_sequences = at<uint64_t>(idx_, 18);
  ASSERT_GT(num_sequences, 0u);
  const std::string modes(num_sequences, '\0');
  expect_open_error(idx_ + modes, bin_, prefix_ + ".idx", "is a Megatron multimodal index");
  expect_open_error(idx_ + modes, bin_, prefix_ + ".idx", "which is unsupported");
  try {
    write_file(prefix_ + ".idx", idx_ + modes);
    IndexedDataset ds(prefix_);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("corrupt"), std::string::npos) << e.what();
  }
}

TEST_F(DamagedIndex, BinLengthDisagrees) {
  expect_open_error(idx_, bin_.substr(0, 15), prefix_ + ".bin", "truncated or mismatched");
  expect_open_error(idx_, bin_ + "zz", prefix_ + ".bin", "truncated or mismatched");
  expect_open_error(idx_, "", prefix_ + ".bin", "truncated or mismatched");
}

TEST_F(DamagedIndex, BadLengthsAndPointers) {
  std::string idx = idx_;
  put<int32_t>(&idx, 34 + 4, -1);
  expect_open_error(idx, bin_, prefix_ + ".idx", "negative length");
  idx = idx_;
  put<int64_t>(&idx, 46 + 8, 4);
  expect_open_error(idx, bin_, prefix_ + ".idx", "points at byte 4");
}

TEST_F(DamagedIndex, BadDocumentIndex) {
  std::string idx = idx_;
  put<int64_t>(&idx, 70, 1);
  expect_open_error(idx, bin_, prefix_ + ".idx", "starts with 1");
  idx = idx_;
  put<int64_t>(&idx, 70 + 24, 2);
  expect_open_error(idx, bin_, prefix_ + ".idx", "ends at 2");
  idx = idx_;
  put<int64_t>(&idx, 70 + 16, 0);
  expect_open_error(idx, bin_, prefix_ + ".idx", "decreases");
}

TEST_F(DamagedIndex, MissingFiles) {
  std::remove((prefix_ + ".bin").c_str());
  expect_error([&] { IndexedDataset ds(prefix_); }, prefix_ + ".bin", "does not exist");
  std::remove((prefix_ + ".idx").c_str());
  expect_error([&] { IndexedDataset ds(prefix_); }, prefix_ + ".idx", "does not exist");
}

TEST_F(DamagedIndex, TokenOutsideVocabulary) {
  IndexedDataset ds(prefix_);
  ds.validate_tokens(34);
  expect_error([&] { ds.validate_tokens(33); }, prefix_ + ".bin",
               "token 33 at position 7 (sequence 2) is outside the vocabulary [0, 33)");
}

TEST(TokenShard, RoundTrip) {
  TempDir dir;
  const std::string path = dir / "shard.bin";
  std::vector<int32_t> tokens = {50256, 1, 2, 65535, 50256, 0};
  write_token_shard(path, tokens);
  const std::string bytes = read_file(path);
  ASSERT_EQ(bytes.size(), 1024u + 2 * tokens.size());
  EXPECT_EQ(at<int32_t>(bytes, 0), 20240520);
  EXPECT_EQ(at<int32_t>(bytes, 4), 1);
  EXPECT_EQ(at<int32_t>(bytes, 8), 6);
  for (int i = 3; i < 256; ++i) EXPECT_EQ(at<int32_t>(bytes, 4 * i), 0);
  TokenShard sh(path);
  EXPECT_EQ(sh.num_tokens(), 6);
  std::vector<int32_t> back(6);
  sh.read_tokens(0, 6, back.data());
  EXPECT_EQ(back, tokens);
  EXPECT_EQ(shard_document_starts(sh, 50256), (std::vector<int64_t>{0, 4, 6}));
  EXPECT_TRUE(looks_like_token_shard(path));
  sh.validate_tokens(65536);
  expect_error([&] { sh.validate_tokens(50257); }, path, "token 65535 at position 3");
  expect_error([&] { write_token_shard(dir / "big.bin", std::vector<int32_t>{70000}); },
               dir / "big.bin", "does not fit");
}

// A shard written by llm.c's own writer logic (numpy, tests/data/write_llmc_shard.py), in both
// formats, read back token for token; the llama-3 tokens exceed uint16.
TEST(TokenShard, ReadsShardsWrittenAsLlmcWritesThem) {
  const char* src = std::getenv("DIRMOE_SOURCE_DIR");
  ASSERT_NE(src, nullptr) << "DIRMOE_SOURCE_DIR unset (run through ctest)";
  TempDir dir;
  struct Case {
    const char* desc;
    ShardFormat format;
    std::vector<int32_t> tokens;
    int32_t delimiter;
    std::vector<int64_t> starts;
  };
  const std::vector<Case> cases = {
      {"gpt-2", ShardFormat::kGpt2, {50256, 464, 3290, 50256, 65535, 0}, 50256, {0, 3, 6}},
      {"llama-3",
       ShardFormat::kLlama3,
       {128000, 791, 65536, 128255, 128000, 0, 100000},
       128000,
       {0, 4, 7}},
  };
  for (const auto& c : cases) {
    const std::string path = dir / (std::string(c.desc) + ".bin");
    std::string cmd = test_python();
    cmd.append(" ").append(src).append("/tests/data/write_llmc_shard.py ").append(path);
    cmd.append(" ").append(c.desc);
    for (int32_t t : c.tokens) cmd.append(" ").append(std::to_string(t));
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    EXPECT_TRUE(looks_like_token_shard(path)) << c.desc;
    TokenShard sh(path);
    EXPECT_EQ(sh.format(), c.format) << c.desc;
    EXPECT_EQ(sh.document_token(), c.delimiter) << c.desc;
    ASSERT_EQ(sh.num_tokens(), static_cast<int64_t>(c.tokens.size())) << c.desc;
    std::vector<int32_t> back(c.tokens.size());
    sh.read_tokens(0, sh.num_tokens(), back.data());
    EXPECT_EQ(back, c.tokens) << c.desc;
    EXPECT_EQ(shard_document_starts(sh, sh.document_token()), c.starts) << c.desc;
    // dirmoe's own writer gives the same bytes.
    write_token_shard(dir / "ours.bin", c.tokens, c.format);
    EXPECT_EQ(read_file(dir / "ours.bin"), read_file(path)) << c.desc;
  }
  TokenShard llama(dir / "llama-3.bin");
  llama.validate_tokens(128256);
  expect_error([&] { llama.validate_tokens(100000); }, dir / "llama-3.bin",
               "token 128000 at position 0 is outside the vocabulary [0, 100000)");
}

TEST(TokenShard, DamagedFiles) {
  TempDir dir;
  const std::string path = dir / "s.bin";
  write_token_shard(path, std::vector<int32_t>{1, 2, 3});
  const std::string good = read_file(path);
  auto expect_open_error = [&](const std::string& bytes, const std::string& needle) {
    write_file(path, bytes);
    expect_error([&] { TokenShard sh(path); }, path, needle);
  };
  std::string b = good;
  put<int32_t>(&b, 0, 20240521);
  expect_open_error(b, "wrong magic");
  b = good;
  put<int32_t>(&b, 4, 2);
  expect_open_error(b, "unsupported version 2");
  expect_open_error(good.substr(0, good.size() - 1), "truncated");
  expect_open_error(good + "ab", "corrupt");
  expect_open_error(good.substr(0, 100), "shorter than the 1024-byte");
  b = good;
  put<int32_t>(&b, 8, -5);
  expect_open_error(b, "negative token count");
  std::remove(path.c_str());
  expect_error([&] { TokenShard sh(path); }, path, "does not exist");
}

}  // namespace
}  // namespace dirmoe::data
