// LogSegment: one segment file of a MessageLog (message_log.h), named by
// its first offset (`<offset, 20 digits>.log`), each record framed as
//   u32 length | u32 CRC-32C of (offset, payload) | u64 offset | payload
// Creating, checking on open, framing and reading records; the log keeps
// the segments, their order and what is durable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica::dms {

struct LogSegment {
  static constexpr size_t kHeader = 16;  // length, crc, offset

  uint64_t base = 0;
  std::string path;
  int fd = -1;
  uint64_t size = 0;
  std::vector<uint64_t> positions;  // byte position of each record
  absl::Time last_write;            // its newest record's write (at open: the file's mtime)
  uint64_t end() const { return base + positions.size(); }

  // A new, empty segment in `dir` beginning at `base`, durable in the
  // directory.
  static absl::StatusOr<LogSegment> Create(const std::string& dir, uint64_t base);
  // Reads the (opened) file, checking each record; `valid` is where the
  // whole records end and `why` says what stopped them short of the file's
  // end, if anything.
  absl::Status Load(uint32_t max_record_bytes, std::string* why, uint64_t* valid);
  // Appends the frame of record `offset` to `frames`.
  static void Frame(uint64_t offset, absl::string_view payload, std::string* frames);
  // Record `offset` of this segment; DATA_LOSS when it fails its checksum.
  absl::Status ReadRecord(uint64_t offset, std::string* payload) const;
};

std::string SegmentName(uint64_t base);
absl::Status SyncDir(const std::string& dir);
// INTERNAL: "<what> <path>: <strerror(errno)>".
absl::Status ErrnoError(absl::string_view what, const std::string& path);

}  // namespace formica::dms
