// Megatron indexed dataset writer/reader and llm.c shard reader/writer (see indexed_dataset.h).
#include "runtime/data/indexed_dataset.h"

#include <cstdio>
#include <cstring>
#include <limits>

#include "runtime/core/error.h"

namespace dirmoe::data {
namespace {

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Converts `count` items of Megatron dtype `code` at src to int32; false if a value does not fit.
bool convert_tokens(uint8_t code, const uint8_t* src, int64_t count, int32_t* out) {
  switch (static_cast<TokenDType>(code)) {
    case TokenDType::kUInt8:
      for (int64_t i = 0; i < count; ++i) out[i] = src[i];
      return true;
    case TokenDType::kInt8:
      for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int8_t>(src[i]);
      return true;
    case TokenDType::kInt16:
      for (int64_t i = 0; i < count; ++i) out[i] = load<int16_t>(src + 2 * i);
      return true;
    case TokenDType::kUInt16:
      for (int64_t i = 0; i < count; ++i) out[i] = load<uint16_t>(src + 2 * i);
      return true;
    case TokenDType::kInt32:
      if (count > 0) std::memcpy(out, src, static_cast<size_t>(count) * 4);
      return true;
    case TokenDType::kInt64:
      for (int64_t i = 0; i < count; ++i) {
        int64_t v = load<int64_t>(src + 8 * i);
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
          return false;
        }
        out[i] = static_cast<int32_t>(v);
      }
      return true;
    default:
      return false;
  }
}

// Index of the first token outside [0, vocab) among `count` items at src, or -1.
int64_t first_bad_token(uint8_t code, const uint8_t* src, int64_t count, int64_t vocab,
                        int64_t* value) {
  auto scan = [&](auto tag, int64_t size) -> int64_t {
    using T = decltype(tag);
    for (int64_t i = 0; i < count; ++i) {
      int64_t v = static_cast<int64_t>(load<T>(src + size * i));
      if (v < 0 || v >= vocab) {
        *value = v;
        return i;
      }
    }
    return -1;
  };
  switch (static_cast<TokenDType>(code)) {
    case TokenDType::kUInt8:
      return scan(uint8_t{}, 1);
    case TokenDType::kInt8:
      return scan(int8_t{}, 1);
    case TokenDType::kInt16:
      return scan(int16_t{}, 2);
    case TokenDType::kUInt16:
      return scan(uint16_t{}, 2);
    case TokenDType::kInt32:
      return scan(int32_t{}, 4);
    case TokenDType::kInt64:
      return scan(int64_t{}, 8);
    default:
      DIRMOE_FAIL("dtype code ", int{code}, " does not hold token ids");
  }
}

}  // namespace

int64_t megatron_dtype_size(uint8_t code) {
  switch (code) {
    case 1:
      return 1;
    case 2:
      return 1;
    case 3:
      return 2;
    case 4:
      return 4;
    case 5:
      return 8;
    case 6:
      return 8;
    case 7:
      return 4;
    case 8:
      return 2;
    default:
      return 0;
  }
}

std::string_view megatron_dtype_name(uint8_t code) {
  switch (code) {
    case 1:
      return "uint8";
    case 2:
      return "int8";
    case 3:
      return "int16";
    case 4:
      return "int32";
    case 5:
      return "int64";
    case 6:
      return "float64";
    case 7:
      return "float32";
    case 8:
      return "uint16";
    default:
      return "unknown";
  }
}

TokenDType token_dtype_for_vocab(int64_t vocab_size) {
  DIRMOE_CHECK(vocab_size > 0, "vocabulary size must be positive, got ", vocab_size);
  return vocab_size < kUint16VocabLimit ? TokenDType::kUInt16 : TokenDType::kInt32;
}

// ---- writer ----

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, TokenDType dtype)
    : prefix_(prefix), dtype_(dtype) {
  const uint8_t code = static_cast<uint8_t>(dtype);
  DIRMOE_CHECK(code >= 1 && code <= 8 && code != 6 && code != 7, "cannot write tokens as ",
               megatron_dtype_name(code), " (dtype code ", int{code}, ")");
  DIRMOE_CHECK(!prefix.empty(), "empty output prefix");
  bin_ = std::make_unique<FileWriter>(prefix_ + ".bin.tmp");
  doc_index_.push_back(0);
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (!finalized_) {
    bin_.reset();
    std::remove((prefix_ + ".bin.tmp").c_str());
    std::remove((prefix_ + ".idx.tmp").c_str());
  }
}

