// libFuzzer target: the GPT-2 tokenizer on arbitrary bytes must return ids inside the vocabulary
// that decode back to exactly the input. Uses $DIRMOE_FUZZ_TOKENIZER (a directory with
// encoder.json + vocab.bpe), else a small byte-level vocabulary written at start-up.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "runtime/data/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace dirmoe::data;

namespace {
std::string byte_symbol(int b) {
  int n = 0, cp = 0;
  for (int x = 0; x < 256; ++x) {
    bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
    int c = printable ? x : 256 + n++;
    if (x == b) cp = c;
  }
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

const Gpt2Tokenizer& tokenizer() {
  static std::unique_ptr<Gpt2Tokenizer> tok = [] {
    const char* dir = std::getenv("DIRMOE_FUZZ_TOKENIZER");
    if (dir && *dir) return std::make_unique<Gpt2Tokenizer>(dir);
    const std::string d = dirmoe::fuzz::scratch_dir();
    std::string enc = "{", bpe = "#version: 0.2\n";
    int id = 0;
    for (int b = 0; b < 256; ++b)
      enc += (b ? ",\"" : "\"") + json_escape(byte_symbol(b)) + "\":" + std::to_string(id++);
    const char* merges[][2] = {{"a", "a"},  {"aa", "a"},   {" ", "t"},
                               {"h", "e"},  {" t", "he"},  {"\"", ","},
                               {",", "\""}, {"\"", ",\""}, {"\xc3", "\xa9"}};
    for (auto& m : merges) {
      std::string a, b;
      for (char c : std::string(m[0])) a += byte_symbol(static_cast<uint8_t>(c));
      for (char c : std::string(m[1])) b += byte_symbol(static_cast<uint8_t>(c));
      enc += ",\"" + json_escape(a + b) + "\":" + std::to_string(id++);
      bpe += a + " " + b + "\n";
    }
    enc += ",\"<|endoftext|>\":" + std::to_string(id) + "}";
    dirmoe::fuzz::write_bytes(d + "/encoder.json", enc.data(), enc.size());
    dirmoe::fuzz::write_bytes(d + "/vocab.bpe", bpe.data(), bpe.size());
    return std::make_unique<Gpt2Tokenizer>(d);
  }();
  return *tok;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Gpt2Tokenizer& tok = tokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tok.encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  }
  if (tok.decode(ids) != text) std::abort();
  size_t covered = 0;
  for (std::string_view piece : tok.split(text)) {
    if (piece.empty() || piece.data() != text.data() + covered) std::abort();
    covered += piece.size();
  }
  if (covered != text.size()) std::abort();
  return 0;
}
