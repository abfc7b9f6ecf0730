// libFuzzer target: llm.c token shards from fuzz bytes (raw, or a valid GPT-2 or llama-3 header
// with a fuzzed count), then the shard reader and TrainingData's delimited documents over it.
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/data/dataset.h"
#include "runtime/data/indexed_dataset.h"
#include "runtime/data/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace dirmoe::data;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const std::string path = dirmoe::fuzz::scratch_dir() + "/shard.bin";
  std::vector<uint8_t> file;
  const uint8_t mode = data[0];
  if (mode % 2 == 0) {
    file.assign(data + 1, data + size);
  } else {
    // mode & 2: the llama-3 format (uint32 tokens), else GPT-2's (uint16).
    const bool llama3 = mode & 2;
    const size_t tb = llama3 ? 4 : 2;
    int32_t header[kShardHeaderInts] = {};
    header[0] = llama3 ? kShardMagicLlama3 : kShardMagic;
    header[1] = (mode & 4) ? 2 : (llama3 ? kShardVersionLlama3 : kShardVersion);
    const int32_t body = static_cast<int32_t>((size - 2) / tb);
    header[2] = (mode & 8) ? body + static_cast<int8_t>(data[1]) : body;
    file.resize(sizeof(header));
    std::memcpy(file.data(), header, sizeof(header));
    file.insert(file.end(), data + 2, data + 2 + tb * body);
    // Plant the document delimiter where the input asks for it, so documents get split:
    // <|endoftext|> 50256 (GPT-2) or <|begin_of_text|> 128000 (llama-3), little-endian.
    const uint32_t delimiter = llama3 ? kLlama3BeginOfTextId : 50256;
    for (size_t i = sizeof(header); i + tb <= file.size(); i += tb) {
      if (file[i] == 0xAA) std::memcpy(file.data() + i, &delimiter, tb);
    }
  }
  dirmoe::fuzz::write_bytes(path, file.data(), file.size());
  try {
    TokenShard sh(path);
    std::vector<int32_t> tokens(sh.num_tokens());
    sh.read_tokens(0, sh.num_tokens(), tokens.data());
    (void)shard_document_starts(sh, sh.document_token());
    for (int64_t vocab : {int64_t{50257}, int64_t{65536}, int64_t{128256}}) {
      try {
        TrainingData td({{{1.0, path}}, (mode & 16) ? 0.0 : 0.4},
                        (mode & 32) ? Split::kValid : Split::kTrain, 1 + (mode >> 6), 7, vocab);
        std::vector<int32_t> out(td.seq_len() + 1);
        for (int64_t i = 0; i < std::min<int64_t>(2 * td.num_samples() + 1, 64); ++i) {
          td.sample(i, out.data());
        }
      } catch (const dirmoe::Error&) {
      }
    }
  } catch (const dirmoe::Error&) {
  }
  return 0;
}
