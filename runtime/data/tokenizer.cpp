// GPT-2 byte-level BPE (see tokenizer.h). Two behaviours of the reference JavaScript encoder are
// reproduced on purpose: its `\s` (ECMAScript white space: U+FEFF yes, U+0085 and U+180E no) and
// its merge-rank table keyed by the string "a,b", under which some non-merge pairs such as ("\",",
// "\"") inherit the rank of the merge ("\"", ",\"") that prints the same.
#include "runtime/data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "runtime/core/error.h"
#include "runtime/data/file_util.h"

namespace dirmoe::data {
namespace {

struct CodeRange {
  uint32_t first;
  uint32_t last;
};
#include "runtime/data/js_unicode_ranges.inc"

constexpr size_t kMaxCachedPieceBytes = 256;
constexpr size_t kMaxCacheEntries = size_t{1} << 20;

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the rest to 256 + n.
std::array<uint32_t, 256> byte_to_code_point() {
  std::array<uint32_t, 256> cp{};
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    cp[b] = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
  }
  return cp;
}

// Length of the well-formed UTF-8 sequence at p (no overlongs, surrogates or code points past
// U+10FFFF, as PCRE2 and the WHATWG decoder require), or 0 when it is ill-formed.
inline size_t utf8_sequence_length(const unsigned char* p, size_t n) {
  unsigned c = p[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  if (c < 0xE0) return (n >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;
    if (c == 0xED && p[1] >= 0xA0) return 0;
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;
    if (c == 0xF4 && p[1] >= 0x90) return 0;
    return 4;
  }
  return 0;
}

// Code points of a UTF-8 string known to be valid (nlohmann::json validates what it parses).
std::vector<uint32_t> code_points(std::string_view s) {
  std::vector<uint32_t> out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    size_t k = utf8_sequence_length(p + i, s.size() - i);
    DIRMOE_CHECK(k > 0, "invalid UTF-8 in a token string");
    uint32_t c = k == 1 ? p[i] : k == 2 ? p[i] & 0x1F : k == 3 ? p[i] & 0x0F : p[i] & 0x07;
    for (size_t j = 1; j < k; ++j) c = (c << 6) | (p[i + j] & 0x3F);
    out.push_back(c);
    i += k;
  }
  return out;
}

std::string class_ranges(std::span<const CodeRange> ranges) {
  std::string s;
  char buf[48];
  for (const CodeRange& r : ranges) {
    if (r.first > 0x10FFFF) continue;
    if (r.first == r.last) {
      std::snprintf(buf, sizeof(buf), "\\x{%X}", r.first);
    } else {
      std::snprintf(buf, sizeof(buf), "\\x{%X}-\\x{%X}", r.first, r.last);
    }
    s += buf;
  }
  return s;
}

// GPT-2's '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ with `\s` spelled
// out as ECMAScript defines it and the letter/number classes widened to the reference's Unicode.
std::string gpt2_pattern() {
  const std::string ws =
      "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
      "\\x{205F}\\x{3000}\\x{FEFF}";
  const std::string letters = "\\p{L}" + class_ranges(kJsExtraLetters);
  const std::string numbers = "\\p{N}" + class_ranges(kJsExtraNumbers);
  return "'(?:[sdmt]|ll|ve|re)| ?[" + letters + "]+| ?[" + numbers + "]+| ?[^" + ws + letters +
         numbers + "]+|[" + ws + "]+(?![^" + ws + "])|[" + ws + "]+";
}

struct MergeInfo {
  int32_t rank;
  int32_t merged;
};

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Merge table: open addressing over (left id, right id) keys; ~0 marks an empty slot.
class MergeTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, MergeInfo{});
    mask_ = cap - 1;
  }
  void set(uint64_t key, MergeInfo v) {
    size_t i = slot(key);
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
    if (keys_[i] == kEmpty) ++size_;
    keys_[i] = key;
    values_[i] = v;
    DIRMOE_CHECK(2 * size_ <= keys_.size(), "merge table over capacity");
  }
  const MergeInfo* find(uint64_t key) const {
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  size_t slot(uint64_t key) const { return ((key * 0x9E3779B97F4A7C15ull) >> 17) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<MergeInfo> values_;
  size_t mask_ = 0, size_ = 0;
};

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 29;
  }
  h = (h ^ (h >> 32)) * 0xD6E8FEB86659FD93ull;
  return (h ^ (h >> 32)) | 1;  // never 0: 0 marks an empty slot
}

