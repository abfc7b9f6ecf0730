// `dirmoe data prepare` / `dirmoe data inspect` (see commands.h). prepare reads documents on the
// calling thread, encodes batches on a pool of workers (each keeps its BPE cache warm) and writes
// the results in input order, so the output does not depend on the number of workers.
#include "runtime/data/commands.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/data/file_util.h"
#include "runtime/data/indexed_dataset.h"
#include "runtime/data/tokenizer.h"

namespace dirmoe::data {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBatchBytes = 1 << 20;
constexpr size_t kBatchDocs = 1024;

struct Batch {
  std::vector<std::string> docs;
  int64_t bytes = 0;
};

struct Encoded {
  std::vector<int32_t> ids;      // all documents, concatenated
  std::vector<int64_t> lengths;  // (documents)
  int64_t bytes = 0;
};

// Fixed worker threads fed from one queue; tasks are run in submission order of pickup.
class WorkerPool {
 public:
  explicit WorkerPool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  std::future<Encoded> submit(std::function<Encoded()> fn) {
    std::packaged_task<Encoded()> task(std::move(fn));
    auto fut = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return fut;
  }

 private:
  void loop() {
    for (;;) {
      std::packaged_task<Encoded()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  std::vector<std::thread> threads_;
  std::deque<std::packaged_task<Encoded()>> queue_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
};

// One status line on stderr, shown once a run has lasted a second: redrawn in place on a
// terminal, a line every 10 s otherwise.
class Progress {
 public:
  explicit Progress(bool enabled)
      : enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1), start_(Clock::now()) {}
  void update(int64_t docs, int64_t tokens, int64_t bytes, bool done) {
    if (!enabled_) return;
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    if (!done && elapsed < 1.0) return;
    if (done && !shown_) return;
    const double interval = tty_ ? 0.2 : 10.0;
    if (!done && shown_ && std::chrono::duration<double>(now - last_).count() < interval) return;
    last_ = now;
    shown_ = true;
    std::fprintf(stderr, "%sprepare: %lld docs  %.2fM tokens  %.1f MB  %.1f MB/s%s",
                 tty_ ? "\r" : "", static_cast<long long>(docs), tokens / 1e6, bytes / 1e6,
                 bytes / 1e6 / std::max(elapsed, 1e-9), tty_ && !done ? "  " : "\n");
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool enabled_, tty_;
  bool shown_ = false;
  Clock::time_point start_, last_;
};

bool is_jsonl(const std::string& path) {
  return path.ends_with(".jsonl") || path.ends_with(".JSONL");
}

// Calls add(doc, where) for every document of `path`; where = "path" or "path:line".
template <class Add>
void read_documents(const std::string& path, const std::string& key, Add&& add) {
  if (!is_jsonl(path)) {
    add(read_file(path), path);
    return;
  }
  std::ifstream in(path, std::ios::binary);
  DIRMOE_CHECK(in.good(), "cannot open ", path);
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      DIRMOE_FAIL(path, ":", line_no, ": malformed JSON: ", e.what());
    }
    DIRMOE_CHECK(j.is_object(), path, ":", line_no, ": expected a JSON object");
    auto it = j.find(key);
    DIRMOE_CHECK(it != j.end() && it->is_string(), path, ":", line_no, ": no \"", key,
                 "\" string field");
    add(it->get<std::string>(), path + ":" + std::to_string(line_no));
  }
  DIRMOE_CHECK(!in.bad(), "error reading ", path);
}

Encoded encode_batch(const Gpt2Tokenizer& tok, const Batch& batch, bool append_eod) {
  Encoded out;
  out.bytes = batch.bytes;
  out.lengths.reserve(batch.docs.size());
  for (const std::string& doc : batch.docs) {
    const size_t before = out.ids.size();
    tok.encode(doc, &out.ids);
    if (append_eod) out.ids.push_back(tok.eot_id());
    out.lengths.push_back(static_cast<int64_t>(out.ids.size() - before));
  }
  return out;
}

std::string resolve_megatron_prefix(const std::string& path) {
  for (const char* ext : {".idx", ".bin"}) {
    if (path.ends_with(ext)) {
      std::string prefix = path.substr(0, path.size() - 4);
      if (file_exists(prefix + ".idx")) return prefix;
    }
  }
  return file_exists(path + ".idx") ? path : std::string();
}

void print_document(const std::vector<int32_t>& ids, bool truncated, const Gpt2Tokenizer* tok) {
  if (tok) {
    std::cout << "----- text -----\n" << tok->decode(ids);
  } else {
    std::cout << "----- token ids -----\n";
    for (size_t i = 0; i < ids.size(); ++i) std::cout << ids[i] << ((i + 1) % 20 ? " " : "\n");
  }
  std::cout << (truncated ? "\n----- (truncated) -----\n" : "\n----- end -----\n");
}

}  // namespace

