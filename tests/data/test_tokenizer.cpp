// GPT-2 tokenizer: pre-tokeniser splits (JavaScript semantics), BPE rounds against a direct port of
// the reference encoder's loop, byte round trips (invalid UTF-8 included), loader errors.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "runtime/core/error.h"
#include "runtime/data/file_util.h"
#include "runtime/data/tokenizer.h"
#include "tests/data/data_test_util.h"

namespace dirmoe::data {
namespace {

using testing::TempDir;
using testing::write_file;
using testing::write_tiny_tokenizer;

std::vector<std::string> split_strings(const Gpt2Tokenizer& tok, const std::string& text) {
  std::vector<std::string> out;
  for (std::string_view p : tok.split(text)) out.emplace_back(p);
  return out;
}

std::string random_bytes(std::mt19937_64& rng, size_t n, bool ascii_heavy) {
  std::string s(n, '\0');
  for (auto& c : s) {
    uint64_t r = rng();
    if (ascii_heavy && r % 4 != 0) {
      static const char kChars[] = "ab e'sT,.\"\n\t 0123456789!?";
      c = kChars[(r >> 8) % (sizeof(kChars) - 1)];
    } else {
      c = static_cast<char>(r >> 16);
    }
  }
  return s;
}

// The reference encoder's bpe(), ported line by line: ranks looked up by the string "a,b".
class ReferenceBpe {
 public:
  explicit ReferenceBpe(const std::string& dir) {
    nlohmann::json enc = nlohmann::json::parse(read_file(dir + "/encoder.json"));
    for (auto& [k, v] : enc.items()) encoder_[k] = v.get<int32_t>();
    std::string bpe = read_file(dir + "/vocab.bpe");
    std::vector<std::string> lines;
    size_t pos = 0;
    while (pos <= bpe.size()) {
      size_t end = bpe.find('\n', pos);
      if (end == std::string::npos) end = bpe.size();
      lines.push_back(bpe.substr(pos, end - pos));
      pos = end + 1;
    }
    for (size_t i = 1; i + 1 < lines.size(); ++i) {
      size_t sp = lines[i].find(' ');
      ranks_[lines[i].substr(0, sp) + "," + lines[i].substr(sp + 1)] = static_cast<int>(i - 1);
    }
  }
  std::vector<int32_t> encode_piece(const std::string& piece) const {
    std::vector<std::string> word;
    for (char c : piece) word.push_back(testing::byte_symbol(static_cast<uint8_t>(c)));
    while (word.size() > 1) {
      int best = INT32_MAX;
      std::pair<std::string, std::string> bigram;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        auto it = ranks_.find(word[i] + "," + word[i + 1]);
        if (it != ranks_.end() && it->second <= best) {
          best = it->second;
          bigram = {word[i], word[i + 1]};
        }
      }
      if (best == INT32_MAX) break;
      std::vector<std::string> next;
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == bigram.first && word[i + 1] == bigram.second) {
          next.push_back(word[i] + word[i + 1]);
          i += 2;
        } else {
          next.push_back(word[i++]);
        }
      }
      word = std::move(next);
    }
    std::vector<int32_t> ids;
    for (const auto& w : word) ids.push_back(encoder_.at(w));
    return ids;
  }

 private:
  std::map<std::string, int32_t> encoder_;
  std::unordered_map<std::string, int> ranks_;
};

class TinyTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    write_tiny_tokenizer(
        dir_.path(), {{"a", "a"}, {"aa", "a"}, {" ", "a"}, {"b", "c"}, {" a", "bc"}, {"'", "s"}});
  }
  TempDir dir_;
};

TEST_F(TinyTokenizer, LoadsVocabularyAndMerges) {
  Gpt2Tokenizer tok(dir_.path());
  EXPECT_EQ(tok.vocab_size(), 256 + 6 + 1);
  EXPECT_EQ(tok.eot_id(), 262);
  EXPECT_EQ(tok.num_merges(), 6);
}

TEST_F(TinyTokenizer, MergesByRankLeftToRight) {
  Gpt2Tokenizer tok(dir_.path());
  // "aaa": (a,a) rank 0 merges at 0 only (no overlap), then (aa,a) rank 1.
  EXPECT_EQ(tok.encode("aaa"), (std::vector<int32_t>{257}));
  // "aaaa": both (a,a) occurrences merge in one round; (aa,aa) is not a merge.
  EXPECT_EQ(tok.encode("aaaa"), (std::vector<int32_t>{256, 256}));
  // " abc": (" ",a) rank 2, then (b,c) rank 3, then (" a",bc) rank 4.
  EXPECT_EQ(tok.encode(" abc"), (std::vector<int32_t>{260}));
  EXPECT_EQ(tok.encode("x's"), (std::vector<int32_t>{'x', 261}));
}

