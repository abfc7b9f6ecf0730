// safetensors reader and writer (see safetensors.h).
#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"

namespace dirmoe::safetensors {
namespace {

constexpr uint64_t kMaxHeader = 100u << 20;  // the reference implementation's limit

std::string os_error(int err) { return std::strerror(err); }

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int err = w < 0 ? errno : ENOSPC;
      DIRMOE_FAIL("cannot write '", path, "': ", os_error(err));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void read_at(int fd, void* out, size_t n, uint64_t offset, const std::string& path,
             const std::string& what) {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    DIRMOE_CHECK(r > 0, "'", path, "': ", what, ": file ends early (truncated?)",
                 r < 0 ? ": " + os_error(errno) : std::string());
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string dtype_code(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF64:
      return "F64";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
    case DType::kU16:
      return "U16";
    case DType::kU8:
      return "U8";
  }
  DIRMOE_FAIL("dtype has no safetensors code");
}

DType dtype_from_code(const std::string& code) {
  for (DType t : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16, DType::kI32, DType::kI64,
                  DType::kU16, DType::kU8})
    if (dtype_code(t) == code) return t;
  DIRMOE_FAIL("unsupported safetensors dtype '", code, "'");
}

uint32_t crc32(const void* data, size_t bytes, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < bytes; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void Writer::add(const std::string& name, DType dtype, const Shape& shape, const void* data) {
  DIRMOE_CHECK(name != "__metadata__" && !name.empty(), "invalid tensor name '", name, "'");
  for (const auto& e : entries_) DIRMOE_CHECK(e.name != name, "tensor '", name, "' added twice");
  entries_.push_back({name, dtype, shape, data});
}

void Writer::write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::map<std::string, std::string> meta = metadata_;
  uint64_t off = 0;
  for (const auto& e : entries_) {
    uint64_t bytes = static_cast<uint64_t>(numel(e.shape)) * dtype_size(e.dtype);
    header[e.name] = {
        {"dtype", dtype_code(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + bytes}}};
    char hex[16];
    std::snprintf(hex, sizeof hex, "%08x", crc32(e.data, bytes));
    meta["crc32." + e.name] = hex;
    off += bytes;
  }
  if (!meta.empty()) header["__metadata__"] = meta;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t len = text.size();
  uint8_t len_le[8];
  for (int i = 0; i < 8; ++i) len_le[i] = static_cast<uint8_t>(len >> (8 * i));

  Fd f;
  f.fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DIRMOE_CHECK(f.fd >= 0, "cannot create '", path, "': ", os_error(errno));
  try {
    write_all(f.fd, len_le, 8, path);
    write_all(f.fd, text.data(), text.size(), path);
    for (const auto& e : entries_)
      write_all(f.fd, e.data, static_cast<size_t>(numel(e.shape)) * dtype_size(e.dtype), path);
    if (::fsync(f.fd) != 0 && errno != EINVAL && errno != EROFS)
      DIRMOE_FAIL("cannot fsync '", path, "': ", os_error(errno));
    int fd = f.fd;
    f.fd = -1;
    DIRMOE_CHECK(::close(fd) == 0, "cannot close '", path, "': ", os_error(errno));
  } catch (...) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) ::unlink(path.c_str());
    throw;
  }
}

