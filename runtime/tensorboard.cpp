// TensorBoard event files (see tensorboard.h). Field numbers: Event {wall_time 1 double, step 2
// int64, file_version 3 string, summary 5, session_log 7, source_metadata 10}; Summary {value 1
// repeated}; Summary.Value {tag 1 string, simple_value 2 float}; SessionLog {status 1 enum,
// START = 1}; SourceMetadata {writer 1 string}.
#include "runtime/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace dirmoe {
namespace tfevents {
namespace {

enum Wire { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, int field, Wire wire) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire);
}

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_bytes(std::string& out, int field, const std::string& s) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, s.size());
  out += s;
}

// wall_time and step, the head of every Event. Fields go in field-number order and a zero step
// is left out, as proto3 serialises them, so a decoder's re-encoding gives back the same bytes.
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  uint64_t bits;
  std::memcpy(&bits, &wall_time, 8);
  put_key(e, 1, kFixed64);
  put_le(e, bits, 8);
  if (step != 0) {
    put_key(e, 2, kVarint);
    put_varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> t = [] {
    std::array<uint32_t, 256> r{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      r[i] = c;
    }
    return r;
  }();
  return t;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto& t = crc_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t mask_crc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

std::string frame_record(const std::string& data) {
  std::string r;
  r.reserve(data.size() + 16);
  put_le(r, data.size(), 8);
  put_le(r, mask_crc(crc32c(r.data(), 8)), 4);
  r += data;
  put_le(r, mask_crc(crc32c(data.data(), data.size())), 4);
  return r;
}

std::string file_version_event(double wall_time) {
  std::string e = event_head(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  std::string source;
  put_bytes(source, 1, "dirmoe");
  put_bytes(e, 10, source);
  return e;
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string e = event_head(wall_time, step), log;
  put_key(log, 1, kVarint);
  put_varint(log, 1);  // SessionLog.START
  put_bytes(e, 7, log);
  return e;
}

std::string scalars_event(double wall_time, int64_t step, const std::vector<Scalar>& values) {
  std::string summary, value;
  for (const auto& s : values) {
    value.clear();
    put_bytes(value, 1, s.tag);
    const float f = static_cast<float>(s.value);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    put_key(value, 2, kFixed32);
    put_le(value, bits, 4);
    put_bytes(summary, 1, value);
  }
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::vector<Scalar> scalars_of_record(const nlohmann::json& rec) {
  std::vector<Scalar> out;
  auto scalar = [](const nlohmann::json& v, double* x) {
    if (v.is_boolean())
      *x = v.get<bool>() ? 1.0 : 0.0;
    else if (v.is_number())
      *x = v.get<double>();
    else
      return false;
    return true;
  };
  double x;
  for (const auto& [key, v] : rec.items()) {
    if (key == "step" || !scalar(v, &x)) continue;
    out.push_back({key.rfind("eval_", 0) == 0 ? "eval/" + key.substr(5) : "train/" + key, x});
  }
  auto it = rec.find("layers");
  if (it == rec.end() || !it->is_array()) return out;
  const size_t n = it->size();
  int width = 2;
  for (size_t m = n > 0 ? n - 1 : 0; m >= 100; m /= 10) ++width;
  for (size_t l = 0; l < n; ++l) {
    const auto& layer = (*it)[l];
    if (!layer.is_object()) continue;
    std::string index = std::to_string(l);
    const std::string prefix =
        "layer_" + std::string(std::max<size_t>(width, index.size()) - index.size(), '0') + index +
        "/";
    for (const auto& [key, v] : layer.items())
      if (key != "layer" && scalar(v, &x)) out.push_back({prefix + key, x});
  }
  return out;
}

double unix_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace tfevents

TensorBoardWriter::TensorBoardWriter(const std::filesystem::path& run_dir, int64_t first_step) {
  const double now = tfevents::unix_time();
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
    std::snprintf(host, sizeof host, "localhost");
  for (char* c = host; *c; ++c)
    if (*c == '/') *c = '_';
  char base[320];
  std::snprintf(base, sizeof base, "events.out.tfevents.%010lld.%s",
                static_cast<long long>(std::floor(now)), host);
  for (int i = 0; fd_ < 0; ++i) {
    path_ = run_dir / (i == 0 ? std::string(base) : std::string(base) + "." + std::to_string(i));
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    DIRMOE_CHECK(fd_ >= 0 || errno == EEXIST, "cannot create the TensorBoard event file '",
                 path_.string(), "': ", std::strerror(errno),
                 " (set output.tensorboard=false to run without it)");
  }
  append(tfevents::file_version_event(now));
  append(tfevents::session_start_event(now, first_step));
  DIRMOE_CHECK(ok(), "cannot write the TensorBoard event file '", path_.string(),
               "' (see the warning above)");
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void TensorBoardWriter::write_record(const nlohmann::json& rec) {
  auto it = rec.find("step");
  if (it == rec.end() || !it->is_number_integer()) return;
  std::vector<tfevents::Scalar> values = tfevents::scalars_of_record(rec);
  if (!values.empty()) write_scalars(it->get<int64_t>(), values, tfevents::unix_time());
}

void TensorBoardWriter::write_scalars(int64_t step, const std::vector<tfevents::Scalar>& values,
                                      double wall_time) {
  append(tfevents::scalars_event(wall_time, step, values));
}

void TensorBoardWriter::append(const std::string& event) {
  if (fd_ < 0) return;
  const std::string rec = tfevents::frame_record(event);
  size_t done = 0;
  while (done < rec.size()) {
    ssize_t w = ::write(fd_, rec.data() + done, rec.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : ENOSPC;
      // NOTE: cut back to the last whole record, so readers never meet a partial one.
      const bool cut = ::ftruncate(fd_, static_cast<off_t>(bytes_)) == 0;
      log_warn(
          "tensorboard: cannot write '", path_.string(), "': ", std::strerror(err),
          cut ? "; the file keeps its whole records" : "; the file may end in a partial record",
          " and gets no more (metrics.jsonl goes on)");
      ::close(fd_);
      fd_ = -1;
      return;
    }
    done += static_cast<size_t>(w);
  }
  bytes_ += static_cast<int64_t>(rec.size());
}

}  // namespace dirmoe