// Piece bytes -> ids, with keys and values in two arenas (no allocation per entry).
class PieceCache {
 public:
  PieceCache() { reset(1 << 16); }
  const int32_t* find(std::string_view key, uint64_t h, uint32_t* n) const {
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.key_len == key.size() &&
          std::memcmp(keys_.data() + s.key_at, key.data(), key.size()) == 0) {
        *n = s.val_len;
        return values_.data() + s.val_at;
      }
    }
  }
  void insert(std::string_view key, uint64_t h, const int32_t* ids, size_t n) {
    if (entries_ >= kMaxCacheEntries || keys_.size() > (size_t{1} << 30)) reset(1 << 16);
    if (2 * (entries_ + 1) > slots_.size()) grow();
    size_t i = h & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(values_.size()),
                     static_cast<uint16_t>(key.size()), static_cast<uint16_t>(n)};
    keys_.append(key);
    values_.insert(values_.end(), ids, ids + n);
    ++entries_;
  }
  void clear() { reset(1 << 16); }

 private:
  struct Slot {
    uint64_t hash;
    uint32_t key_at, val_at;
    uint16_t key_len, val_len;
  };
  void reset(size_t cap) {
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    keys_.clear();
    values_.clear();
    entries_ = 0;
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.hash == 0) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].hash != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> values_;
  size_t mask_ = 0, entries_ = 0;
};

struct HeapEntry {
  int32_t rank;
  int32_t left;  // node of the pair's left symbol (its first byte's position in the piece)
  int32_t sym_left;
  int32_t sym_right;
};

struct BpeScratch {
  std::vector<int32_t> sym, prev, next;
  std::vector<uint8_t> alive;
  std::vector<HeapEntry> heap, round, deferred;
};

struct ThreadState {
  uint64_t owner = 0;
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* match_context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  PieceCache cache;
  BpeScratch scratch;

  ~ThreadState() {
    pcre2_match_data_free(match_data);
    pcre2_match_context_free(match_context);
    pcre2_jit_stack_free(jit_stack);
  }
};

std::atomic<uint64_t> g_next_instance{1};

}  // namespace

struct Gpt2Tokenizer::Impl {
  uint64_t instance = 0;
  std::vector<std::string> id_bytes;  // (vocab_size) bytes each id decodes to
  std::vector<uint8_t> id_present;    // (vocab_size) 0 where encoder.json has no such id
  std::array<int32_t, 256> byte_id{};
  MergeTable merges;
  int32_t eot = -1;
  int64_t num_merges = 0;
  pcre2_code* re = nullptr;
  bool jit = false;

  ~Impl() { pcre2_code_free(re); }

  void load(const std::string& encoder_path, const std::string& bpe_path);
  void compile_pattern();
  ThreadState& thread_state() const;
  template <class Emit>
  void split_valid(ThreadState& ts, std::string_view text, Emit&& emit) const;
  template <class Emit>
  void split(ThreadState& ts, std::string_view text, Emit&& emit) const;
  void bpe(std::string_view piece, BpeScratch& s, std::vector<int32_t>* out) const;
  void encode_piece(ThreadState& ts, std::string_view piece, std::vector<int32_t>* out) const;
};

