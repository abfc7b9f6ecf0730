// Small file helpers for the data layer: whole-file reads, a read-only memory map, and a buffered
// writer that reports the file name in every error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace dirmoe::data {

// The whole file as bytes; a missing or unreadable file throws an Error naming it.
std::string read_file(const std::string& path);

bool file_exists(const std::string& path);

// Read-only mmap of a whole file (an empty file maps to size 0 and a null data pointer).
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void reset();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Buffered binary writer: write() appends, close() flushes and checks; errors name the file.
class FileWriter {
 public:
  explicit FileWriter(const std::string& path);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, size_t bytes);
  template <class T>
  void write_value(const T& v) {
    write(&v, sizeof(T));
  }
  uint64_t bytes_written() const { return written_; }
  void close();

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
};

}  // namespace dirmoe::data
