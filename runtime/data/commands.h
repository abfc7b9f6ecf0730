// `dirmoe data prepare` and `dirmoe data inspect` as library functions: the CLI (launch/) only
// fills the option structs. prepare turns UTF-8 text (plain files: one document each; .jsonl: one
// JSON object with a "text" field per line) into a Megatron indexed dataset; inspect prints what a
// Megatron prefix or an llm.c shard holds and decodes a document back to text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dirmoe::data {

struct DataPrepareOptions {
  std::vector<std::string> inputs;  // files or directories (recursed, files in sorted order)
  std::string tokenizer_dir;        // holds encoder.json + vocab.bpe
  std::string output_prefix;        // writes PREFIX.bin + PREFIX.idx
  bool append_eod = false;          // end every document with <|endoftext|>
  int workers = 1;                  // encoding threads
  std::string json_key = "text";    // field read from each .jsonl line
  bool progress = true;             // progress line on stderr for long inputs
};

struct DataPrepareStats {
  int64_t num_documents = 0;
  int64_t num_tokens = 0;
  int64_t num_bytes = 0;  // text bytes read
  double seconds = 0;     // from the first document read to the index written
  int64_t vocab_size = 0;
  // Inputs whose text is empty ("FILE", or "FILE:LINE" in a .jsonl), each warned about: they
  // become documents of no tokens (or only <|endoftext|> with --append-eod).
  std::vector<std::string> empty_documents;
};

struct DataInspectOptions {
  std::string path;           // Megatron prefix (or PREFIX.bin / PREFIX.idx) or llm.c shard
  int64_t document = -1;      // document to print (ids, or text with a tokenizer); -1: none
  std::string tokenizer_dir;  // optional: decode to text and check ids against its vocabulary
  int64_t max_tokens = 4096;  // cap on the tokens of the document that are printed
};

// The files `inputs` name, directories expanded recursively in sorted order. Throws on a missing
// path.
std::vector<std::string> collect_input_files(const std::vector<std::string>& inputs);

// Runs prepare; throws dirmoe::Error on bad input (missing files, tokenizer, empty corpus, ...).
DataPrepareStats prepare_dataset(const DataPrepareOptions& opts);

// The CLI entry points: print a summary to stdout, errors to stderr; return the exit code.
int run_data_prepare(const DataPrepareOptions& opts);
int run_data_inspect(const DataInspectOptions& opts);

}  // namespace dirmoe::data
