#include "message_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "log_segment.h"

namespace formica::dms {
namespace {

// The threads that make the logs' fdatasyncs. Syncs of different files run
// in parallel (several files' syncs cost little more than one on most
// disks); a log is never synced by two threads at once.
class SyncPool {
 public:
  static SyncPool& Get() {
    static SyncPool* pool = new SyncPool(8);  // lives as long as the process
    return *pool;
  }

  void Request(MessageLog::Impl* log) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(log);
  }

  // Returns once `log` is neither waiting for a sync nor being synced.
  void Forget(MessageLog::Impl* log) {
    absl::MutexLock lock(&mu_);
    auto gone = [this, log]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return busy_.count(log) == 0 && std::find(queue_.begin(), queue_.end(), log) == queue_.end();
    };
    mu_.Await(absl::Condition(&gone));
  }

 private:
  explicit SyncPool(int threads) {
    for (int i = 0; i < threads; ++i) std::thread([this] { Loop(); }).detach();
  }
  void Loop();

  absl::Mutex mu_;
  std::deque<MessageLog::Impl*> queue_ ABSL_GUARDED_BY(mu_);
  std::multiset<MessageLog::Impl*> busy_ ABSL_GUARDED_BY(mu_);
};

void RequestSync(MessageLog::Impl* log) { SyncPool::Get().Request(log); }

DurationHistogram& SyncLatency() {
  static DurationHistogram* latency = new DurationHistogram();
  return *latency;
}

}  // namespace

class MessageLog::Impl {
 public:
  using Segment = LogSegment;

  LogOptions options;
  mutable absl::Mutex mu;
  std::vector<Segment> segments ABSL_GUARDED_BY(mu);
  uint64_t written_end ABSL_GUARDED_BY(mu) = 0;
  uint64_t synced ABSL_GUARDED_BY(mu) = 0;
  bool syncing ABSL_GUARDED_BY(mu) = false;
  bool sync_queued ABSL_GUARDED_BY(mu) = false;  // waiting for a pool thread
  uint64_t sync_target ABSL_GUARDED_BY(mu) = 0;  // what the sync in progress covers
  // WhenDurable callers, by the offset they wait for.
  std::multimap<uint64_t, std::function<void(absl::Status)>> async_waiters ABSL_GUARDED_BY(mu);
  uint64_t sync_count ABSL_GUARDED_BY(mu) = 0;
  absl::Status broken ABSL_GUARDED_BY(mu);  // a failed write or sync: no more appends
  // Replicated mode: proposals are made in offset order under propose_mu.
  absl::Mutex propose_mu ABSL_ACQUIRED_BEFORE(mu);
  bool leading ABSL_GUARDED_BY(mu) = false;
  uint64_t term ABSL_GUARDED_BY(mu) = 0;  // the leading term (0: not leading)
  uint64_t proposed_end ABSL_GUARDED_BY(mu) = 0;
  absl::Status fenced ABSL_GUARDED_BY(mu);  // a failed proposal: refuse until Lead again
  // The group's end of this log: where its next append must begin.
  uint64_t applied_end ABSL_GUARDED_BY(mu) = 0;
  // This leadership's records: from epoch_first on; those below acked_end
  // were acknowledged by their own entry's outcome.
  uint64_t epoch_first ABSL_GUARDED_BY(mu) = 0;
  uint64_t acked_end ABSL_GUARDED_BY(mu) = 0;

  ~Impl();

  void CloseAll() {
    absl::MutexLock lock(&mu);
    for (Segment& s : segments) {
      if (s.fd >= 0) ::close(s.fd);
    }
  }