void Gpt2Tokenizer::Impl::load(const std::string& encoder_path, const std::string& bpe_path) {
  DIRMOE_CHECK(file_exists(encoder_path), "tokenizer file ", encoder_path, " does not exist");
  DIRMOE_CHECK(file_exists(bpe_path), "tokenizer file ", bpe_path, " does not exist");
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(read_file(encoder_path));
  } catch (const nlohmann::json::exception& e) {
    DIRMOE_FAIL("malformed ", encoder_path, ": ", e.what());
  }
  DIRMOE_CHECK(encoder.is_object() && !encoder.empty(), "malformed ", encoder_path,
               ": expected a non-empty JSON object of token string -> id");

  const std::array<uint32_t, 256> byte_cp = byte_to_code_point();
  std::unordered_map<uint32_t, uint8_t> cp_byte;
  for (int b = 0; b < 256; ++b) cp_byte[byte_cp[b]] = static_cast<uint8_t>(b);

  std::unordered_map<std::string, int32_t> token_id;
  token_id.reserve(encoder.size() * 2);
  int64_t max_id = -1;
  for (const auto& [key, value] : encoder.items()) {
    DIRMOE_CHECK(value.is_number_integer(), "malformed ", encoder_path, ": the id of token \"", key,
                 "\" is not an integer");
    int64_t id = value.get<int64_t>();
    DIRMOE_CHECK(id >= 0 && id < (int64_t{1} << 31) - 1, "malformed ", encoder_path, ": token \"",
                 key, "\" has id ", id, " outside [0, 2^31-1)");
    max_id = std::max(max_id, id);
    token_id.emplace(key, static_cast<int32_t>(id));
  }
  DIRMOE_CHECK(max_id < static_cast<int64_t>(encoder.size()) * 4 + 1024, "malformed ", encoder_path,
               ": largest id ", max_id, " for only ", encoder.size(), " tokens");
  id_bytes.assign(max_id + 1, std::string());
  id_present.assign(max_id + 1, 0);
  for (const auto& [key, id] : token_id) {
    DIRMOE_CHECK(!id_present[id], "malformed ", encoder_path, ": id ", id,
                 " is given to two tokens");
    id_present[id] = 1;
    std::string bytes;
    bool byte_level = true;
    for (uint32_t c : code_points(key)) {
      auto it = cp_byte.find(c);
      if (it == cp_byte.end()) {
        byte_level = false;
        break;
      }
      bytes.push_back(static_cast<char>(it->second));
    }
    id_bytes[id] = byte_level ? bytes : key;  // special tokens outside the byte alphabet: raw text
  }
  for (int b = 0; b < 256; ++b) {
    std::string s;
    uint32_t c = byte_cp[b];
    if (c < 0x80) {
      s.push_back(static_cast<char>(c));
    } else {
      s.push_back(static_cast<char>(0xC0 | (c >> 6)));
      s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
    auto it = token_id.find(s);
    DIRMOE_CHECK(it != token_id.end(), "malformed ", encoder_path, ": no token for byte ", b,
                 " (\"", s, "\")");
    byte_id[b] = it->second;
  }
  if (auto it = token_id.find("<|endoftext|>"); it != token_id.end()) eot = it->second;

  // Merges, keyed as the reference keys them: the string "a,b" -> rank, later lines overwriting.
  const std::string bpe_text = read_file(bpe_path);
  std::unordered_map<std::string, int32_t> key_rank;
  size_t pos = 0;
  int64_t line_no = 0;
  int32_t rank = 0;
  while (pos < bpe_text.size()) {
    size_t end = bpe_text.find('\n', pos);
    if (end == std::string::npos) end = bpe_text.size();
    std::string_view line(bpe_text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line_no == 1 && !line.empty() && line[0] == '#') continue;
    std::vector<std::string_view> fields;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
      size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
      if (j > i) fields.push_back(line.substr(i, j - i));
      i = j;
    }
    if (fields.empty()) continue;
    DIRMOE_CHECK(fields.size() == 2, "malformed ", bpe_path, " line ", line_no,
                 ": expected two symbols, got ", fields.size());
    std::string a(fields[0]), b(fields[1]);
    DIRMOE_CHECK(token_id.count(a), "malformed ", bpe_path, " line ", line_no, ": symbol \"", a,
                 "\" is not in ", encoder_path);
    DIRMOE_CHECK(token_id.count(b), "malformed ", bpe_path, " line ", line_no, ": symbol \"", b,
                 "\" is not in ", encoder_path);
    DIRMOE_CHECK(token_id.count(a + b), "malformed ", bpe_path, " line ", line_no, ": merge \"",
                 a + b, "\" is not in ", encoder_path);
    key_rank[a + "," + b] = rank++;
  }
  num_merges = rank;
  merges.reserve(key_rank.size() + 64);
  for (const auto& [key, r] : key_rank) {
    for (size_t c = 1; c + 1 < key.size(); ++c) {
      if (key[c] != ',') continue;
      auto ia = token_id.find(key.substr(0, c));
      auto ib = token_id.find(key.substr(c + 1));
      if (ia == token_id.end() || ib == token_id.end()) continue;
      auto im = token_id.find(ia->first + ib->first);
      if (im == token_id.end()) continue;
      merges.set(pair_key(ia->second, ib->second), MergeInfo{r, im->second});
    }
  }
}

