// libFuzzer target: the checkpoint reader (safetensors) on arbitrary files, raw, as a valid length
// prefix around a fuzzed JSON header, or as a header alone; every tensor the header admits is read
// (checksums and bounds included). Only dirmoe::Error may come out; crashes and sanitizer reports
// are findings.
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (data[0] % 4 == 3) {  // the header parser alone, without file I/O (faster)
    try {
      std::map<std::string, std::string> meta;
      dirmoe::safetensors::parse_header(reinterpret_cast<const char*>(data + 1), size - 1,
                                        8 + (size - 1) + data[0], "fuzz", &meta);
    } catch (const dirmoe::Error&) {
    }
    return 0;
  }
  const std::string path = dirmoe::fuzz::scratch_dir() + "/t.safetensors";
  std::vector<uint8_t> file;
  if (data[0] % 2 == 0) {
    file.assign(data + 1, data + size);
  } else {
    // A length prefix that covers the first part of the input as the header.
    const size_t rest = size - 1;
    const uint64_t len = rest >= 2 ? (data[1] | (data[2] << 8)) % (rest + 1) : rest;
    for (int i = 0; i < 8; ++i) file.push_back(static_cast<uint8_t>(len >> (8 * i)));
    file.insert(file.end(), data + 1, data + size);
  }
  dirmoe::fuzz::write_bytes(path, file.data(), file.size());
  try {
    dirmoe::safetensors::Reader r(path);
    for (const auto& t : r.tensors()) {
      if (t.end - t.begin > (1u << 20)) continue;
      std::vector<uint8_t> out(t.end - t.begin + 1);
      r.read(t.name, t.dtype, t.shape, out.data());
    }
  } catch (const dirmoe::Error&) {
  }
  return 0;
}