  absl::StatusOr<Segment> Create(uint64_t base) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return LogSegment::Create(options.dir, base);
  }

  absl::Status Open(RecoveryReport* report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::error_code ec;
    std::filesystem::create_directories(options.dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create log directory ", options.dir, ": ", ec.message()));
    }
    std::vector<uint64_t> bases;
    for (const auto& entry : std::filesystem::directory_iterator(options.dir, ec)) {
      std::string name = entry.path().filename().string();
      uint64_t base = 0;
      if (name.size() == 24 && name.substr(20) == ".log" &&
          absl::SimpleAtoi(name.substr(0, 20), &base)) {
        bases.push_back(base);
      }
    }
    std::sort(bases.begin(), bases.end());
    for (size_t i = 0; i < bases.size(); ++i) {
      Segment s;
      s.base = bases[i];
      s.path = absl::StrCat(options.dir, "/", SegmentName(s.base));
      s.fd = ::open(s.path.c_str(), O_RDWR | O_APPEND);
      if (s.fd < 0) return ErrnoError("cannot open segment", s.path);
      if (!segments.empty() && segments.back().end() != s.base) {
        std::string gap =
            absl::StrCat("log ", options.dir, ": ", s.path, " starts at offset ", s.base,
                         " but the segment before it ends at ", segments.back().end());
        ::close(s.fd);
        return absl::DataLossError(gap);
      }
      std::string why;
      uint64_t valid = 0;
      if (absl::Status st = s.Load(options.max_record_bytes, &why, &valid); !st.ok()) {
        ::close(s.fd);
        return st;
      }
      struct stat fs;
      ::fstat(s.fd, &fs);
      uint64_t file_size = static_cast<uint64_t>(fs.st_size);
      s.last_write = absl::FromTimeT(fs.st_mtime);
      if (valid < file_size) {
        if (i + 1 < bases.size()) {
          ::close(s.fd);
          return absl::DataLossError(absl::StrCat(s.path, " is damaged at byte ", valid, " (", why,
                                                  ") and newer segments follow it"));
        }
        // The newest segment's tail: what a crash in the middle of a write
        // leaves. Cut it, durably, and say so.
        if (::ftruncate(s.fd, static_cast<off_t>(valid)) != 0 || ::fdatasync(s.fd) != 0) {
          absl::Status st = ErrnoError("cannot cut the damaged tail of", s.path);
          ::close(s.fd);
          return st;
        }
        report->cut_file = s.path;
        report->cut_at = valid;
        report->cut_bytes = file_size - valid;
        report->cut_reason = why;
      }
      report->records += s.positions.size();
      segments.push_back(std::move(s));
    }
    if (segments.empty()) {
      absl::StatusOr<Segment> first = Create(0);
      if (!first.ok()) return first.status();
      segments.push_back(*std::move(first));
    }
    // What a killed process left may still be only in the page cache: it is
    // made durable before anything is read from it (older segments were
    // synced whole when the log rolled past them).
    if (options.sync) {
      if (::fdatasync(segments.back().fd) != 0)
        return ErrnoError("cannot sync", segments.back().path);
      if (absl::Status st = SyncDir(options.dir); !st.ok()) return st;
    }
    written_end = synced = segments.back().end();
    // Replicated: the group's end comes from the snapshot (RestoreEnd) and
    // the entries after it; a log no snapshot names began empty.
    applied_end = options.replication != nullptr ? 0 : written_end;
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Append(absl::string_view payload) {
    absl::StatusOr<uint64_t> offset = WriteMany(absl::MakeConstSpan(&payload, 1));
    if (!offset.ok()) return offset;
    if (absl::Status st = WaitDurable(*offset); !st.ok()) return st;
    return offset;
  }

  // Appends records in one write (per segment); returns the first's offset.
  absl::StatusOr<uint64_t> WriteMany(absl::Span<const absl::string_view> payloads) {
    for (absl::string_view payload : payloads) {
      if (payload.size() > options.max_record_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("a record of ", payload.size(),
                                                       " bytes is over the limit of ",
                                                       options.max_record_bytes));
      }
    }
    if (payloads.empty()) return absl::InvalidArgumentError("no records to write");
    if (options.replication != nullptr) return Propose(payloads);
    absl::MutexLock lock(&mu);
    if (!broken.ok()) return broken;
    return AppendLocked(payloads);
  }
  // The first record's offset, once proposed (WaitDurable: applied here).
  absl::StatusOr<uint64_t> Propose(absl::Span<const absl::string_view> payloads) {
    absl::MutexLock order(&propose_mu);
    uint64_t first = 0, at_term = 0;
    {
      absl::MutexLock lock(&mu);
      if (absl::Status st = CanProposeLocked(); !st.ok()) return st;
      first = proposed_end;
      proposed_end += payloads.size();
      at_term = term;
    }
    const uint64_t end = first + payloads.size();
    options.replication->ProposeAppend(
        options.replication_id, at_term, first, payloads,
        [this, at_term, end](absl::Status st) { Answered(at_term, end, st); });
    return first;
  }
  // Replicated: whether this member may propose changes of the log now.
  absl::Status CanProposeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!broken.ok()) return broken;
    if (!leading) {
      return absl::UnavailableError(
          "this dmsd is not the leader of its broker group; send to the leader");
    }
    return fenced;
  }
  // The outcome of this leadership's own append entry ending at `end`.
  void Answered(uint64_t at_term, uint64_t end, absl::Status st) {
    absl::MutexLock lock(&mu);
    if (at_term != term || !leading) return;  // its waiters were answered at Lead
    if (st.ok()) {
      acked_end = std::max(acked_end, end);
    } else if (fenced.ok()) {  // rejected: nothing written, a retry goes to the leader
      fenced = absl::IsFailedPrecondition(st) ? absl::UnavailableError(st.message()) : st;
    }
    NotifyLocked();
  }
  // Replicated mode: waiters are answered from a pool thread, never from
  // the Raft thread that applies (their callbacks may propose and wait).
  void NotifyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!async_waiters.empty() && !sync_queued) {
      sync_queued = true;
      RequestSync(this);
    }
  }
  absl::Status ReplicaError() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!broken.ok()) return broken;
    if (!fenced.ok()) return fenced;
    return absl::UnavailableError(
        "this dmsd stopped leading its broker group before the append was applied; its outcome "
        "is unknown: retry with the same dedup key");
  }
  // Answers an earlier leadership's waiters before new proposals reuse offsets.
  void Lead(uint64_t new_term) {
    std::vector<std::function<void(absl::Status)>> ready, failed;
    absl::Status outcome;
    {
      absl::MutexLock order(&propose_mu);
      absl::MutexLock lock(&mu);
      leading = false;
      NotifyReplicated(&ready, &failed, &outcome);
      leading = new_term != 0;
      term = new_term;
      if (leading) {
        proposed_end = epoch_first = acked_end = applied_end;
        fenced = absl::OkStatus();
      }
    }
    for (auto& f : ready) f(absl::OkStatus());
    for (auto& f : failed) f(outcome);
  }
  absl::Status ApplyAppend(uint64_t first, absl::Span<const absl::string_view> payloads) {
    absl::MutexLock lock(&mu);
    if (!broken.ok()) return broken;
    if (first != applied_end) {
      return absl::FailedPreconditionError(
          absl::StrCat("log ", options.replication_id, ": an append at offset ", first,
                       " where the group's log of it ends at ", applied_end,
                       " (proposed by a leader that did not hold the whole log); rejected, "
                       "nothing written"));
    }
    if (applied_end > written_end) {
      return absl::DataLossError(absl::StrCat(
          "log ", options.dir, ": the group's log of it ends at offset ", applied_end,
          " but this member's files end at ", written_end, "; records are missing here"));
    }
    // A replay after a restart: the files may already hold the first records.
    size_t skip = static_cast<size_t>(std::min<uint64_t>(written_end - first, payloads.size()));
    if (skip < payloads.size()) {
      absl::StatusOr<uint64_t> at = AppendLocked(payloads.subspan(skip));
      if (!at.ok()) return at.status();
    }
    applied_end = first + payloads.size();
    synced = written_end;
    NotifyLocked();
    return absl::OkStatus();
  }
  absl::Status RestoreEnd(uint64_t end) {
    absl::MutexLock lock(&mu);
    if (written_end < end) {
      return absl::DataLossError(absl::StrCat("queue log ", options.replication_id, " ends at ",
                                              written_end, ", the snapshot's at ", end));
    }
    applied_end = end;
    return absl::OkStatus();
  }
  absl::Status Flush() {
    absl::MutexLock lock(&mu);
    for (const Segment& s : segments) {
      if (::fdatasync(s.fd) != 0) return ErrnoError("cannot sync", s.path);
    }
    return SyncDir(options.dir);
  }
  absl::StatusOr<uint64_t> AppendLocked(absl::Span<const absl::string_view> payloads)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    uint64_t first = 0;
    size_t i = 0;
    std::string frames;
    while (i < payloads.size()) {
      if (segments.back().size >= options.segment_bytes) {
        // Roll: the old segment is synced whole before the new one is used
        // (in every mode: a new segment durable in the directory after an
        // old one's lost tail would be a gap after a power loss).
        Segment& old = segments.back();
        if (::fdatasync(old.fd) != 0) return Break(ErrnoError("cannot sync", old.path));
        ++sync_count;
        synced = std::max(synced, old.end());
        absl::StatusOr<Segment> next = Create(old.end());
        if (!next.ok()) return next.status();
        segments.push_back(*std::move(next));
      }
      Segment& s = segments.back();
      if (i == 0) first = s.end();
      // Frame what fits in this segment (at least one record).
      frames.clear();
      std::vector<uint64_t> positions;
      uint64_t offset = s.end();
      while (i < payloads.size() &&
             (positions.empty() || s.size + frames.size() < options.segment_bytes)) {
        absl::string_view payload = payloads[i++];
        positions.push_back(s.size + frames.size());
        LogSegment::Frame(offset++, payload, &frames);
      }
      size_t done = 0;
      while (done < frames.size()) {
        ssize_t n = ::write(s.fd, frames.data() + done, frames.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          absl::Status st = ErrnoError("cannot append to", s.path);
          // Take the partial records back; if even that fails, stop appending.
          if (::ftruncate(s.fd, static_cast<off_t>(s.size)) != 0) return Break(st);
          // Records of earlier segments in this call stay (and are returned
          // to no one): the log refuses more rather than leave a gap unknown.
          if (s.end() != first) return Break(st);
          return st;
        }
        done += static_cast<size_t>(n);
      }
      s.positions.insert(s.positions.end(), positions.begin(), positions.end());
      s.size += frames.size();
      written_end = s.end();
      s.last_write = absl::Now();
    }
    return first;
  }

  // Group commit: the syncs are made by a shared pool of threads, so a
  // producer writing to several logs has them synced in parallel, and one
  // fdatasync covers every record written before it started.
  absl::Status WaitDurable(uint64_t offset) {
    absl::MutexLock lock(&mu);
    if (options.replication != nullptr) {
      auto moved = [this, offset]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
        return Acked(offset) || offset < epoch_first || !broken.ok() || !fenced.ok() || !leading;
      };
      mu.Await(absl::Condition(&moved));
      return Acked(offset) ? absl::OkStatus() : ReplicaError();
    }
    if (!options.sync) {
      synced = std::max(synced, written_end);
      return broken;
    }
    while (synced <= offset) {
      if (!broken.ok()) return broken;
      bool covered = syncing && sync_target > offset;
      if (!covered && !sync_queued) {
        sync_queued = true;
        RequestSync(this);
      }
      auto moved = [this, offset]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
        return synced > offset || !broken.ok() ||
               (!sync_queued && !(syncing && sync_target > offset));
      };
      mu.Await(absl::Condition(&moved));
    }
    return absl::OkStatus();
  }

  // Run by a pool thread: one fdatasync covering everything written now.
  void SyncOnce() {
    std::vector<std::function<void(absl::Status)>> done, ready;
    absl::Status outcome;
    {
      absl::MutexLock lock(&mu);
      auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !syncing; };
      mu.Await(absl::Condition(&idle));
      sync_queued = false;
      if (options.replication != nullptr) {
        NotifyReplicated(&ready, &done, &outcome);
      } else {
        SyncLocked();
        outcome = broken;
        // Callers waiting asynchronously: those now durable (all, on failure).
        auto end = outcome.ok() ? async_waiters.lower_bound(synced) : async_waiters.end();
        for (auto it = async_waiters.begin(); it != end; ++it) {
          done.push_back(std::move(it->second));
        }
        async_waiters.erase(async_waiters.begin(), end);
        if (!async_waiters.empty() && !sync_queued) {
          sync_queued = true;  // written after this sync began
          RequestSync(this);
        }
      }
    }
    for (auto& f : ready) f(absl::OkStatus());
    for (auto& f : done) f(outcome);
  }
  // One fdatasync covering everything written now.
  void SyncLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (written_end > synced && broken.ok()) {
      syncing = true;
      sync_target = written_end;
      int fd = segments.back().fd;
      std::string path = segments.back().path;
      mu.Unlock();
      absl::Time started = absl::Now();
      int rc = ::fdatasync(fd);
      SyncLatency().Observe(absl::Now() - started);
      mu.Lock();
      syncing = false;
      ++sync_count;
      if (rc != 0) {
        Break(ErrnoError("cannot sync", path)).IgnoreError();
      } else {
        synced = std::max(synced, sync_target);
      }
    }
  }
  // Replicated: whether `offset` is the latest leadership's and its own
  // entry was acknowledged (never because another entry reached it).
  bool Acked(uint64_t offset) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return offset >= epoch_first && offset < acked_end;
  }
  // Replicated: the waiters whose records are acknowledged; those of an
  // earlier leadership, and all once this one failed, get ReplicaError.
  void NotifyReplicated(std::vector<std::function<void(absl::Status)>>* ready,
                        std::vector<std::function<void(absl::Status)>>* failed,
                        absl::Status* outcome) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    *outcome = ReplicaError();
    const bool over = !broken.ok() || !fenced.ok() || !leading;
    for (auto it = async_waiters.begin(); it != async_waiters.end();) {
      if (Acked(it->first)) {
        ready->push_back(std::move(it->second));
      } else if (over || it->first < epoch_first) {
        failed->push_back(std::move(it->second));
      } else {
        ++it;
        continue;
      }
      it = async_waiters.erase(it);
    }
  }

  void WhenDurable(uint64_t offset, std::function<void(absl::Status)> done) {
    absl::Status now_known;
    {
      absl::MutexLock lock(&mu);
      if (options.replication != nullptr) {
        if (!Acked(offset) && offset >= epoch_first && broken.ok() && fenced.ok() && leading) {
          async_waiters.emplace(offset, std::move(done));
          return;
        }
        if (!Acked(offset)) now_known = ReplicaError();
      } else {
        if (!options.sync) synced = std::max(synced, written_end);
        if (!broken.ok() || synced > offset) {
          now_known = broken;
        } else {
          async_waiters.emplace(offset, std::move(done));
          bool covered = syncing && sync_target > offset;
          if (!covered && !sync_queued) {
            sync_queued = true;
            RequestSync(this);
          }
          return;
        }
      }
    }
    done(now_known);
  }

  // A write or sync failed: what was acknowledged stays, nothing more is
  // taken until a restart checks the files again.
  absl::Status Break(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    broken =
        absl::UnavailableError(absl::StrCat("the log stopped taking appends: ", why.message()));
    return broken;
  }

  absl::Status Read(uint64_t from, size_t max, std::vector<LogRecord>* out) {
    absl::MutexLock lock(&mu);
    uint64_t first = segments.front().base;
    if (from < first) {
      return absl::OutOfRangeError(
          absl::StrCat("offset ", from, " was removed; the log starts at ", first));
    }
    auto seg = std::upper_bound(segments.begin(), segments.end(), from,
                                [](uint64_t o, const Segment& s) { return o < s.base; });
    if (seg == segments.begin()) return absl::OkStatus();
    --seg;
    for (uint64_t off = from; off < synced && out->size() < max;) {
      while (seg != segments.end() && off >= seg->end()) ++seg;
      if (seg == segments.end()) break;
      LogRecord r;
      r.offset = off;
      if (absl::Status st = seg->ReadRecord(off, &r.payload); !st.ok()) return st;
      out->push_back(std::move(r));
      ++off;
    }
    return absl::OkStatus();
  }

  // ---- beginning an empty log further on (StartAt) ----

  absl::Status StartAt(uint64_t next) {
    if (options.replication == nullptr) {
      absl::MutexLock lock(&mu);
      if (!broken.ok()) return broken;
      if (next <= written_end) return absl::OkStatus();
      if (absl::Status st = CheckEmptyLocked(next); !st.ok()) return st;
      return JumpLocked(next);
    }
    // Replicated: one entry, while no append of this log is in flight (the
    // entry names the group's end it expects, so an append applied first
    // has it rejected on every member alike).
    absl::MutexLock order(&propose_mu);
    uint64_t expected = 0, at_term = 0;
    {
      absl::MutexLock lock(&mu);
      if (absl::Status st = CanProposeLocked(); !st.ok()) return st;
      if (next <= applied_end) return absl::OkStatus();
      if (proposed_end != applied_end) {
        return absl::UnavailableError(absl::StrCat(
            "log ", options.replication_id, ": appends are in flight; try again once they apply"));
      }
      if (absl::Status st = CheckEmptyLocked(next); !st.ok()) return st;
      expected = applied_end;
      at_term = term;
    }
    absl::Status st =
        options.replication->ProposeStartAt(options.replication_id, at_term, expected, next);
    absl::MutexLock lock(&mu);
    if (st.ok() && leading && term == at_term) proposed_end = acked_end = applied_end;
    return st;
  }
  // What a StartAt entry of the group's log does on every member: the log,
  // holding no record and ending at `expected` in the group's log, begins
  // at `next`. FAILED_PRECONDITION (nothing changed) when the group's log
  // of it no longer ends at `expected`.
  absl::Status ApplyStartAt(uint64_t expected, uint64_t next) {
    absl::MutexLock lock(&mu);
    if (!broken.ok()) return broken;
    if (applied_end != expected) {
      return absl::FailedPreconditionError(absl::StrCat(
          "log ", options.replication_id, ": a start at offset ", next,
          " proposed where the group's log of it ended at ", expected, ", but it ends at ",
          applied_end, " (an append came first); rejected, nothing changed"));
    }
    // A replay after a restart: the files may begin there (or past it) already.
    if (next > written_end) {
      if (absl::Status st = CheckEmptyLocked(next); !st.ok()) {
        return absl::DataLossError(st.message());
      }
      if (absl::Status st = JumpLocked(next); !st.ok()) return st;
    }
    applied_end = std::max(applied_end, next);
    synced = std::max(synced, written_end);
    return absl::OkStatus();
  }
  absl::Status CheckEmptyLocked(uint64_t next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (segments.size() == 1 && segments.front().positions.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("log ", options.dir, " holds records (offsets ", segments.front().base, " to ",
                     written_end, "); it can begin at offset ", next, " only while it holds none"));
  }
  // Replaces the one empty segment with an empty one at `next`. The old one
  // goes first: a crash between the two leaves no segment, which Open takes
  // as an empty log at 0 (the start is made again), never a gap.
  absl::Status JumpLocked(uint64_t next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !syncing; };
    mu.Await(absl::Condition(&idle));
    Segment& old = segments.front();
    if (::unlink(old.path.c_str()) != 0) return Break(ErrnoError("cannot remove", old.path));
    ::close(old.fd);
    segments.clear();
    absl::Status dir = SyncDir(options.dir);
    absl::StatusOr<Segment> fresh = Create(next);
    if (!fresh.ok()) return Break(fresh.status());
    if (!dir.ok()) return Break(dir);
    segments.push_back(*std::move(fresh));
    written_end = synced = next;
    if (options.replication == nullptr) applied_end = next;
    return absl::OkStatus();
  }

  absl::Status RemoveBefore(uint64_t offset) {
    if (options.replication != nullptr) {
      uint64_t at_term = 0;
      {
        absl::MutexLock lock(&mu);
        if (!leading) {
          return absl::UnavailableError("this dmsd is not the leader of its broker group");
        }
        at_term = term;
      }
      return options.replication->ProposeRemoveBefore(options.replication_id, at_term, offset);
    }
    return ApplyRemoveBefore(offset);
  }
  absl::Status ApplyRemoveBefore(uint64_t offset) {
    absl::MutexLock lock(&mu);
    // Not under a sync in progress (it may use an old segment's descriptor).
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !syncing; };
    mu.Await(absl::Condition(&idle));
    while (segments.size() > 1 && segments.front().end() <= offset) {
      Segment& s = segments.front();
      if (::unlink(s.path.c_str()) != 0) return ErrnoError("cannot remove", s.path);
      ::close(s.fd);
      segments.erase(segments.begin());
    }
    return SyncDir(options.dir);
  }
};