TEST_F(TinyTokenizer, RoundTripsRandomBytes) {
  Gpt2Tokenizer tok(dir_.path());
  std::mt19937_64 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string s = random_bytes(rng, rng() % 3000, i % 2 == 0);
    ASSERT_EQ(tok.decode(tok.encode(s)), s) << "case " << i;
  }
}

TEST_F(TinyTokenizer, InvalidUtf8BytesArePiecesOfTheirOwn) {
  Gpt2Tokenizer tok(dir_.path());
  EXPECT_EQ(split_strings(tok, "ab\xff\xfe cd"),
            (std::vector<std::string>{"ab", "\xff\xfe", " cd"}));
  EXPECT_EQ(split_strings(tok, "x\xc3"), (std::vector<std::string>{"x", "\xc3"}));
  // Overlong '/', a surrogate and a code point above U+10FFFF are ill-formed.
  EXPECT_EQ(split_strings(tok, "\xc0\xaf"), (std::vector<std::string>{"\xc0\xaf"}));
  EXPECT_EQ(split_strings(tok, "\xed\xa0\x80"), (std::vector<std::string>{"\xed\xa0\x80"}));
  EXPECT_EQ(split_strings(tok, "\xf4\x90\x80\x80"), (std::vector<std::string>{"\xf4\x90\x80\x80"}));
  const std::string s = "caf\xc3\xa9 \xe9t\xe9 \xf0\x9f\x98\x80\xf0\x9f";
  EXPECT_EQ(tok.decode(tok.encode(s)), s);
}

TEST_F(TinyTokenizer, SplitsLikeTheJavaScriptPattern) {
  Gpt2Tokenizer tok(dir_.path());
  using V = std::vector<std::string>;
  EXPECT_EQ(split_strings(tok, "Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(split_strings(tok, "it's they'll we've I'm he'd can't you're"),
            (V{"it", "'s", " they", "'ll", " we", "'ve", " I", "'m", " he", "'d", " can", "'t",
               " you", "'re"}));
  EXPECT_EQ(split_strings(tok, "IT'S"), (V{"IT", "'", "S"}));
  EXPECT_EQ(split_strings(tok, "a   b"), (V{"a", "  ", " b"}));
  EXPECT_EQ(split_strings(tok, "a \n\n b  "), (V{"a", " \n\n", " b", "  "}));
  EXPECT_EQ(split_strings(tok, "x\t\tfoo"), (V{"x", "\t", "\t", "foo"}));
  EXPECT_EQ(split_strings(tok, "abc123 4567 ...!?"), (V{"abc", "123", " 4567", " ...!?"}));
  // U+0085 is not white space for ECMAScript (PCRE2's \s would say it is); U+FEFF is.
  EXPECT_EQ(split_strings(tok, "a\xc2\x85 b"), (V{"a", "\xc2\x85", " b"}));
  EXPECT_EQ(split_strings(tok, "a\xef\xbb\xbf b"), (V{"a", "\xef\xbb\xbf", " b"}));
  // U+180E (Mongolian vowel separator) is a format character, not white space, for ECMAScript.
  EXPECT_EQ(split_strings(tok, "a\xe1\xa0\x8e"), (V{"a", "\xe1\xa0\x8e"}));
  // Letters of scripts newer than PCRE2's Unicode tables (CJK extension H, U+31350).
  EXPECT_EQ(split_strings(tok, " \xf0\xb1\x8d\x90\xf0\xb1\x8d\x91!"),
            (V{" \xf0\xb1\x8d\x90\xf0\xb1\x8d\x91", "!"}));
  // Combining marks are neither letters nor numbers: they form punctuation-like runs.
  EXPECT_EQ(split_strings(tok, "e\xcc\x81t"), (V{"e", "\xcc\x81", "t"}));
}

TEST_F(TinyTokenizer, LongRunsStayFast) {
  Gpt2Tokenizer tok(dir_.path());
  for (const std::string& s : {std::string(200000, 'a'), std::string(200000, ' ') + "x",
                               std::string(100000, '\xff'), std::string(100000, ',')}) {
    std::vector<int32_t> ids = tok.encode(s);
    ASSERT_EQ(tok.decode(ids), s);
  }
  // 9 x "a": round 1 leaves aa aa aa aa a; only the last pair is (aa,a).
  EXPECT_EQ(tok.encode(std::string(9, 'a')), (std::vector<int32_t>{256, 256, 256, 257}));
}

TEST_F(TinyTokenizer, ConcurrentEncodesAgree) {
  Gpt2Tokenizer tok(dir_.path());
  std::mt19937_64 rng(3);
  std::vector<std::string> texts;
  for (int i = 0; i < 50; ++i) texts.push_back(random_bytes(rng, 2000, true));
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(tok.encode(t));
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (int rep = 0; rep < 5; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i)
          failures[w] += tok.encode(texts[i]) != expected[i];
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

TEST(TokenizerErrors, MissingFiles) {
  TempDir dir;
  try {
    Gpt2Tokenizer tok(dir.path());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("encoder.json"), std::string::npos) << e.what();
  }
  write_tiny_tokenizer(dir.path(), {});
  std::remove((dir / "vocab.bpe").c_str());
  try {
    Gpt2Tokenizer tok(dir.path());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab.bpe"), std::string::npos) << e.what();
  }
}

void expect_load_error(const std::string& dir, const std::string& needle) {
  try {
    Gpt2Tokenizer tok(dir);
    ADD_FAILURE() << "no error, expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerErrors, MalformedEncoderJson) {
  TempDir dir;
  write_tiny_tokenizer(dir.path(), {{"a", "b"}});
  const std::string good = read_file(dir / "encoder.json");
  write_file(dir / "encoder.json", good.substr(0, good.size() / 2));
  expect_load_error(dir.path(), "malformed");
  write_file(dir / "encoder.json", "[1, 2, 3]");
  expect_load_error(dir.path(), "JSON object");
  write_file(dir / "encoder.json", "{\"a\": \"x\"}");
  expect_load_error(dir.path(), "not an integer");
  write_file(dir / "encoder.json", "{\"a\": -4}");
  expect_load_error(dir.path(), "outside");
  write_file(dir / "encoder.json", "{\"a\": 0}");
  expect_load_error(dir.path(), "no token for byte");
  std::string dup = good;
  dup.replace(dup.rfind(": 257"), 5, ": 256");  // "<|endoftext|>" takes the id of "ab"
  write_file(dir / "encoder.json", dup);
  expect_load_error(dir.path(), "given to two tokens");
}

TEST(TokenizerErrors, MalformedVocabBpe) {
  TempDir dir;
  write_tiny_tokenizer(dir.path(), {{"a", "b"}});
  write_file(dir / "vocab.bpe", "#version: 0.2\na b c\n");
  expect_load_error(dir.path(), "line 2: expected two symbols");
  write_file(dir / "vocab.bpe", "#version: 0.2\na z\n");
  expect_load_error(dir.path(), "\"az\" is not in");
}

TEST(TokenizerErrors, DecodeRejectsUnknownIds) {
  TempDir dir;
  write_tiny_tokenizer(dir.path(), {});
  Gpt2Tokenizer tok(dir.path());
  std::vector<int32_t> ids{1, 9999};
  EXPECT_THROW(tok.decode(ids), Error);
  ids = {-1};
  EXPECT_THROW(tok.decode(ids), Error);
}

class Gpt2Files : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::gpt2_dir();
    if (dir_.empty()) GTEST_SKIP() << "GPT-2 files absent: run launch/data/build_default_corpus.sh";
  }
  std::string dir_;
};