uint64_t IndexedDatasetWriter::bin_bytes() const { return bin_ ? bin_->bytes_written() : 0; }

void IndexedDatasetWriter::add_item(std::span<const int32_t> tokens) {
  DIRMOE_CHECK(!finalized_, "add_item after finalize on ", prefix_);
  DIRMOE_CHECK(tokens.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
               "sequence of ", tokens.size(), " tokens is too long for ", prefix_, ".idx");
  const uint8_t code = static_cast<uint8_t>(dtype_);
  const int64_t size = megatron_dtype_size(code);
  int64_t lo = 0, hi = 0;
  switch (dtype_) {
    case TokenDType::kUInt8:
      hi = 255;
      break;
    case TokenDType::kInt8:
      lo = -128, hi = 127;
      break;
    case TokenDType::kInt16:
      lo = -32768, hi = 32767;
      break;
    case TokenDType::kUInt16:
      hi = 65535;
      break;
    default:
      lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max();
  }
  buffer_.resize(tokens.size() * size);
  uint8_t* dst = buffer_.data();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t t = tokens[i];
    DIRMOE_CHECK(t >= lo && t <= hi, "token ", t, " does not fit ", megatron_dtype_name(code),
                 " in ", prefix_, ".bin");
    switch (size) {
      case 1:
        dst[i] = static_cast<uint8_t>(t);
        break;
      case 2: {
        uint16_t v = static_cast<uint16_t>(t);
        std::memcpy(dst + 2 * i, &v, 2);
        break;
      }
      case 4:
        std::memcpy(dst + 4 * i, &t, 4);
        break;
      default: {
        int64_t v = t;
        std::memcpy(dst + 8 * i, &v, 8);
      }
    }
  }
  bin_->write(buffer_.data(), buffer_.size());
  lengths_.push_back(static_cast<int32_t>(tokens.size()));
  num_tokens_ += static_cast<int64_t>(tokens.size());
}

void IndexedDatasetWriter::end_document() {
  DIRMOE_CHECK(!finalized_, "end_document after finalize on ", prefix_);
  doc_index_.push_back(static_cast<int64_t>(lengths_.size()));
}

void IndexedDatasetWriter::add_document(std::span<const int32_t> tokens) {
  add_item(tokens);
  end_document();
}

void IndexedDatasetWriter::finalize() {
  DIRMOE_CHECK(!finalized_, "finalize called twice on ", prefix_);
  if (doc_index_.back() != static_cast<int64_t>(lengths_.size())) end_document();
  bin_->close();
  const int64_t size = megatron_dtype_size(static_cast<uint8_t>(dtype_));
  {
    FileWriter idx(prefix_ + ".idx.tmp");
    idx.write(kMegatronMagic, sizeof(kMegatronMagic));
    idx.write_value(kMegatronVersion);
    idx.write_value(static_cast<uint8_t>(dtype_));
    idx.write_value(static_cast<uint64_t>(lengths_.size()));
    idx.write_value(static_cast<uint64_t>(doc_index_.size()));
    idx.write(lengths_.data(), lengths_.size() * sizeof(int32_t));
    std::vector<int64_t> pointers(lengths_.size());
    int64_t p = 0;
    for (size_t i = 0; i < lengths_.size(); ++i) {
      pointers[i] = p;
      p += static_cast<int64_t>(lengths_[i]) * size;
    }
    idx.write(pointers.data(), pointers.size() * sizeof(int64_t));
    idx.write(doc_index_.data(), doc_index_.size() * sizeof(int64_t));
    idx.close();
  }
  for (const char* ext : {".bin", ".idx"}) {
    const std::string from = prefix_ + ext + ".tmp", to = prefix_ + ext;
    DIRMOE_CHECK(std::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from, " to ", to,
                 ": ", std::strerror(errno));
  }
  finalized_ = true;
}