std::vector<std::string> collect_input_files(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    DIRMOE_CHECK(!ec && fs::exists(st), "input ", input, " does not exist");
    if (fs::is_directory(st)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(input, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) found.push_back(it->path().string());
      }
      DIRMOE_CHECK(!ec, "cannot list ", input, ": ", ec.message());
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      DIRMOE_CHECK(fs::is_regular_file(st), "input ", input, " is not a file or directory");
      files.push_back(input);
    }
  }
  return files;
}

DataPrepareStats prepare_dataset(const DataPrepareOptions& opts) {
  DIRMOE_CHECK(!opts.inputs.empty(), "data prepare: no --input given");
  DIRMOE_CHECK(!opts.output_prefix.empty(), "data prepare: no --output prefix given");
  DIRMOE_CHECK(!opts.tokenizer_dir.empty(), "data prepare: no --tokenizer directory given");
  DIRMOE_CHECK(opts.workers >= 0 && opts.workers <= 1024, "data prepare: --workers must be in ",
               "[0, 1024] (0: one per core), got ", opts.workers);
  const std::vector<std::string> files = collect_input_files(opts.inputs);
  DIRMOE_CHECK(!files.empty(), "data prepare: no input files found");
  const Gpt2Tokenizer tok(opts.tokenizer_dir);
  DIRMOE_CHECK(!opts.append_eod || tok.eot_id() >= 0, "--append-eod: the vocabulary in ",
               opts.tokenizer_dir, " has no <|endoftext|> token");

  const fs::path parent = fs::path(opts.output_prefix).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  IndexedDatasetWriter writer(opts.output_prefix, token_dtype_for_vocab(tok.vocab_size()));

  const int workers =
      opts.workers > 0 ? opts.workers : std::max(1u, std::thread::hardware_concurrency());
  const auto start = std::chrono::steady_clock::now();
  Progress progress(opts.progress);
  DataPrepareStats stats;
  stats.vocab_size = tok.vocab_size();
  {
    WorkerPool pool(workers);
    std::deque<std::future<Encoded>> in_flight;
    auto write_front = [&] {
      Encoded e = in_flight.front().get();
      in_flight.pop_front();
      size_t at = 0;
      for (int64_t len : e.lengths) {
        writer.add_document(std::span<const int32_t>(e.ids.data() + at, len));
        at += len;
      }
      stats.num_documents += static_cast<int64_t>(e.lengths.size());
      stats.num_tokens += static_cast<int64_t>(e.ids.size());
      stats.num_bytes += e.bytes;
      progress.update(stats.num_documents, stats.num_tokens, stats.num_bytes, false);
    };
    auto batch = std::make_shared<Batch>();
    auto flush = [&] {
      if (batch->docs.empty()) return;
      in_flight.push_back(pool.submit([&tok, b = std::move(batch), eod = opts.append_eod] {
        return encode_batch(tok, *b, eod);
      }));
      batch = std::make_shared<Batch>();
      while (in_flight.size() > static_cast<size_t>(2 * workers)) write_front();
    };
    try {
      for (const std::string& file : files) {
        read_documents(file, opts.json_key, [&](std::string doc, const std::string& where) {
          if (doc.empty()) {
            log_warn("data prepare: ", where, " is empty: it becomes a document of ",
                     opts.append_eod ? "one token (<|endoftext|>)" : "no tokens");
            stats.empty_documents.push_back(where);
          }
          batch->bytes += static_cast<int64_t>(doc.size());
          batch->docs.push_back(std::move(doc));
          if (batch->bytes >= kBatchBytes || batch->docs.size() >= kBatchDocs) flush();
        });
      }
      flush();
      while (!in_flight.empty()) write_front();
    } catch (...) {
      for (auto& f : in_flight) f.wait();
      throw;
    }
  }
  DIRMOE_CHECK(stats.num_documents > 0, "data prepare: the inputs hold no documents (",
               files.size(), " files, all empty .jsonl)");
  writer.finalize();
  progress.update(stats.num_documents, stats.num_tokens, stats.num_bytes, true);
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

int run_data_prepare(const DataPrepareOptions& opts) {
  try {
    const DataPrepareStats s = prepare_dataset(opts);
    const double secs = std::max(s.seconds, 1e-9);
    std::printf(
        "data prepare: wrote %s.bin + %s.idx: %lld documents, %lld tokens (%s), %.2f MB of text "
        "in %.3f s (%.2f MB/s, %.0f tokens/s)\n",
        opts.output_prefix.c_str(), opts.output_prefix.c_str(),
        static_cast<long long>(s.num_documents), static_cast<long long>(s.num_tokens),
        std::string(megatron_dtype_name(static_cast<uint8_t>(token_dtype_for_vocab(s.vocab_size))))
            .c_str(),
        s.num_bytes / 1e6, s.seconds, s.num_bytes / 1e6 / secs, s.num_tokens / secs);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "dirmoe data prepare: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dirmoe data prepare: error: %s\n", e.what());
    return 1;
  }
}

