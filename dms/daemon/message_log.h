// MessageLog: the broker's durable append-only log. Records go into segment
// files (`<first offset, 20 digits>.log`), each record framed as
//   u32 length | u32 CRC-32C of (offset, payload) | u64 offset | payload
// so a torn or corrupted tail is found on open and cut at the last whole
// record (reported, never read back as garbage), and a record read from the
// wrong place fails its checksum.
//
// Append returns once the record is on disk: concurrent appenders share one
// fdatasync (group commit). Readers see only records below the synced
// point. Thread-safe.
//
//   auto log = MessageLog::Open({.dir = "/var/lib/dmsd/q0"}, &report).value();
//   uint64_t offset = log->Append("payload").value();
//   std::vector<LogRecord> out;
//   log->Read(offset, 100, &out);
#pragma once

#include "formica/internal/duration_histogram.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "formica/internal/dms_placement.h"

namespace formica::dms {

class LogReplication;

struct LogOptions {
  std::string dir;                        // created if missing (required)
  uint64_t segment_bytes = 64ull << 20;   // a new segment begins past this size
  uint32_t max_record_bytes = 16u << 20;  // larger appends are INVALID_ARGUMENT
  bool sync = true;                       // false: no fdatasync (async flush mode)
  // Replicated mode (docs/ha.md): appends and removals go through
  // `replication` (borrowed) under the name `replication_id`, and reach the
  // files only through ApplyAppend / ApplyRemoveBefore on every member. The
  // records are then durable in the group's Raft log, so the files are not
  // synced on each append (Flush does it, before a Raft snapshot).
  LogReplication* replication = nullptr;
  std::string replication_id;
};

// Where a replicated log sends its changes: the broker group's Raft log,
// whose Apply calls the log's ApplyAppend / ApplyRemoveBefore on every
// member, the proposer's included.
class LogReplication {
 public:
  virtual ~LogReplication() = default;
  // Proposes, as leader of `term` (refused in any other), appending
  // `payloads` at offset `first` of log `id`; `done` runs exactly once with
  // the outcome of this entry itself: OK once committed and applied here
  // (ApplyAppend took it), FAILED_PRECONDITION when it was refused or
  // rejected (nothing written), UNAVAILABLE when its outcome is unknown.
  // Must not block; `done` may run before this returns.
  virtual void ProposeAppend(const std::string& id, uint64_t term, uint64_t first,
                             absl::Span<const absl::string_view> payloads,
                             std::function<void(absl::Status)> done) = 0;
  // Removes log `id`'s segments before `offset` on every member, as leader
  // of `term`; returns once that is committed and applied here.
  virtual absl::Status ProposeRemoveBefore(const std::string& id, uint64_t term,
                                           uint64_t offset) = 0;
  // Makes log `id`, holding no record and ending at `expected_end` in the
  // group's log, begin at `next` on every member (ApplyStartAt), as leader
  // of `term`; returns once that is committed and applied here.
  virtual absl::Status ProposeStartAt(const std::string& id, uint64_t term, uint64_t expected_end,
                                      uint64_t next) = 0;
};

// What Open found and did.
struct RecoveryReport {
  uint64_t records = 0;    // whole records kept
  std::string cut_file;    // the segment whose tail was cut, if any
  uint64_t cut_at = 0;     // byte position it was cut at
  uint64_t cut_bytes = 0;  // bytes removed
  std::string cut_reason;  // e.g. "checksum mismatch at offset 41"
};

struct SegmentInfo {
  uint64_t base = 0;  // its first offset
  uint64_t end = 0;   // one past its last
  uint64_t bytes = 0;
  absl::Time last_write;
};

struct LogRecord {
  uint64_t offset = 0;
  std::string payload;
};

class MessageLog {
 public:
  // Opens the log in options.dir, checking every record. A bad tail of the
  // newest segment is cut (see report); damage in an older segment is
  // DATA_LOSS naming the file and position, and nothing is changed.
  static absl::StatusOr<std::unique_ptr<MessageLog>> Open(LogOptions options,
                                                          RecoveryReport* report);
  ~MessageLog();