// ---- reader ----

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string idx_file = idx_path(), bin_file = bin_path();
  DIRMOE_CHECK(file_exists(idx_file), "Megatron index ", idx_file, " does not exist");
  DIRMOE_CHECK(file_exists(bin_file), "Megatron data file ", bin_file, " does not exist");
  idx_ = MappedFile(idx_file);
  bin_ = MappedFile(bin_file);
  const uint8_t* p = idx_.data();
  const int64_t size = static_cast<int64_t>(idx_.size());
  DIRMOE_CHECK(size >= kMegatronHeaderBytes, idx_file, " is truncated: ", size,
               " bytes, shorter than the ", kMegatronHeaderBytes, "-byte header");
  DIRMOE_CHECK(std::memcmp(p, kMegatronMagic, sizeof(kMegatronMagic)) == 0, idx_file,
               " has the wrong magic (expected \"MMIDIDX\\0\\0\"): not a Megatron index");
  const uint64_t version = load<uint64_t>(p + 9);
  DIRMOE_CHECK(version == kMegatronVersion, idx_file, " has unsupported version ", version,
               " (expected 1)");
  dtype_code_ = p[17];
  item_size_ = megatron_dtype_size(dtype_code_);
  DIRMOE_CHECK(item_size_ > 0, idx_file, " has unknown dtype code ", int{dtype_code_});
  DIRMOE_CHECK(dtype_code_ != 6 && dtype_code_ != 7, idx_file, " stores ",
               megatron_dtype_name(dtype_code_), " (dtype code ", int{dtype_code_},
               "), which cannot hold token ids");
  const uint64_t s = load<uint64_t>(p + 18), d = load<uint64_t>(p + 26);
  const uint64_t body = static_cast<uint64_t>(size - kMegatronHeaderBytes);
  // Megatron's multimodal index (IndexedDatasetBuilder(multimodal=True)) appends one int8 mode
  // per sequence after the document index; its header says nothing else.
  DIRMOE_CHECK(!(s <= body / 13 && d <= body / 8 && s * 13 + d * 8 == body && s > 0), idx_file,
               " is a Megatron multimodal index (", s, " sequences, ", d,
               " document-index entries, then one int8 mode per sequence: ", kMegatronHeaderBytes,
               " + 13 x ", s, " + 8 x ", d,
               " bytes), which is unsupported: dirmoe trains on text-only token datasets");
  DIRMOE_CHECK(s <= body / 12 && d <= body / 8 && s * 12 + d * 8 == body, idx_file, " is ", size,
               " bytes but its header announces ", s, " sequences and ", d,
               " document-index entries (", kMegatronHeaderBytes, " + 12 x ", s, " + 8 x ", d,
               " bytes): truncated or corrupt");
  num_sequences_ = static_cast<int64_t>(s);
  num_doc_index_ = static_cast<int64_t>(d);
  lengths_at_ = kMegatronHeaderBytes;
  pointers_at_ = lengths_at_ + 4 * num_sequences_;
  doc_index_at_ = pointers_at_ + 8 * num_sequences_;

  int64_t expected_pointer = 0;
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int32_t len = sequence_length(i);
    const int64_t ptr = sequence_pointer(i);
    DIRMOE_CHECK(len >= 0, idx_file, ": sequence ", i, " has negative length ", len);
    DIRMOE_CHECK(ptr == expected_pointer, idx_file, ": sequence ", i, " points at byte ", ptr,
                 " of ", bin_file, ", expected ", expected_pointer,
                 " (the running sum of lengths x ", item_size_, ")");
    expected_pointer += static_cast<int64_t>(len) * item_size_;
  }
  DIRMOE_CHECK(expected_pointer == bin_bytes(), bin_file, " is ", bin_bytes(), " bytes but ",
               idx_file, " describes ", expected_pointer, " bytes (", expected_pointer / item_size_,
               " tokens of ", megatron_dtype_name(dtype_code_), "): truncated or mismatched");
  num_tokens_ = expected_pointer / item_size_;

  DIRMOE_CHECK(num_doc_index_ >= 1, idx_file,
               ": the document index is empty (it must start with 0)");
  DIRMOE_CHECK(document_index_entry(0) == 0, idx_file, ": the document index starts with ",
               document_index_entry(0), ", expected 0");
  for (int64_t i = 1; i < num_doc_index_; ++i) {
    DIRMOE_CHECK(document_index_entry(i) >= document_index_entry(i - 1), idx_file,
                 ": the document index decreases at entry ", i, " (", document_index_entry(i - 1),
                 " then ", document_index_entry(i), ")");
  }
  DIRMOE_CHECK(document_index_entry(num_doc_index_ - 1) == num_sequences_, idx_file,
               ": the document index ends at ", document_index_entry(num_doc_index_ - 1),
               " but there are ", num_sequences_, " sequences");
}