void Gpt2Tokenizer::Impl::compile_pattern() {
  const std::string pattern = gpt2_pattern();
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                     PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
  if (re == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    DIRMOE_FAIL("PCRE2 cannot compile the GPT-2 pattern at offset ", err_offset, ": ",
                reinterpret_cast<const char*>(msg));
  }
  jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
}

ThreadState& Gpt2Tokenizer::Impl::thread_state() const {
  thread_local ThreadState ts;
  if (ts.match_data == nullptr) {
    ts.match_data = pcre2_match_data_create(1, nullptr);
    ts.match_context = pcre2_match_context_create(nullptr);
    ts.jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);
    DIRMOE_CHECK(ts.match_data && ts.match_context && ts.jit_stack, "PCRE2 out of memory");
    pcre2_jit_stack_assign(ts.match_context, nullptr, ts.jit_stack);
  }
  if (ts.owner != instance) {
    ts.cache.clear();
    ts.owner = instance;
  }
  return ts;
}

template <class Emit>
void Gpt2Tokenizer::Impl::split_valid(ThreadState& ts, std::string_view text, Emit&& emit) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t off = 0;
  while (off < n) {
    int rc =
        jit ? pcre2_jit_match(re, subject, n, off, PCRE2_NO_UTF_CHECK, ts.match_data,
                              ts.match_context)
            : pcre2_match(re, subject, n, off, PCRE2_NO_UTF_CHECK, ts.match_data, ts.match_context);
    if (rc == PCRE2_ERROR_NOMATCH) {
      emit(text.substr(off));
      return;
    }
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      DIRMOE_FAIL("PCRE2 match failed at byte ", off, ": ", reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ts.match_data);
    DIRMOE_CHECK(ov[1] > ov[0], "empty pre-tokeniser match at byte ", ov[0]);
    if (ov[0] > off) emit(text.substr(off, ov[0] - off));
    emit(text.substr(ov[0], ov[1] - ov[0]));
    off = ov[1];
  }
}

// Valid UTF-8 runs go through the pattern; each run of ill-formed bytes is a piece of its own.
template <class Emit>
void Gpt2Tokenizer::Impl::split(ThreadState& ts, std::string_view text, Emit&& emit) const {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    while (j < n) {
      while (j + 8 <= n) {
        uint64_t w;
        std::memcpy(&w, p + j, 8);
        if (w & 0x8080808080808080ull) break;
        j += 8;
      }
      if (j >= n) break;
      size_t k = utf8_sequence_length(p + j, n - j);
      if (k == 0) break;
      j += k;
    }
    if (j > i) split_valid(ts, text.substr(i, j - i), emit);
    size_t m = j;
    while (m < n && utf8_sequence_length(p + m, n - m) == 0) ++m;
    if (m > j) emit(text.substr(j, m - j));
    i = m;
  }
}