int run_data_inspect(const DataInspectOptions& opts) {
  try {
    std::unique_ptr<Gpt2Tokenizer> tok;
    if (!opts.tokenizer_dir.empty()) tok = std::make_unique<Gpt2Tokenizer>(opts.tokenizer_dir);
    DIRMOE_CHECK(opts.max_tokens >= 0, "--max-tokens must be non-negative");
    const std::string prefix = resolve_megatron_prefix(opts.path);
    std::vector<int64_t> doc_start;  // (documents + 1) token offsets
    std::function<void(int64_t, int64_t, int32_t*)> read;
    int64_t num_tokens = 0;
    std::cout << "path:         " << opts.path << "\n";
    if (!prefix.empty()) {
      auto ds = std::make_shared<IndexedDataset>(prefix);
      std::cout << "format:       Megatron indexed dataset (MMIDIDX, version " << ds->version()
                << ")\n"
                << "dtype:        " << megatron_dtype_name(ds->dtype_code()) << " (code "
                << int{ds->dtype_code()} << ", " << ds->item_size() << " bytes)\n"
                << "sequences:    " << ds->num_sequences() << "\n"
                << "documents:    " << ds->num_documents() << "\n"
                << "files:        " << ds->idx_path() << " " << ds->idx_bytes() << " bytes, "
                << ds->bin_path() << " " << ds->bin_bytes() << " bytes\n";
      for (int64_t d = 0; d <= ds->num_documents(); ++d) {
        const int64_t seq = ds->document_index_entry(d);
        doc_start.push_back(seq < ds->num_sequences() ? ds->sequence_offset(seq)
                                                      : ds->num_tokens());
      }
      num_tokens = ds->num_tokens();
      read = [ds](int64_t o, int64_t n, int32_t* out) { ds->read_tokens(o, n, out); };
    } else {
      DIRMOE_CHECK(file_exists(opts.path), opts.path, " does not exist (nor ", opts.path, ".idx)");
      DIRMOE_CHECK(looks_like_token_shard(opts.path), opts.path,
                   " is neither a Megatron prefix nor an llm.c token shard");
      auto sh = std::make_shared<TokenShard>(opts.path);
      std::cout << "format:       llm.c token shard (magic " << sh->magic() << ", version "
                << sh->version() << (sh->format() == ShardFormat::kGpt2 ? ", uint16" : ", uint32")
                << " tokens)\n"
                << "file:         " << sh->file_bytes() << " bytes\n";
      doc_start = shard_document_starts(*sh, sh->document_token());
      std::cout << "documents:    " << doc_start.size() - 1 << " (starting at "
                << (sh->format() == ShardFormat::kGpt2 ? "<|endoftext|> " : "<|begin_of_text|> ")
                << sh->document_token() << ")\n";
      num_tokens = sh->num_tokens();
      read = [sh](int64_t o, int64_t n, int32_t* out) { sh->read_tokens(o, n, out); };
    }
    const int64_t docs = static_cast<int64_t>(doc_start.size()) - 1;
    std::cout << "tokens:       " << num_tokens << "\n";
    if (docs > 0) {
      int64_t lo = INT64_MAX, hi = 0;
      for (int64_t d = 0; d < docs; ++d) {
        lo = std::min(lo, doc_start[d + 1] - doc_start[d]);
        hi = std::max(hi, doc_start[d + 1] - doc_start[d]);
      }
      std::printf("doc length:   min %lld, mean %.1f, max %lld tokens\n",
                  static_cast<long long>(lo), static_cast<double>(num_tokens) / docs,
                  static_cast<long long>(hi));
    }
    int32_t max_id = -1;
    std::vector<int32_t> buf(1 << 16);
    for (int64_t o = 0; o < num_tokens; o += static_cast<int64_t>(buf.size())) {
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(buf.size()), num_tokens - o);
      read(o, n, buf.data());
      max_id = std::max(max_id, *std::max_element(buf.begin(), buf.begin() + n));
    }
    std::cout << "largest id:   " << max_id;
    if (tok) {
      std::cout << (max_id < tok->vocab_size() ? " (inside" : " (OUTSIDE") << " the vocabulary of "
                << tok->vocab_size() << ")";
    }
    std::cout << "\n";
    std::cout.flush();
    if (opts.document >= 0) {
      DIRMOE_CHECK(opts.document < docs, "document ", opts.document, " out of range [0, ", docs,
                   ")");
      const int64_t begin = doc_start[opts.document], len = doc_start[opts.document + 1] - begin;
      const int64_t shown = std::min(len, opts.max_tokens);
      std::vector<int32_t> ids(shown);
      read(begin, shown, ids.data());
      std::cout << "document " << opts.document << ": " << len << " tokens from token " << begin
                << "\n";
      print_document(ids, shown < len, tok.get());
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "dirmoe data inspect: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dirmoe data inspect: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace dirmoe::data
