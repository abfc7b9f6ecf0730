// libFuzzer target: llm.c token shards from fuzz bytes (raw, or a valid header with a fuzzed
// count), then the shard reader and TrainingData's EOT-delimited documents over it.
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
    int32_t header[kShardHeaderInts] = {};
    header[0] = kShardMagic;
    header[1] = (mode & 4) ? 2 : kShardVersion;
    const int32_t body = static_cast<int32_t>((size - 2) / 2);
    header[2] = (mode & 8) ? body + static_cast<int8_t>(data[1]) : body;
    file.resize(sizeof(header));
    std::memcpy(file.data(), header, sizeof(header));
    file.insert(file.end(), data + 2, data + 2 + 2 * body);
    // Plant <|endoftext|> where the input asks for it, so documents get split.
    for (size_t i = sizeof(header); i + 1 < file.size(); i += 2) {
      if (file[i] == 0xAA) file[i] = 0x50, file[i + 1] = 0xC4;  // 50256 little-endian
    }
  }
  dirmoe::fuzz::write_bytes(path, file.data(), file.size());
  try {
    TokenShard sh(path);
    std::vector<int32_t> tokens(sh.num_tokens());
    sh.read_tokens(0, sh.num_tokens(), tokens.data());
    (void)shard_document_starts(sh, kGpt2EotId);
    for (int64_t vocab : {int64_t{50257}, int64_t{65536}}) {
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