  // Appends one record and returns its offset once it is durable.
  absl::StatusOr<uint64_t> Append(absl::string_view payload);

  // Append in two steps, so one caller can write to several logs and then
  // wait for all: Write returns the offset (not durable yet), WaitDurable
  // returns once every record up to `offset` is on disk.
  absl::StatusOr<uint64_t> Write(absl::string_view payload);
  // Several records in one write; returns the first one's offset (the
  // others follow it).
  absl::StatusOr<uint64_t> WriteMany(absl::Span<const absl::string_view> payloads);
  absl::Status WaitDurable(uint64_t offset);
  // The same without blocking: `done` runs (on a sync thread, or here if
  // already known) once `offset` is durable, or with the error that stopped
  // the log.
  void WhenDurable(uint64_t offset, std::function<void(absl::Status)> done);

  // Up to `max` records from `from` on, only below the synced point.
  // OUT_OF_RANGE if `from` was removed by retention.
  absl::Status Read(uint64_t from, size_t max, std::vector<LogRecord>* out);

  uint64_t first_offset() const;  // the oldest record kept
  uint64_t synced_end() const;    // one past the last durable record
  // Where the next write lands: one past the last record written, durable
  // or not (replicated: proposed by this leader).
  uint64_t written_end() const;
  uint64_t syncs() const;  // fdatasync calls so far (segment rolls included)

  std::vector<SegmentInfo> Segments() const;

  // Retention: removes whole segments that end at or before `offset`.
  absl::Status RemoveBefore(uint64_t offset);

  // Makes a log that holds no record begin at `next`: its next record lands
  // there, and first_offset() is `next` (a queue taking over another
  // group's queue whose retention removed its start; a topic created again
  // above what was acknowledged), instead of one placeholder per offset
  // before it. Nothing to do when the log already reaches `next`;
  // FAILED_PRECONDITION when it holds records. Replicated: one entry of the
  // group's log (UNAVAILABLE while appends of this log are in flight).
  absl::Status StartAt(uint64_t next);

  // ---- replicated mode (LogOptions.replication) ----
  // Appends and removals are taken only while leading: Lead(term), once
  // every committed change is applied, starts proposing, as leader of
  // `term`, at the group's end of the log; Lead(0) refuses new ones and
  // fails those waiting (UNAVAILABLE). A write is acknowledged only by the
  // outcome of its own entry, never because the log reached its offset. A
  // failed proposal fails every later one until Lead again.
  void Lead(uint64_t term);
  // What the group's log committed, applied on this member. The group's
  // end of the log (applied_end) moves only here: an append that does not
  // begin there is FAILED_PRECONDITION and changes nothing (every member
  // decides the same). One the files already hold (a replay after a
  // restart: the group's end is below the files') is skipped. DATA_LOSS
  // when the files end before the group's end (records are missing here).
  // Readers see the records at once.
  absl::Status ApplyAppend(uint64_t first, absl::Span<const absl::string_view> payloads);
  // After a Raft snapshot is restored: the group's end of this log at the
  // snapshot (the entries after it then apply on top). DATA_LOSS, naming
  // both, when the files end before it.
  absl::Status RestoreEnd(uint64_t end);
  uint64_t applied_end() const;
  absl::Status ApplyRemoveBefore(uint64_t offset);
  // What StartAt's entry does on every member; FAILED_PRECONDITION (nothing
  // changed) when the group's log of it no longer ends at `expected_end`,
  // DATA_LOSS when this member's files hold records there.
  absl::Status ApplyStartAt(uint64_t expected_end, uint64_t next);
  // Makes every record written so far durable (fdatasync of the segments).
  absl::Status Flush();

  class Impl;

 private:
  explicit MessageLog(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// How long each of the logs' background fdatasyncs took, in this process
// (dmsd's metrics).
const DurationHistogram& MessageLogSyncLatency();

}  // namespace formica::dms