int32_t IndexedDataset::sequence_length(int64_t i) const {
  DIRMOE_CHECK(i >= 0 && i < num_sequences_, "sequence ", i, " out of range [0, ", num_sequences_,
               ") in ", idx_path());
  return load<int32_t>(idx_.data() + lengths_at_ + 4 * i);
}

int64_t IndexedDataset::sequence_pointer(int64_t i) const {
  DIRMOE_CHECK(i >= 0 && i < num_sequences_, "sequence ", i, " out of range [0, ", num_sequences_,
               ") in ", idx_path());
  return load<int64_t>(idx_.data() + pointers_at_ + 8 * i);
}

int64_t IndexedDataset::document_index_entry(int64_t i) const {
  DIRMOE_CHECK(i >= 0 && i < num_doc_index_, "document-index entry ", i, " out of range [0, ",
               num_doc_index_, ") in ", idx_path());
  return load<int64_t>(idx_.data() + doc_index_at_ + 8 * i);
}

void IndexedDataset::read_tokens(int64_t offset, int64_t count, int32_t* out) const {
  DIRMOE_CHECK(offset >= 0 && count >= 0 && offset <= num_tokens_ - count, "tokens [", offset, ", ",
               offset + count, ") out of range [0, ", num_tokens_, ") in ", bin_path());
  if (count == 0) return;
  DIRMOE_CHECK(convert_tokens(dtype_code_, bin_.data() + offset * item_size_, count, out),
               "a token in ", bin_path(), " [", offset, ", ", offset + count,
               ") does not fit int32");
}

