// TensorBoard event files, written without TensorFlow: TFRecord framing with masked CRC-32C, and
// the few protobuf fields of tensorflow/core/util/event.proto and framework/summary.proto that
// scalars need. Rank 0 turns every metrics.jsonl record into one Event of scalar summaries, so
// `tensorboard --logdir RUN_DIR` shows what metrics.jsonl holds (tag scheme: README, TensorBoard).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dirmoe {
namespace tfevents {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
// The TFRecord mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t mask_crc(uint32_t crc);

// One TFRecord: uint64 length, masked CRC-32C of those 8 bytes, the data, masked CRC-32C of it
// (all little-endian).
std::string frame_record(const std::string& data);

struct Scalar {
  std::string tag;
  double value = 0;  // stored as Summary.Value.simple_value, a float
};

// Serialised Event protos.
// The first record of a file: file_version "brain.Event:2", source_metadata.writer "dirmoe".
std::string file_version_event(double wall_time);
// SessionLog{status: START} at `step`: TensorBoard then drops what earlier files hold at or
// after `step` (a restart replaces them).
std::string session_start_event(double wall_time, int64_t step);
// Summary{value: [{tag, simple_value}, ...]} at `step`.
std::string scalars_event(double wall_time, int64_t step, const std::vector<Scalar>& values);

// The numeric (and boolean, as 0/1) fields of one metrics.jsonl record under their tags:
// `eval_<x>` -> `eval/<x>`, any other top-level `<x>` -> `train/<x>` (`step` is the Event's
// step), `layers[l].<x>` -> `layer_<ll>/<x>` (l zero-padded to at least 2 digits; `layer`
// itself omitted). Arrays, strings and nested objects are not scalars and are left out.
std::vector<Scalar> scalars_of_record(const nlohmann::json& rec);

// Seconds since the Unix epoch.
double unix_time();

}  // namespace tfevents

// One event file per (re)start: RUN_DIR/events.out.tfevents.<unix time>.<hostname> (".1", ".2"
// ... appended if that name exists). Each record goes to the file in one write() call as soon as
// it is made; a write that fails is cut back to the last whole record and ends TensorBoard output
// for the run with a warning (training goes on; metrics.jsonl still has everything).
class TensorBoardWriter {
 public:
  // first_step: the first step this (re)start writes (0 for a new run, N + 1 when resumed from
  // step N), recorded as SessionLog START after the file_version record.
  TensorBoardWriter(const std::filesystem::path& run_dir, int64_t first_step);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event with scalars_of_record(rec) at rec["step"]; nothing for a record without scalars.
  void write_record(const nlohmann::json& rec);
  void write_scalars(int64_t step, const std::vector<tfevents::Scalar>& values, double wall_time);

  const std::filesystem::path& path() const { return path_; }
  int64_t bytes() const { return bytes_; }  // file size: every record written whole
  bool ok() const { return fd_ >= 0; }

 private:
  void append(const std::string& event);

  std::filesystem::path path_;
  int fd_ = -1;
  int64_t bytes_ = 0;
};

}  // namespace dirmoe
