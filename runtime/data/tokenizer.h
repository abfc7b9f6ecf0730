// GPT-2 byte-level BPE tokenizer over OpenAI's encoder.json + vocab.bpe: PCRE2 (JIT)
// pre-tokenisation with the GPT-2 pattern, bytes mapped to printable code points, merges by rank
// with a per-thread cache. Splits and merges token-for-token as the reference JavaScript encoder
// (gpt-3-encoder) on valid UTF-8, and round-trips any byte string, invalid UTF-8 included.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dirmoe::data {

inline constexpr int32_t kGpt2EotId = 50256;  // "<|endoftext|>" in GPT-2's vocabulary

class Gpt2Tokenizer {
 public:
  // Loads DIR/encoder.json and DIR/vocab.bpe; a missing or malformed file throws an Error naming
  // it.
  explicit Gpt2Tokenizer(const std::string& dir);
  Gpt2Tokenizer(const std::string& encoder_json_path, const std::string& vocab_bpe_path);
  ~Gpt2Tokenizer();
  Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept;
  Gpt2Tokenizer& operator=(Gpt2Tokenizer&&) noexcept;

  int64_t vocab_size() const;  // 1 + the largest id in encoder.json
  int32_t eot_id() const;      // id of "<|endoftext|>", or -1 when the vocabulary has none
  int64_t num_merges() const;

  // Appends the ids of `text` (any bytes) to *out. Thread-safe: each thread keeps its own cache.
  void encode(std::string_view text, std::vector<int32_t>* out) const;
  std::vector<int32_t> encode(std::string_view text) const;

  // Appends the bytes of `ids` to *out; an id that is not in the vocabulary throws an Error.
  void decode(std::span<const int32_t> ids, std::string* out) const;
  std::string decode(std::span<const int32_t> ids) const;

  // The pieces the pre-tokeniser cuts `text` into (views into `text`), in order.
  std::vector<std::string_view> split(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dirmoe::data
