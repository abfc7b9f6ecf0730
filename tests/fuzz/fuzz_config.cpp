// libFuzzer target: the YAML config loader on arbitrary text, with `--set` overrides taken from the
// input's last lines; a config that loads must survive to_yaml -> parse -> to_yaml unchanged. Only
// dirmoe::Error may come out; crashes and sanitizer reports are findings.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "runtime/config.h"
#include "runtime/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> overrides;
  // Lines after a "---sets---" marker are overrides.
  const std::string marker = "\n---sets---\n";
  if (auto at = text.find(marker); at != std::string::npos) {
    std::string rest = text.substr(at + marker.size());
    text.resize(at);
    size_t start = 0;
    while (start <= rest.size() && overrides.size() < 8) {
      size_t nl = rest.find('\n', start);
      overrides.push_back(
          rest.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  try {
    dirmoe::Config cfg = dirmoe::parse_config(text, overrides, "fuzz.yaml");
    const std::string once = dirmoe::to_yaml(cfg);
    dirmoe::Config again = dirmoe::parse_config(once, {}, "resolved.yaml");
    if (dirmoe::to_yaml(again) != once) std::abort();  // the resolved config must round-trip
  } catch (const dirmoe::Error&) {
  }
  return 0;
}
