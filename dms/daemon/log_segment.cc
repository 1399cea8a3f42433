#include "log_segment.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "formica/internal/dms_placement.h"

namespace formica::dms {
namespace {

void PutU32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
void PutU64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint32_t RecordCrc(uint64_t offset, absl::string_view payload) {
  char off[8];
  PutU64(off, offset);
  return Crc32c(payload, Crc32c(absl::string_view(off, 8)));
}

}  // namespace

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

std::string SegmentName(uint64_t base) { return absl::StrFormat("%020u.log", base); }

absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return ErrnoError("cannot open directory", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : ErrnoError("cannot sync directory", dir);
}

absl::StatusOr<LogSegment> LogSegment::Create(const std::string& dir, uint64_t base) {
  LogSegment s;
  s.base = base;
  s.last_write = absl::Now();
  s.path = absl::StrCat(dir, "/", SegmentName(base));
  s.fd = ::open(s.path.c_str(), O_RDWR | O_CREAT | O_APPEND, 0644);
  if (s.fd < 0) return ErrnoError("cannot create segment", s.path);
  if (absl::Status st = SyncDir(dir); !st.ok()) {
    ::close(s.fd);
    return st;
  }
  return s;
}

absl::Status LogSegment::Load(uint32_t max_record_bytes, std::string* why, uint64_t* valid) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoError("cannot stat", path);
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::pread(fd, data.data() + got, data.size() - got, static_cast<off_t>(got));
    if (n < 0) return ErrnoError("cannot read", path);
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  data.resize(got);
  uint64_t pos = 0;
  why->clear();
  while (pos < data.size()) {
    uint64_t expected = base + positions.size();
    if (data.size() - pos < kHeader) {
      *why = absl::StrCat("a torn record header at offset ", expected);
      break;
    }
    uint32_t length = GetU32(&data[pos]);
    uint32_t crc = GetU32(&data[pos + 4]);
    uint64_t offset = GetU64(&data[pos + 8]);
    if (length > max_record_bytes) {
      *why = absl::StrCat("an impossible record length ", length, " at offset ", expected);
      break;
    }
    if (data.size() - pos - kHeader < length) {
      *why = absl::StrCat("a torn record at offset ", expected);
      break;
    }
    absl::string_view payload(&data[pos + kHeader], length);
    if (offset != expected || RecordCrc(offset, payload) != crc) {
      *why = absl::StrCat("a checksum mismatch at offset ", expected);
      break;
    }
    positions.push_back(pos);
    pos += kHeader + length;
  }
  *valid = pos;
  size = pos;
  return absl::OkStatus();
}

void LogSegment::Frame(uint64_t offset, absl::string_view payload, std::string* frames) {
  size_t at = frames->size();
  frames->resize(at + kHeader + payload.size());
  char* f = &(*frames)[at];
  PutU32(f, static_cast<uint32_t>(payload.size()));
  PutU32(f + 4, RecordCrc(offset, payload));
  PutU64(f + 8, offset);
  std::memcpy(f + kHeader, payload.data(), payload.size());
}

absl::Status LogSegment::ReadRecord(uint64_t offset, std::string* payload) const {
  uint64_t pos = positions[offset - base];
  char header[kHeader];
  if (::pread(fd, header, kHeader, static_cast<off_t>(pos)) != kHeader) {
    return ErrnoError("cannot read", path);
  }
  uint32_t length = GetU32(header);
  payload->resize(length);
  if (length > 0 && ::pread(fd, payload->data(), length, static_cast<off_t>(pos + kHeader)) !=
                        static_cast<ssize_t>(length)) {
    return ErrnoError("cannot read", path);
  }
  if (GetU64(header + 8) != offset || RecordCrc(offset, *payload) != GetU32(header + 4)) {
    return absl::DataLossError(
        absl::StrCat(path, ": the record at offset ", offset, " fails its checksum"));
  }
  return absl::OkStatus();
}

}  // namespace formica::dms
