// `data prepare` / `data inspect` as library calls: documents from text files and JSONL in sorted
// order, <|endoftext|> appended, output independent of --workers, and the input errors.
#include <gtest/gtest.h>

#include <filesystem>

#include "runtime/core/error.h"
#include "runtime/data/commands.h"
#include "runtime/data/file_util.h"
#include "runtime/data/indexed_dataset.h"
#include "runtime/data/tokenizer.h"
#include "tests/data/data_test_util.h"

namespace dirmoe::data {
namespace {

using testing::TempDir;
using testing::write_file;

template <class Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::vector<int32_t> document(const IndexedDataset& ds, int64_t d) {
  const int64_t s = ds.document_index_entry(d);
  std::vector<int32_t> ids(ds.sequence_length(s));
  ds.read_tokens(ds.sequence_offset(s), static_cast<int64_t>(ids.size()), ids.data());
  return ids;
}

class Prepare : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::write_tiny_tokenizer(dir_ / "tok", {{"t", "h"}, {"th", "e"}, {" ", "the"}});
    std::filesystem::create_directories(dir_ / "in/sub");
    write_file(dir_ / "in/b.txt", "the cat");
    write_file(dir_ / "in/a.txt", "The the");
    write_file(dir_ / "in/sub/c.jsonl",
               "{\"text\": \"first \\u00e9\", \"id\": 1}\n\n{\"text\": \"second\"}\r\n");
    write_file(dir_ / "in/.hidden", "skipped");
    write_file(dir_ / "in/empty.txt", "");
  }
  DataPrepareOptions options(const std::string& out) {
    DataPrepareOptions o;
    o.inputs = {dir_ / "in"};
    o.tokenizer_dir = dir_ / "tok";
    o.output_prefix = dir_ / out;
    o.progress = false;
    return o;
  }
  TempDir dir_;
};

TEST_F(Prepare, DocumentsInSortedOrderWithEod) {
  DataPrepareOptions o = options("out/ds");
  o.append_eod = true;
  const DataPrepareStats stats = prepare_dataset(o);
  EXPECT_EQ(stats.num_documents, 5);
  EXPECT_EQ(stats.empty_documents, std::vector<std::string>{dir_ / "in/empty.txt"});
  Gpt2Tokenizer tok(dir_ / "tok");
  IndexedDataset ds(dir_ / "out/ds");
  EXPECT_EQ(ds.dtype_code(), 8);
  ASSERT_EQ(ds.num_documents(), 5);
  const std::vector<std::string> texts = {"The the", "the cat", "", "first \xc3\xa9", "second"};
  int64_t total = 0;
  for (int d = 0; d < 5; ++d) {
    std::vector<int32_t> expected = tok.encode(texts[d]);
    expected.push_back(tok.eot_id());
    EXPECT_EQ(document(ds, d), expected) << "document " << d;
    total += static_cast<int64_t>(expected.size());
  }
  EXPECT_EQ(stats.num_tokens, total);
  EXPECT_EQ(document(ds, 1).front(), 257);  // "the" merged
  EXPECT_EQ(run_data_inspect({dir_ / "out/ds", 3, dir_ / "tok", 100}), 0);
  EXPECT_EQ(run_data_inspect({dir_ / "out/ds.idx", 0, "", 100}), 0);
}

TEST_F(Prepare, EmptyDocumentsAreNamed) {
  write_file(dir_ / "in/sub/c.jsonl", "{\"text\": \"x\"}\n{\"text\": \"\"}\n");
  ::testing::internal::CaptureStderr();
  const DataPrepareStats stats = prepare_dataset(options("e"));
  const std::string err = ::testing::internal::GetCapturedStderr();
  const std::vector<std::string> expected = {dir_ / "in/empty.txt", dir_ / "in/sub/c.jsonl:2"};
  EXPECT_EQ(stats.empty_documents, expected);
  for (const auto& where : expected)
    EXPECT_NE(err.find("warning: data prepare: " + where +
                       " is empty: it becomes a document of "
                       "no tokens"),
              std::string::npos)
        << err;
  IndexedDataset ds(dir_ / "e");
  EXPECT_EQ(ds.num_documents(), 5);
}

TEST_F(Prepare, OutputDoesNotDependOnWorkers) {
  std::string big;
  for (int i = 0; i < 3000; ++i) big += "the theme of the " + std::to_string(i) + "\n";
  for (int f = 0; f < 40; ++f) write_file(dir_ / ("in/many" + std::to_string(f) + ".txt"), big);
  DataPrepareOptions one = options("w1"), three = options("w3");
  one.workers = 1;
  three.workers = 3;
  prepare_dataset(one);
  prepare_dataset(three);
  EXPECT_EQ(read_file(dir_ / "w1.bin"), read_file(dir_ / "w3.bin"));
  EXPECT_EQ(read_file(dir_ / "w1.idx"), read_file(dir_ / "w3.idx"));
}

TEST_F(Prepare, InputErrors) {
  DataPrepareOptions o = options("x");
  std::filesystem::create_directories(dir_ / "nothing");
  o.inputs = {dir_ / "nothing"};
  expect_error([&] { prepare_dataset(o); }, "no input files");
  write_file(dir_ / "nothing/e.jsonl", "\n\n");
  expect_error([&] { prepare_dataset(o); }, "hold no documents");
  EXPECT_FALSE(file_exists(dir_ / "x.idx"));
  o.inputs = {dir_ / "missing.txt"};
  expect_error([&] { prepare_dataset(o); }, "missing.txt does not exist");
  write_file(dir_ / "bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": 3}\n");
  o.inputs = {dir_ / "bad.jsonl"};
  expect_error([&] { prepare_dataset(o); }, "bad.jsonl:2: no \"text\" string field");
  write_file(dir_ / "bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \n");
  expect_error([&] { prepare_dataset(o); }, "bad.jsonl:2: malformed JSON");
  o = options("x");
  o.tokenizer_dir = dir_ / "no_tokenizer";
  expect_error([&] { prepare_dataset(o); }, "encoder.json does not exist");
  o = options("x");
  o.inputs.clear();
  expect_error([&] { prepare_dataset(o); }, "no --input");
  EXPECT_EQ(run_data_prepare(o), 1);
  EXPECT_EQ(run_data_inspect({dir_ / "nope", -1, "", 10}), 1);
}

TEST_F(Prepare, CollectsFilesRecursivelyInSortedOrder) {
  const auto files = collect_input_files({dir_ / "in/sub/c.jsonl", dir_ / "in"});
  const std::vector<std::string> expected = {dir_ / "in/sub/c.jsonl", dir_ / "in/a.txt",
                                             dir_ / "in/b.txt", dir_ / "in/empty.txt",
                                             dir_ / "in/sub/c.jsonl"};
  EXPECT_EQ(files, expected);
}

TEST(Inspect, ShardAndDocumentRange) {
  TempDir dir;
  write_token_shard(dir / "s.bin", std::vector<int32_t>{50256, 5, 6, 50256, 7});
  EXPECT_EQ(run_data_inspect({dir / "s.bin", 1, "", 10}), 0);
  EXPECT_EQ(run_data_inspect({dir / "s.bin", 2, "", 10}), 1);
}

}  // namespace
}  // namespace dirmoe::data