absl::StatusOr<std::unique_ptr<MessageLog>> MessageLog::Open(LogOptions options,
                                                             RecoveryReport* report) {
  if (options.dir.empty()) return absl::InvalidArgumentError("LogOptions.dir is required");
  RecoveryReport ignored;
  if (report == nullptr) report = &ignored;
  *report = RecoveryReport();
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  // Durable in the group's Raft log; Flush syncs the files for a snapshot.
  if (impl->options.replication != nullptr) impl->options.sync = false;
  {
    absl::MutexLock lock(&impl->mu);
    if (absl::Status st = impl->Open(report); !st.ok()) return st;
  }
  return std::unique_ptr<MessageLog>(new MessageLog(std::move(impl)));
}

MessageLog::Impl::~Impl() {
  SyncPool::Get().Forget(this);
  CloseAll();
}

namespace {
void SyncPool::Loop() {
  while (true) {
    MessageLog::Impl* log;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      log = queue_.front();
      queue_.pop_front();
      busy_.insert(log);
    }
    log->SyncOnce();
    absl::MutexLock lock(&mu_);
    busy_.erase(busy_.find(log));
  }
}
}  // namespace

MessageLog::MessageLog(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MessageLog::~MessageLog() = default;
absl::StatusOr<uint64_t> MessageLog::Append(absl::string_view payload) {
  return impl_->Append(payload);
}
absl::Status MessageLog::Read(uint64_t from, size_t max, std::vector<LogRecord>* out) {
  return impl_->Read(from, max, out);
}
uint64_t MessageLog::first_offset() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->segments.front().base;
}
uint64_t MessageLog::synced_end() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->synced;
}
uint64_t MessageLog::written_end() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->options.replication != nullptr ? impl_->proposed_end : impl_->written_end;
}
uint64_t MessageLog::syncs() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->sync_count;
}
absl::Status MessageLog::RemoveBefore(uint64_t offset) { return impl_->RemoveBefore(offset); }
void MessageLog::Lead(uint64_t term) { impl_->Lead(term); }
absl::Status MessageLog::RestoreEnd(uint64_t end) { return impl_->RestoreEnd(end); }
uint64_t MessageLog::applied_end() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->applied_end;
}
absl::Status MessageLog::ApplyAppend(uint64_t first, absl::Span<const absl::string_view> payloads) {
  return impl_->ApplyAppend(first, payloads);
}
absl::Status MessageLog::ApplyRemoveBefore(uint64_t offset) {
  return impl_->ApplyRemoveBefore(offset);
}
absl::Status MessageLog::StartAt(uint64_t next) { return impl_->StartAt(next); }
absl::Status MessageLog::ApplyStartAt(uint64_t expected_end, uint64_t next) {
  return impl_->ApplyStartAt(expected_end, next);
}
absl::Status MessageLog::Flush() { return impl_->Flush(); }
absl::StatusOr<uint64_t> MessageLog::WriteMany(absl::Span<const absl::string_view> payloads) {
  return impl_->WriteMany(payloads);
}
absl::StatusOr<uint64_t> MessageLog::Write(absl::string_view payload) {
  return impl_->WriteMany(absl::MakeConstSpan(&payload, 1));
}
absl::Status MessageLog::WaitDurable(uint64_t offset) { return impl_->WaitDurable(offset); }
void MessageLog::WhenDurable(uint64_t offset, std::function<void(absl::Status)> done) {
  impl_->WhenDurable(offset, std::move(done));
}

std::vector<SegmentInfo> MessageLog::Segments() const {
  absl::MutexLock lock(&impl_->mu);
  std::vector<SegmentInfo> out;
  for (const Impl::Segment& s : impl_->segments) {
    out.push_back(SegmentInfo{s.base, s.end(), s.size, s.last_write});
  }
  return out;
}

const DurationHistogram& MessageLogSyncLatency() { return SyncLatency(); }

}  // namespace formica::dms
