// dirmoe_data_tool: a stand-alone driver over the data commands with the same options as
// `dirmoe data prepare|inspect` (used by the JS identity test, the benchmark and the corpus script
// where the dirmoe binary is not built), plus `encode` to print the ids of files.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "runtime/core/error.h"
#include "runtime/data/commands.h"
#include "runtime/data/file_util.h"
#include "runtime/data/tokenizer.h"

int main(int argc, char** argv) {
  using namespace dirmoe::data;
  CLI::App app{"dirmoe data pipeline driver"};
  app.require_subcommand(1);
  int exit_code = 0;

  DataPrepareOptions prep;
  bool no_progress = false;
  CLI::App* p = app.add_subcommand("prepare", "tokenize text into PREFIX.bin + PREFIX.idx");
  p->add_option("--input", prep.inputs, "text/.jsonl files or directories")->required();
  p->add_option("--tokenizer", prep.tokenizer_dir, "directory with encoder.json + vocab.bpe")
      ->required();
  p->add_option("--output", prep.output_prefix, "output prefix")->required();
  p->add_flag("--append-eod", prep.append_eod, "end each document with <|endoftext|>");
  p->add_option("--workers", prep.workers, "encoding threads (0: one per core)");
  p->add_option("--json-key", prep.json_key, "field read from .jsonl lines");
  p->add_flag("--no-progress", no_progress, "no progress line on stderr");
  p->callback([&] {
    prep.progress = !no_progress;
    exit_code = run_data_prepare(prep);
  });

  DataInspectOptions insp;
  CLI::App* i = app.add_subcommand("inspect", "print what a dataset or shard holds");
  i->add_option("path", insp.path, "Megatron prefix or llm.c shard")->required();
  i->add_option("--document,--sample", insp.document, "document to print");
  i->add_option("--tokenizer", insp.tokenizer_dir, "decode with this tokenizer");
  i->add_option("--max-tokens", insp.max_tokens, "cap on printed tokens");
  i->callback([&] { exit_code = run_data_inspect(insp); });

  std::string enc_dir;
  std::vector<std::string> enc_files;
  CLI::App* e = app.add_subcommand("encode", "print the ids of each file, one line per file");
  e->add_option("--tokenizer", enc_dir, "directory with encoder.json + vocab.bpe")->required();
  e->add_option("files", enc_files, "files")->required();
  e->callback([&] {
    try {
      Gpt2Tokenizer tok(enc_dir);
      for (const auto& f : enc_files) {
        std::vector<int32_t> ids = tok.encode(read_file(f));
        for (size_t k = 0; k < ids.size(); ++k) std::printf(k ? " %d" : "%d", ids[k]);
        std::printf("\n");
      }
    } catch (const dirmoe::Error& err) {
      std::fprintf(stderr, "error: %s\n", err.what());
      exit_code = 1;
    }
  });

  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