TEST_F(Gpt2Files, KnownIds) {
  Gpt2Tokenizer tok(dir_);
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.eot_id(), kGpt2EotId);
  EXPECT_EQ(tok.num_merges(), 50000);
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{262}));
  EXPECT_EQ(tok.encode("<|endoftext|>"), (std::vector<int32_t>{27, 91, 437, 1659, 5239, 91, 29}));
  std::vector<int32_t> eot{kGpt2EotId};
  EXPECT_EQ(tok.decode(eot), "<|endoftext|>");
}

TEST_F(Gpt2Files, HeapBpeEqualsTheReferenceLoop) {
  Gpt2Tokenizer tok(dir_);
  ReferenceBpe ref(dir_);
  std::mt19937_64 rng(11);
  // Quote/comma runs exercise the pairs whose "a,b" key matches another merge's key.
  const std::vector<std::string> alphabets = {
      "\",'[](){}.", "abcdefghijklmnopqrstuvwxyz", "etaoinshr ", "0123456789", " \n\t", "=-_*#"};
  int checked = 0;
  for (int i = 0; i < 4000; ++i) {
    const std::string& al = alphabets[i % alphabets.size()];
    std::string text(1 + rng() % 40, ' ');
    for (auto& c : text) c = al[rng() % al.size()];
    for (std::string_view piece : tok.split(text)) {
      std::vector<int32_t> got;
      tok.encode(piece, &got);
      const std::vector<std::string_view> again = tok.split(piece);
      if (again.size() != 1) continue;
      ASSERT_EQ(got, ref.encode_piece(std::string(piece))) << "piece '" << piece << "'";
      ++checked;
    }
  }
  for (const std::string piece : {"\",\"", "\",\",\"", "','", "',','", "],[", "\"],\"", ".\",\""}) {
    EXPECT_EQ(tok.encode(piece), ref.encode_piece(piece)) << piece;
  }
  EXPECT_GE(checked, 4000);
}

TEST_F(Gpt2Files, RoundTripsRandomBytes) {
  Gpt2Tokenizer tok(dir_);
  std::mt19937_64 rng(5);
  for (int i = 0; i < 300; ++i) {
    std::string s = random_bytes(rng, rng() % 5000, i % 3 != 0);
    ASSERT_EQ(tok.decode(tok.encode(s)), s) << "case " << i;
  }
}

}  // namespace
}  // namespace dirmoe::data
