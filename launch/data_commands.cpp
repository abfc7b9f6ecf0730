// `dirmoe data prepare|inspect`: CLI11 registration over the data pipeline's command functions.
#include <CLI/CLI.hpp>
#include <memory>

#include "launch/commands.h"
#include "runtime/data/commands.h"

namespace dirmoe {

void register_data_commands(CLI::App& app, int* exit_code) {
  auto* data = app.add_subcommand("data", "prepare and inspect tokenized datasets");
  data->require_subcommand(1);

  auto prep = std::make_shared<data::DataPrepareOptions>();
  auto* p = data->add_subcommand("prepare", "tokenize text (files, dirs, .jsonl) into PREFIX.bin/.idx");
  p->add_option("--input", prep->inputs, "text files, .jsonl files or directories")->required();
  p->add_option("--tokenizer", prep->tokenizer_dir, "directory with encoder.json and vocab.bpe")
      ->required();
  p->add_option("--output", prep->output_prefix, "output prefix (writes PREFIX.bin, PREFIX.idx)")
      ->required();
  p->add_flag("--append-eod", prep->append_eod, "end every document with <|endoftext|>");
  p->add_option("--workers", prep->workers, "encoding threads")->check(CLI::PositiveNumber);
  p->add_option("--json-key", prep->json_key, "field of each .jsonl line to read");
  p->callback([prep, exit_code] { *exit_code = data::run_data_prepare(*prep); });

  auto insp = std::make_shared<data::DataInspectOptions>();
  auto* i = data->add_subcommand("inspect", "print a dataset's header and counts, decode a document");
  i->add_option("path", insp->path, "Megatron prefix (or .bin/.idx) or llm.c shard")->required();
  i->add_option("--sample,--document", insp->document, "document to print");
  i->add_option("--tokenizer", insp->tokenizer_dir, "decode to text with this tokenizer");
  i->add_option("--max-tokens", insp->max_tokens, "cap on printed tokens");
  i->callback([insp, exit_code] { *exit_code = data::run_data_inspect(*insp); });
}

}  // namespace dirmoe
