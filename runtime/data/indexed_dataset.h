// Tokenized corpora on disk: Megatron-LM's indexed dataset (PREFIX.bin + PREFIX.idx, "MMIDIDX"
// version 1) with a writer and a validating mmap reader, and llm.c's token shards (a 256 x int32
// header: magic, version, token count; then the tokens: magic 20240520 / version 1 with uint16
// tokens (GPT-2), magic 20240801 / version 7 with uint32 tokens (llama-3), as llm.c's
// dev/data/data_common.py writes them).
//
// PREFIX.idx layout (little-endian, no padding; S sequences, D document-index entries):
//   [0, 9)    magic "MMIDIDX\0\0"
//   [9, 17)   uint64 version = 1
//   [17, 18)  uint8 dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32,
//             8 uint16)
//   [18, 26)  uint64 S
//   [26, 34)  uint64 D
//   int32 lengths[S]; int64 byte pointers into .bin[S]; int64 document indices[D] (0 first, S last)
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/data/file_util.h"

namespace dirmoe::data {

inline constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr uint64_t kMegatronVersion = 1;
inline constexpr int64_t kMegatronHeaderBytes = 34;
inline constexpr int32_t kShardMagic = 20240520;  // llm.c "gpt-2": uint16 tokens
inline constexpr int32_t kShardVersion = 1;
inline constexpr int32_t kShardMagicLlama3 = 20240801;  // llm.c "llama-3": uint32 tokens
inline constexpr int32_t kShardVersionLlama3 = 7;
inline constexpr int32_t kLlama3BeginOfTextId = 128000;  // llm.c puts it before each document
inline constexpr int64_t kShardHeaderInts = 256;
inline constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;
inline constexpr int64_t kUint16VocabLimit = 65500;  // Megatron stores uint16 below this vocab size

// Megatron dtype codes.
enum class TokenDType : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8,
};

// Bytes per item of a known code; 0 for an unknown one.
int64_t megatron_dtype_size(uint8_t code);
std::string_view megatron_dtype_name(uint8_t code);
// The dtype Megatron's preprocess_data.py picks: uint16 when vocab_size < 65500, else int32.
TokenDType token_dtype_for_vocab(int64_t vocab_size);

// Writes PREFIX.bin and PREFIX.idx. Output goes to PREFIX.bin.tmp / PREFIX.idx.tmp, renamed by
// finalize(), so a crash never leaves a pair that looks complete.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, TokenDType dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One sequence; a token that the dtype cannot hold throws an Error.
  void add_item(std::span<const int32_t> tokens);
  // Closes the current document (Megatron's end_document()).
  void end_document();
  // add_item + end_document: the usual one-sequence document.
  void add_document(std::span<const int32_t> tokens);
  void finalize();

  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(doc_index_.size()) - 1; }
  int64_t num_tokens() const { return num_tokens_; }
  uint64_t bin_bytes() const;

 private:
  std::string prefix_;
  TokenDType dtype_;
  std::unique_ptr<FileWriter> bin_;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> doc_index_;
  std::vector<uint8_t> buffer_;
  int64_t num_tokens_ = 0;
  bool finalized_ = false;
};

// Read-only view of PREFIX.bin + PREFIX.idx. The constructor validates the whole index against
// the .bin (magic, version, dtype, counts, every length and pointer, the document index, file
// sizes) and throws an Error naming the file and the problem.
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  std::string idx_path() const { return prefix_ + ".idx"; }
  std::string bin_path() const { return prefix_ + ".bin"; }
  uint64_t version() const { return kMegatronVersion; }
  uint8_t dtype_code() const { return dtype_code_; }
  int64_t item_size() const { return item_size_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return num_doc_index_ - 1; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t idx_bytes() const { return static_cast<int64_t>(idx_.size()); }
  int64_t bin_bytes() const { return static_cast<int64_t>(bin_.size()); }

  int32_t sequence_length(int64_t i) const;
  int64_t sequence_pointer(int64_t i) const;      // byte offset into .bin
  int64_t document_index_entry(int64_t i) const;  // i in [0, num_documents()]
  // First token of sequence i in the flat token array of .bin.
  int64_t sequence_offset(int64_t i) const { return sequence_pointer(i) / item_size_; }

  // Copies tokens [offset, offset + count) of the flat .bin token array into out as int32.
  void read_tokens(int64_t offset, int64_t count, int32_t* out) const;
  // Throws an Error naming the file, sequence and value of the first token outside [0, vocab).
  void validate_tokens(int64_t vocab_size) const;

 private:
  std::string prefix_;
  MappedFile idx_;
  MappedFile bin_;
  uint8_t dtype_code_ = 0;
  int64_t item_size_ = 0;
  int64_t num_sequences_ = 0;
  int64_t num_doc_index_ = 0;
  int64_t num_tokens_ = 0;
  int64_t lengths_at_ = 0, pointers_at_ = 0, doc_index_at_ = 0;
};

// The two llm.c shard formats.
enum class ShardFormat { kGpt2, kLlama3 };

// An llm.c token shard, validated on open (magic, version, token count against the file size).
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);

  const std::string& path() const { return path_; }
  ShardFormat format() const { return format_; }
  int32_t magic() const;
  int32_t version() const;
  int64_t token_bytes() const { return format_ == ShardFormat::kGpt2 ? 2 : 4; }
  // The token llm.c puts before each document: <|endoftext|> (GPT-2), <|begin_of_text|> (llama-3).
  int32_t document_token() const;
  int64_t num_tokens() const { return num_tokens_; }
  int64_t file_bytes() const { return static_cast<int64_t>(file_.size()); }
  uint32_t token(int64_t i) const;
  // (num_tokens x token_bytes) the mapped little-endian tokens.
  const uint8_t* token_data() const { return file_.data() + kShardHeaderBytes; }
  // A token that does not fit int32 (only possible in a llama-3 shard) throws an Error.
  void read_tokens(int64_t offset, int64_t count, int32_t* out) const;
  void validate_tokens(int64_t vocab_size) const;

 private:
  std::string path_;
  MappedFile file_;
  ShardFormat format_ = ShardFormat::kGpt2;
  int64_t num_tokens_ = 0;
};

// Document boundaries of a shard: a document starts at token 0 and at every later `delimiter`
// token. Returns (documents + 1) offsets; {0} when empty.
std::vector<int64_t> shard_document_starts(const TokenShard& shard, int64_t delimiter);

// Writes an llm.c shard; every token must fit its format (uint16 for GPT-2, uint32 for llama-3).
void write_token_shard(const std::string& path, std::span<const int32_t> tokens,
                       ShardFormat format = ShardFormat::kGpt2);

// True when `path` is a file that starts with one of the llm.c shard magics.
bool looks_like_token_shard(const std::string& path);

}  // namespace dirmoe::data