void IndexedDataset::validate_tokens(int64_t vocab_size) const {
  if (num_tokens_ == 0) return;
  int64_t value = 0;
  const int64_t bad = first_bad_token(dtype_code_, bin_.data(), num_tokens_, vocab_size, &value);
  if (bad < 0) return;
  int64_t seq = 0;
  for (int64_t lo = 0, hi = num_sequences_; lo < hi;) {
    const int64_t mid = (lo + hi) / 2;
    if (sequence_offset(mid) <= bad) {
      seq = mid;
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  DIRMOE_FAIL(bin_path(), ": token ", value, " at position ", bad, " (sequence ", seq,
              ") is outside the vocabulary [0, ", vocab_size, ")");
}

// ---- llm.c shards ----

TokenShard::TokenShard(const std::string& path) : path_(path) {
  DIRMOE_CHECK(file_exists(path), "token shard ", path, " does not exist");
  file_ = MappedFile(path);
  const int64_t size = static_cast<int64_t>(file_.size());
  DIRMOE_CHECK(size >= kShardHeaderBytes, path, " is truncated: ", size,
               " bytes, shorter than the 1024-byte llm.c shard header");
  const int32_t magic = load<int32_t>(file_.data());
  const int32_t version = load<int32_t>(file_.data() + 4);
  const int32_t count = load<int32_t>(file_.data() + 8);
  DIRMOE_CHECK(magic == kShardMagic || magic == kShardMagicLlama3, path, " has the wrong magic ",
               magic, " (expected ", kShardMagic, " or ", kShardMagicLlama3,
               "): not an llm.c token shard");
  format_ = magic == kShardMagic ? ShardFormat::kGpt2 : ShardFormat::kLlama3;
  DIRMOE_CHECK(
      version == this->version(), path, " has unsupported version ", version, " (expected ",
      this->version(),
      format_ == ShardFormat::kGpt2 ? ": uint16 tokens, magic " : ": uint32 tokens, magic ", magic,
      ")");
  DIRMOE_CHECK(count >= 0, path, " announces a negative token count ", count);
  const int64_t tb = token_bytes();
  DIRMOE_CHECK(size == kShardHeaderBytes + tb * count, path, " is ", size,
               " bytes but its header announces ", count, " tokens (1024 + ", tb, " x ", count,
               " bytes): truncated or corrupt");
  num_tokens_ = count;
}

int32_t TokenShard::magic() const {
  return format_ == ShardFormat::kGpt2 ? kShardMagic : kShardMagicLlama3;
}
int32_t TokenShard::version() const {
  return format_ == ShardFormat::kGpt2 ? kShardVersion : kShardVersionLlama3;
}
int32_t TokenShard::document_token() const {
  return format_ == ShardFormat::kGpt2 ? 50256 : kLlama3BeginOfTextId;
}

uint32_t TokenShard::token(int64_t i) const {
  DIRMOE_CHECK(i >= 0 && i < num_tokens_, "token ", i, " out of range [0, ", num_tokens_, ") in ",
               path_);
  const uint8_t* p = file_.data() + kShardHeaderBytes + token_bytes() * i;
  return format_ == ShardFormat::kGpt2 ? load<uint16_t>(p) : load<uint32_t>(p);
}

void TokenShard::read_tokens(int64_t offset, int64_t count, int32_t* out) const {
  DIRMOE_CHECK(offset >= 0 && count >= 0 && offset <= num_tokens_ - count, "tokens [", offset, ", ",
               offset + count, ") out of range [0, ", num_tokens_, ") in ", path_);
  if (count == 0) return;
  const uint8_t* p = file_.data() + kShardHeaderBytes + token_bytes() * offset;
  if (format_ == ShardFormat::kGpt2) {
    convert_tokens(static_cast<uint8_t>(TokenDType::kUInt16), p, count, out);
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t v = load<uint32_t>(p + 4 * i);
    DIRMOE_CHECK(v <= static_cast<uint32_t>(std::numeric_limits<int32_t>::max()), path_, ": token ",
                 v, " at position ", offset + i, " does not fit int32");
    out[i] = static_cast<int32_t>(v);
  }
}

void TokenShard::validate_tokens(int64_t vocab_size) const {
  if (num_tokens_ == 0) return;
  int64_t value = 0, bad = -1;
  const uint8_t* p = file_.data() + kShardHeaderBytes;
  if (format_ == ShardFormat::kGpt2) {
    bad = first_bad_token(static_cast<uint8_t>(TokenDType::kUInt16), p, num_tokens_, vocab_size,
                          &value);
  } else {
    for (int64_t i = 0; i < num_tokens_ && bad < 0; ++i) {
      const int64_t v = load<uint32_t>(p + 4 * i);
      if (v >= vocab_size) bad = i, value = v;
    }
  }
  DIRMOE_CHECK(bad < 0, path_, ": token ", value, " at position ", bad,
               " is outside the vocabulary [0, ", vocab_size, ")");
}

std::vector<int64_t> shard_document_starts(const TokenShard& shard, int64_t delimiter) {
  std::vector<int64_t> starts{0};
  const int64_t n = shard.num_tokens();
  const uint8_t* p = shard.token_data();
  for (int64_t i = 1; i < n; ++i) {
    const int64_t t = shard.format() == ShardFormat::kGpt2 ? load<uint16_t>(p + 2 * i)
                                                           : load<uint32_t>(p + 4 * i);
    if (t == delimiter) starts.push_back(i);
  }
  if (n > 0) starts.push_back(n);
  return starts;
}

void write_token_shard(const std::string& path, std::span<const int32_t> tokens,
                       ShardFormat format) {
  DIRMOE_CHECK(tokens.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
               "too many tokens (", tokens.size(), ") for one llm.c shard ", path);
  const bool gpt2 = format == ShardFormat::kGpt2;
  int32_t header[kShardHeaderInts] = {};
  header[0] = gpt2 ? kShardMagic : kShardMagicLlama3;
  header[1] = gpt2 ? kShardVersion : kShardVersionLlama3;
  header[2] = static_cast<int32_t>(tokens.size());
  std::vector<uint8_t> data(tokens.size() * (gpt2 ? 2 : 4));
  for (size_t i = 0; i < tokens.size(); ++i) {
    DIRMOE_CHECK(tokens[i] >= 0 && (!gpt2 || tokens[i] < 65536), "token ", tokens[i],
                 " at position ", i, " does not fit the ", gpt2 ? "uint16" : "uint32",
                 " tokens of llm.c shard ", path);
    if (gpt2) {
      const auto v = static_cast<uint16_t>(tokens[i]);
      std::memcpy(data.data() + 2 * i, &v, 2);
    } else {
      const auto v = static_cast<uint32_t>(tokens[i]);
      std::memcpy(data.data() + 4 * i, &v, 4);
    }
  }
  FileWriter f(path);
  f.write(header, sizeof(header));
  f.write(data.data(), data.size());
  f.close();
}

bool looks_like_token_shard(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  int32_t magic = 0;
  const bool ok = std::fread(&magic, sizeof(magic), 1, f) == 1;
  std::fclose(f);
  return ok && (magic == kShardMagic || magic == kShardMagicLlama3);
}

}  // namespace dirmoe::data
