// safetensors files (the Hugging Face format): an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {string: string}} padded with
// spaces to a multiple of 8 bytes, then the tensor bytes. The writer fsyncs before it returns; the
// reader checks every header field against the file size before any byte is read, and each tensor
// against the CRC-32 that dirmoe stores in the metadata ("crc32.<name>") when present.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/tensor.h"

namespace dirmoe::safetensors {

// "F32", "F64", "BF16", "F16", "I32", "I64", "U16", "U8"; throws for anything else.
std::string dtype_code(DType t);
DType dtype_from_code(const std::string& code);  // throws on an unknown code

uint32_t crc32(const void* data, size_t bytes, uint32_t crc = 0);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range in the data section
};

// Collects tensors (pointers must stay valid until write()) and writes them in insertion order.
class Writer {
 public:
  void add(const std::string& name, DType dtype, const Shape& shape, const void* data);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Writes `path` (created or truncated) and fsyncs it. Throws naming the path and the OS error
  // (ENOSPC, EFBIG, EACCES, ...); a partly written file is removed.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    const void* data;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Parses and validates a header (the bytes after the 8-byte length) for a file of `file_size`
// bytes whose header is `header_len` bytes long. Errors name `path`, and the tensor when one is at
// fault. Exposed for the fuzzer.
std::vector<TensorInfo> parse_header(const char* json, size_t header_len, uint64_t file_size,
                                     const std::string& path,
                                     std::map<std::string, std::string>* metadata);

// An opened, validated safetensors file.
class Reader {
 public:
  explicit Reader(const std::string& path);
  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  // Reads tensor `name` into out, which holds numel(shape) elements of dtype. Refuses (naming the
  // file and the tensor) a missing tensor, another dtype or shape, a short read and a CRC mismatch.
  void read(const std::string& name, DType dtype, const Shape& shape, void* out) const;

 private:
  std::string path_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace dirmoe::safetensors