// BPE as the reference runs it: each round takes the lowest rank among the adjacent pairs (the
// rightmost pair when two share it) and merges every occurrence of that pair left to right. A heap
// of pairs keeps long pieces O(n log n).
void Gpt2Tokenizer::Impl::bpe(std::string_view piece, BpeScratch& s,
                              std::vector<int32_t>* out) const {
  const int32_t n = static_cast<int32_t>(piece.size());
  s.sym.resize(n);
  s.prev.resize(n);
  s.next.resize(n);
  s.alive.assign(n, 1);
  for (int32_t i = 0; i < n; ++i) {
    s.sym[i] = byte_id[static_cast<uint8_t>(piece[i])];
    s.prev[i] = i - 1;
    s.next[i] = i + 1 < n ? i + 1 : -1;
  }
  auto later = [](const HeapEntry& a, const HeapEntry& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };
  auto valid = [&](const HeapEntry& e) {
    if (!s.alive[e.left] || s.sym[e.left] != e.sym_left) return false;
    int32_t r = s.next[e.left];
    return r >= 0 && s.sym[r] == e.sym_right;
  };
  auto push_pair = [&](int32_t left) {
    int32_t right = s.next[left];
    if (right < 0) return;
    const MergeInfo* m = merges.find(pair_key(s.sym[left], s.sym[right]));
    if (m == nullptr) return;
    s.heap.push_back(HeapEntry{m->rank, left, s.sym[left], s.sym[right]});
    std::push_heap(s.heap.begin(), s.heap.end(), later);
  };
  s.heap.clear();
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!s.heap.empty()) {
    s.round.clear();
    while (!s.heap.empty()) {
      const HeapEntry top = s.heap.front();
      if (!s.round.empty() && top.rank != s.round.front().rank) break;
      std::pop_heap(s.heap.begin(), s.heap.end(), later);
      s.heap.pop_back();
      if (!valid(top)) continue;
      if (!s.round.empty() && s.round.back().left == top.left) continue;
      s.round.push_back(top);
    }
    if (s.round.empty()) break;
    const int32_t first = s.round.back().sym_left, second = s.round.back().sym_right;
    const int32_t merged = merges.find(pair_key(first, second))->merged;
    s.deferred.clear();
    for (const HeapEntry& e : s.round) {
      if (e.sym_left != first || e.sym_right != second) {
        s.deferred.push_back(e);
        continue;
      }
      if (!valid(e)) continue;
      const int32_t left = e.left, right = s.next[left];
      s.sym[left] = merged;
      s.alive[right] = 0;
      s.next[left] = s.next[right];
      if (s.next[right] >= 0) s.prev[s.next[right]] = left;
      if (s.prev[left] >= 0) push_pair(s.prev[left]);
      push_pair(left);
    }
    for (const HeapEntry& e : s.deferred) {
      if (!valid(e)) continue;
      s.heap.push_back(e);
      std::push_heap(s.heap.begin(), s.heap.end(), later);
    }
  }
  for (int32_t i = 0; i >= 0; i = s.next[i]) out->push_back(s.sym[i]);
}

void Gpt2Tokenizer::Impl::encode_piece(ThreadState& ts, std::string_view piece,
                                       std::vector<int32_t>* out) const {
  if (piece.size() == 1) {
    out->push_back(byte_id[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (piece.size() > kMaxCachedPieceBytes) {
    bpe(piece, ts.scratch, out);
    return;
  }
  const uint64_t h = hash_bytes(piece.data(), piece.size());
  uint32_t n = 0;
  if (const int32_t* ids = ts.cache.find(piece, h, &n)) {
    out->insert(out->end(), ids, ids + n);
    return;
  }
  const size_t before = out->size();
  bpe(piece, ts.scratch, out);
  ts.cache.insert(piece, h, out->data() + before, out->size() - before);
}

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& dir)
    : Gpt2Tokenizer(dir + "/encoder.json", dir + "/vocab.bpe") {}

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& encoder_json_path,
                             const std::string& vocab_bpe_path)
    : impl_(std::make_unique<Impl>()) {
  impl_->instance = g_next_instance.fetch_add(1);
  impl_->load(encoder_json_path, vocab_bpe_path);
  impl_->compile_pattern();
}

Gpt2Tokenizer::~Gpt2Tokenizer() = default;
Gpt2Tokenizer::Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept = default;
Gpt2Tokenizer& Gpt2Tokenizer::operator=(Gpt2Tokenizer&&) noexcept = default;

int64_t Gpt2Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_bytes.size()); }
int32_t Gpt2Tokenizer::eot_id() const { return impl_->eot; }
int64_t Gpt2Tokenizer::num_merges() const { return impl_->num_merges; }

void Gpt2Tokenizer::encode(std::string_view text, std::vector<int32_t>* out) const {
  ThreadState& ts = impl_->thread_state();
  impl_->split(ts, text, [&](std::string_view piece) { impl_->encode_piece(ts, piece, out); });
}

std::vector<int32_t> Gpt2Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  encode(text, &ids);
  return ids;
}

void Gpt2Tokenizer::decode(std::span<const int32_t> ids, std::string* out) const {
  const int64_t vocab = vocab_size();
  for (int32_t id : ids) {
    DIRMOE_CHECK(id >= 0 && id < vocab && impl_->id_present[id], "cannot decode token id ", id,
                 ": not in the vocabulary (size ", vocab, ")");
    out->append(impl_->id_bytes[id]);
  }
}

std::string Gpt2Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  decode(ids, &out);
  return out;
}

std::vector<std::string_view> Gpt2Tokenizer::split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  impl_->split(impl_->thread_state(), text, [&](std::string_view p) { pieces.push_back(p); });
  return pieces;
}

}  // namespace dirmoe::data
