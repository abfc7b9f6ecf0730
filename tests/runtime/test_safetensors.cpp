// safetensors: the writer's bytes parsed back by hand against the format (length prefix, JSON
// header, 8-byte alignment, offsets, raw data); a file written by hand read by the reader; and
// every kind of damage refused with the file and tensor named.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/safetensors.h"

#include "tests/common/error_of.h"

namespace dirmoe::safetensors {
namespace {

namespace fs = std::filesystem;

fs::path scratch(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("dirmoe_st_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d / name;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

using test::error_of;

// A file built from the specification alone: header {"a": F32 [2,3], "b": F64 [2]}.
std::string hand_written(const std::vector<float>& a, const std::vector<double>& b,
                         const std::string& extra_meta = "") {
  std::string header = R"({"__metadata__":{"format":"pt")" + extra_meta +
                       R"(},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                       R"("b":{"dtype":"F64","shape":[2],"data_offsets":[24,40]}})";
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  out += header;
  out.append(reinterpret_cast<const char*>(a.data()), 24);
  out.append(reinterpret_cast<const char*>(b.data()), 16);
  return out;
}

TEST(Safetensors, WriterBytesFollowTheFormat) {
  std::vector<float> w = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.125f};
  std::vector<double> v = {1e-300, -4.0};
  Writer wr;
  wr.add("layers.0.w", DType::kF32, {3, 2}, w.data());
  wr.add("v", DType::kF64, {2}, v.data());
  wr.set_metadata("format", "pt");
  fs::path p = scratch("ok.safetensors");
  wr.write(p.string());

  std::string bytes = slurp(p);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u) << "header not padded to 8 bytes";
  EXPECT_EQ(bytes.size(), 8 + n + 24 + 16);
  auto h = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(h["layers.0.w"]["dtype"], "F32");
  EXPECT_EQ(h["layers.0.w"]["shape"], nlohmann::json({3, 2}));
  EXPECT_EQ(h["layers.0.w"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(h["v"]["dtype"], "F64");
  EXPECT_EQ(h["v"]["data_offsets"], nlohmann::json({24, 40}));
  EXPECT_EQ(h["__metadata__"]["format"], "pt");
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, w.data(), 24), 0);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n + 24, v.data(), 16), 0);
  // CRC-32 of "123456789" is 0xCBF43926 (the check value of the IEEE polynomial).
  EXPECT_EQ(crc32("123456789", 9), 0xCBF43926u);
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", crc32(w.data(), 24));
  EXPECT_EQ(h["__metadata__"]["crc32.layers.0.w"], hex);

  Reader r(p.string());
  std::vector<float> w2(6);
  std::vector<double> v2(2);
  r.read("layers.0.w", DType::kF32, {3, 2}, w2.data());
  r.read("v", DType::kF64, {2}, v2.data());
  EXPECT_EQ(w2, w);
  EXPECT_EQ(v2, v);
}

TEST(Safetensors, ReadsAHandWrittenFile) {
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<double> b = {-1, 0.5};
  fs::path p = scratch("hand.safetensors");
  spit(p, hand_written(a, b));  // unpadded header, no checksums: still valid
  Reader r(p.string());
  ASSERT_EQ(r.tensors().size(), 2u);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  std::vector<float> a2(6);
  std::vector<double> b2(2);
  r.read("a", DType::kF32, {2, 3}, a2.data());
  r.read("b", DType::kF64, {2}, b2.data());
  EXPECT_EQ(a2, a);
  EXPECT_EQ(b2, b);
}

TEST(Safetensors, DamageIsRefusedNamingFileAndTensor) {
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<double> b = {-1, 0.5};
  fs::path p = scratch("bad.safetensors");
  const std::string good = hand_written(a, b);

  spit(p, good.substr(0, good.size() - 3));  // truncated data
  std::string e = error_of([&] { Reader r(p.string()); });
  EXPECT_NE(e.find(p.string()), std::string::npos) << e;
  EXPECT_NE(e.find("tensor 'b'"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  spit(p, good.substr(0, 20));  // truncated header
  e = error_of([&] { Reader r(p.string()); });
  EXPECT_NE(e.find("does not fit"), std::string::npos) << e;

  spit(p, good + "xx");  // trailing bytes
  e = error_of([&] { Reader r(p.string()); });
  EXPECT_NE(e.find("trailing"), std::string::npos) << e;

  std::string overlap = good;
  overlap.replace(overlap.find("[24,40]"), 7, "[16,32]");
  overlap.replace(overlap.find("[0,24]"), 6, "[0,24]");
  spit(p, overlap);
  e = error_of([&] { Reader r(p.string()); });
  EXPECT_NE(e.find("overlapping"), std::string::npos) << e;

  std::string badjson = good;
  badjson[8] = '#';  // the opening brace
  spit(p, badjson);
  e = error_of([&] { Reader r(p.string()); });
  EXPECT_NE(e.find("not a JSON object"), std::string::npos) << e;

  std::string badshape = good;
  badshape.replace(badshape.find("[2,3]"), 5, "[3,3]");
  spit(p, badshape);
  e = error_of([&] { Reader r(p.string()); });
  EXPECT_NE(e.find("tensor 'a'"), std::string::npos) << e;
  EXPECT_NE(e.find("needs 36"), std::string::npos) << e;

  // A flipped data byte under a recorded checksum.
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", crc32(a.data(), 24));
  std::string sum = hand_written(a, b, std::string(R"(,"crc32.a":")") + hex + "\"");
  sum[sum.size() - 20] ^= 0x40;
  spit(p, sum);
  Reader r(p.string());
  std::vector<float> out(6);
  e = error_of([&] { r.read("a", DType::kF32, {2, 3}, out.data()); });
  EXPECT_NE(e.find("tensor 'a' fails its checksum"), std::string::npos) << e;
  EXPECT_NE(e.find(p.string()), std::string::npos) << e;

  // The expected shape, dtype or name differ from the file's.
  spit(p, good);
  Reader g(p.string());
  e = error_of([&] { g.read("a", DType::kF32, {3, 2}, out.data()); });
  EXPECT_NE(e.find("tensor 'a' has shape [2,3], expected [3,2]"), std::string::npos) << e;
  e = error_of([&] { g.read("a", DType::kF64, {2, 3}, out.data()); });
  EXPECT_NE(e.find("has dtype F32, expected F64"), std::string::npos) << e;
  e = error_of([&] { g.read("c", DType::kF32, {2, 3}, out.data()); });
  EXPECT_NE(e.find("tensor 'c' is missing"), std::string::npos) << e;
}

TEST(Safetensors, FullDeviceIsAClearWriteError) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  std::vector<float> w(4096, 1.0f);
  Writer wr;
  wr.add("w", DType::kF32, {4096}, w.data());
  std::string e = error_of([&] { wr.write("/dev/full"); });
  EXPECT_NE(e.find("cannot write '/dev/full'"), std::string::npos) << e;
  EXPECT_NE(e.find(std::strerror(ENOSPC)), std::string::npos) << e;
}

}  // namespace
}  // namespace dirmoe::safetensors