std::vector<TensorInfo> parse_header(const char* json, size_t header_len, uint64_t file_size,
                                     const std::string& path,
                                     std::map<std::string, std::string>* metadata) {
  DIRMOE_CHECK(header_len <= kMaxHeader, "'", path, "': header length ", header_len,
               " exceeds the limit of ", kMaxHeader, " bytes (not a safetensors file?)");
  DIRMOE_CHECK(file_size >= 8 + header_len, "'", path, "': header of ", header_len,
               " bytes does not fit in a file of ", file_size, " bytes (truncated?)");
  const uint64_t data_size = file_size - 8 - header_len;
  auto h = nlohmann::json::parse(json, json + header_len, nullptr, /*allow_exceptions=*/false);
  DIRMOE_CHECK(h.is_object(), "'", path, "': the header is not a JSON object (corrupted?)");
  std::vector<TensorInfo> out;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      DIRMOE_CHECK(v.is_object(), "'", path, "': __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        DIRMOE_CHECK(m.value().is_string(), "'", path, "': __metadata__ value of '", m.key(),
                     "' is not a string");
        if (metadata) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "'" + path + "': tensor '" + name + "'";
    DIRMOE_CHECK(
        v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
        where, ": needs dtype, shape and data_offsets");
    DIRMOE_CHECK(v["dtype"].is_string(), where, ": dtype is not a string");
    TensorInfo t;
    t.name = name;
    try {
      t.dtype = dtype_from_code(v["dtype"].get<std::string>());
    } catch (const Error&) {
      DIRMOE_FAIL(where, ": unsupported dtype '", v["dtype"].get<std::string>(), "'");
    }
    DIRMOE_CHECK(v["shape"].is_array() && v["shape"].size() <= 8, where,
                 ": shape is not an array of at most 8 dimensions");
    uint64_t n = 1;
    for (const auto& dim : v["shape"]) {
      DIRMOE_CHECK(dim.is_number_unsigned() || (dim.is_number_integer() && dim.get<int64_t>() >= 0),
                   where, ": shape entries must be non-negative integers");
      uint64_t d = dim.get<uint64_t>();
      DIRMOE_CHECK(d == 0 || n <= data_size / d || n == 0, where, ": shape exceeds the file size");
      n *= d;
      t.shape.push_back(static_cast<int64_t>(d));
    }
    const auto& o = v["data_offsets"];
    DIRMOE_CHECK(
        o.is_array() && o.size() == 2 && o[0].is_number_unsigned() && o[1].is_number_unsigned(),
        where, ": data_offsets must be [begin, end] with non-negative integers");
    t.begin = o[0].get<uint64_t>();
    t.end = o[1].get<uint64_t>();
    DIRMOE_CHECK(t.begin <= t.end && t.end <= data_size, where, ": data_offsets [", t.begin, ", ",
                 t.end, ") lie outside the ", data_size, "-byte data section (truncated?)");
    DIRMOE_CHECK(
        n <= std::numeric_limits<uint64_t>::max() / 8 && t.end - t.begin == n * dtype_size(t.dtype),
        where, ": data_offsets span ", t.end - t.begin, " bytes but shape ", shape_str(t.shape),
        " of ", v["dtype"].get<std::string>(), " needs ", n * dtype_size(t.dtype));
    out.push_back(std::move(t));
  }
  // The data section is covered exactly, without holes or overlaps.
  std::vector<const TensorInfo*> by_off;
  for (const auto& t : out) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t at = 0;
  for (const TensorInfo* t : by_off) {
    DIRMOE_CHECK(t->begin == at, "'", path, "': tensor '", t->name, "' starts at byte ", t->begin,
                 " but the previous tensor ends at ", at, " (overlapping or holes)");
    at = t->end;
  }
  DIRMOE_CHECK(at == data_size, "'", path, "': the tensors cover ", at, " of the ", data_size,
               " data bytes (trailing bytes: corrupted?)");
  return out;
}

Reader::Reader(const std::string& path) : path_(path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DIRMOE_CHECK(f.fd >= 0, "cannot open '", path, "': ", os_error(errno));
  struct stat st {};
  DIRMOE_CHECK(::fstat(f.fd, &st) == 0, "cannot stat '", path, "': ", os_error(errno));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  DIRMOE_CHECK(size >= 8, "'", path, "': ", size, " bytes is too short for a safetensors file");
  uint8_t len_le[8];
  read_at(f.fd, len_le, 8, 0, path, "header length");
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(len_le[i]) << (8 * i);
  DIRMOE_CHECK(len <= kMaxHeader && len <= size - 8, "'", path, "': header length ", len,
               " does not fit in a file of ", size, " bytes (truncated or not safetensors?)");
  std::string header(len, '\0');
  read_at(f.fd, header.data(), len, 8, path, "header");
  tensors_ = parse_header(header.data(), len, size, path, &metadata_);
  data_start_ = 8 + len;
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* Reader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void Reader::read(const std::string& name, DType dtype, const Shape& shape, void* out) const {
  const TensorInfo* t = find(name);
  DIRMOE_CHECK(t != nullptr, "'", path_, "': tensor '", name, "' is missing");
  DIRMOE_CHECK(t->dtype == dtype, "'", path_, "': tensor '", name, "' has dtype ",
               dtype_code(t->dtype), ", expected ", dtype_code(dtype));
  DIRMOE_CHECK(t->shape == shape, "'", path_, "': tensor '", name, "' has shape ",
               shape_str(t->shape), ", expected ", shape_str(shape));
  Fd f;
  f.fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  DIRMOE_CHECK(f.fd >= 0, "cannot open '", path_, "': ", os_error(errno));
  const size_t bytes = static_cast<size_t>(t->end - t->begin);
  read_at(f.fd, out, bytes, data_start_ + t->begin, path_, "tensor '" + name + "'");
  auto it = metadata_.find("crc32." + name);
  if (it != metadata_.end()) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "%08x", crc32(out, bytes));
    DIRMOE_CHECK(it->second == hex, "'", path_, "': tensor '", name, "' fails its checksum (crc32 ",
                 hex, ", recorded ", it->second, "): the file is corrupted");
  }
}

}  // namespace dirmoe::safetensors
