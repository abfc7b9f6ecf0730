// libFuzzer target: Megatron PREFIX.idx + PREFIX.bin from fuzz bytes, either raw or with a valid
// header around fuzzed counts/arrays; then the reader and TrainingData over it. Only
// dirmoe::Error may come out; crashes and sanitizer reports are findings.
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/data/dataset.h"
#include "runtime/data/indexed_dataset.h"
#include "tests/fuzz/fuzz_util.h"

using namespace dirmoe::data;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const std::string prefix = dirmoe::fuzz::scratch_dir() + "/ds";
  const uint8_t mode = data[0];
  std::vector<uint8_t> idx, bin;
  if (mode % 2 == 0) {
    const size_t cut = std::min<size_t>(size - 1, (data[1] | (data[2] << 8)) % size);
    idx.assign(data + 3, data + std::max<size_t>(3, cut));
    if (cut < size) bin.assign(data + std::max<size_t>(3, cut), data + size);
  } else {
    // Valid magic/version; dtype, counts and array contents from the input.
    const uint64_t s = data[1] % 6, d = data[2] % 8;
    const uint8_t dtype = data[3] % 10;
    idx.assign(kMegatronMagic, kMegatronMagic + 9);
    auto put = [&](const void* p, size_t n) {
      idx.insert(idx.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    };
    put(&kMegatronVersion, 8);
    put(&dtype, 1);
    put(&s, 8);
    put(&d, 8);
    size_t at = 4;
    const int64_t item = megatron_dtype_size(dtype) > 0 ? megatron_dtype_size(dtype) : 1;
    int64_t running = 0;
    std::vector<int32_t> lengths(s);
    for (uint64_t i = 0; i < s; ++i) {
      lengths[i] = at < size ? data[at++] % 9 : 1;
      if (at < size && data[at++] == 0xFF) lengths[i] = -lengths[i] - 1;
      put(&lengths[i], 4);
    }
    for (uint64_t i = 0; i < s; ++i) {
      int64_t p = running;
      if (at < size && data[at++] == 0xFE) p += 1;
      put(&p, 8);
      running += static_cast<int64_t>(lengths[i]) * item;
    }
    for (uint64_t i = 0; i < d; ++i) {
      int64_t v = i == 0 ? 0 : static_cast<int64_t>(std::min<uint64_t>(i, s));
      if (i + 1 == d) v = static_cast<int64_t>(s);
      if (at < size && data[at++] == 0xFD) v += 2;
      put(&v, 8);
    }
    if (at < size) bin.assign(data + at, data + size);
  }
  dirmoe::fuzz::write_bytes(prefix + ".idx", idx.data(), idx.size());
  dirmoe::fuzz::write_bytes(prefix + ".bin", bin.data(), bin.size());
  try {
    IndexedDataset ds(prefix);
    std::vector<int32_t> tokens(ds.num_tokens());
    try {
      ds.read_tokens(0, ds.num_tokens(), tokens.data());
    } catch (const dirmoe::Error&) {
    }
    for (int64_t i = 0; i <= ds.num_documents(); ++i) (void)ds.document_index_entry(i);
    try {
      ds.validate_tokens(300);
    } catch (const dirmoe::Error&) {
    }
    for (int64_t seq_len : {1, 3}) {
      try {
        TrainingData td({{{1.0, prefix}}, 0.3}, (mode & 2) ? Split::kValid : Split::kTrain, seq_len,
                        mode, 1 << 20);
        std::vector<int32_t> out(seq_len + 1);
        for (int64_t i = 0; i < std::min<int64_t>(3 * td.num_samples(), 64); ++i) {
          td.sample(i, out.data());
          (void)td.source_of(i);
        }
      } catch (const dirmoe::Error&) {
      }
    }
  } catch (const dirmoe::Error&) {
  }
  return 0;
}
