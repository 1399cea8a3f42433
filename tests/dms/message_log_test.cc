// MessageLog on real files: durability across reopen, group commit, a torn
// or corrupted tail cut at the last whole record, damage in an older
// segment refused, retention.
#include "message_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "process.h"

namespace formica::dms {
namespace {

using formica::testing::TempDir;

std::string Payload(uint64_t i) {
  return "message-" + std::to_string(i) + std::string(i % 50, 'x');
}

std::unique_ptr<MessageLog> OpenLog(const std::string& dir, RecoveryReport* report = nullptr,
                                    uint64_t segment_bytes = 64ull << 20) {
  LogOptions o;
  o.dir = dir;
  o.segment_bytes = segment_bytes;
  auto log = MessageLog::Open(o, report);
  EXPECT_TRUE(log.ok()) << log.status();
  return log.ok() ? std::move(*log) : nullptr;
}

void ExpectRecords(MessageLog& log, uint64_t from, uint64_t to) {
  std::vector<LogRecord> out;
  ASSERT_TRUE(log.Read(from, to - from + 10, &out).ok());
  ASSERT_EQ(out.size(), to - from);
  for (uint64_t i = from; i < to; ++i) {
    EXPECT_EQ(out[i - from].offset, i);
    EXPECT_EQ(out[i - from].payload, Payload(i));
  }
}

std::vector<std::string> Segments(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(Crc32c, KnownValues) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);  // the standard check value
  // RFC 3720 (iSCSI) test vectors: 32 bytes of zeros, of ones, ascending.
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  // Continuing from a previous value equals one pass, at every split.
  std::string text = "formica keeps every acknowledged message, byte for byte";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    EXPECT_EQ(Crc32c(text.substr(cut), Crc32c(text.substr(0, cut))), Crc32c(text)) << cut;
  }
}

TEST(MessageLog, AppendedRecordsSurviveReopen) {
  TempDir dir;
  {
    auto log = OpenLog(dir.path());
    for (uint64_t i = 0; i < 100; ++i) {
      auto off = log->Append(Payload(i));
      ASSERT_TRUE(off.ok());
      EXPECT_EQ(*off, i);
    }
    EXPECT_EQ(log->synced_end(), 100u);
    ExpectRecords(*log, 0, 100);
  }
  RecoveryReport report;
  auto log = OpenLog(dir.path(), &report);
  EXPECT_EQ(report.records, 100u);
  EXPECT_TRUE(report.cut_file.empty());
  ExpectRecords(*log, 0, 100);
  EXPECT_EQ(*log->Append(Payload(100)), 100u);
}

TEST(MessageLog, ConcurrentAppendersShareSyncs) {
  TempDir dir;
  auto log = OpenLog(dir.path());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) failures += !log->Append("x").ok();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(log->synced_end(), 1600u);
  EXPECT_LT(log->syncs(), 1600u) << "group commit: fewer syncs than appends";
}

TEST(MessageLog, ATornTailIsCutAtTheLastWholeRecord) {
  TempDir dir;
  {
    auto log = OpenLog(dir.path());
    for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(log->Append(Payload(i)).ok());
  }
  std::string seg = Segments(dir.path()).back();
  uint64_t whole = std::filesystem::file_size(seg);
  {
    // What a crash in the middle of a write leaves: half a record.
    std::ofstream out(seg, std::ios::app | std::ios::binary);
    out.write("\x40\x00\x00\x00\x12\x34", 6);
  }
  RecoveryReport report;
  auto log = OpenLog(dir.path(), &report);
  EXPECT_EQ(report.records, 10u);
  EXPECT_EQ(report.cut_file, seg);
  EXPECT_EQ(report.cut_at, whole);
  EXPECT_EQ(report.cut_bytes, 6u);
  EXPECT_EQ(report.cut_reason, "a torn record header at offset 10");
  EXPECT_EQ(std::filesystem::file_size(seg), whole);
  ExpectRecords(*log, 0, 10);
  EXPECT_EQ(*log->Append(Payload(10)), 10u) << "appends continue after the cut";
}

TEST(MessageLog, ACorruptedLastRecordIsCutNotDelivered) {
  TempDir dir;
  {
    auto log = OpenLog(dir.path());
    for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(log->Append(Payload(i)).ok());
  }
  std::string seg = Segments(dir.path()).back();
  uint64_t size = std::filesystem::file_size(seg);
  {
    // Flip a byte in the last record's payload.
    int fd = ::open(seg.c_str(), O_RDWR);
    char c;
    ASSERT_EQ(::pread(fd, &c, 1, static_cast<off_t>(size - 3)), 1);
    c ^= 0x5a;
    ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(size - 3)), 1);
    ::close(fd);
  }
  RecoveryReport report;
  auto log = OpenLog(dir.path(), &report);
  EXPECT_EQ(report.records, 9u);
  EXPECT_EQ(report.cut_reason, "a checksum mismatch at offset 9");
  ExpectRecords(*log, 0, 9);
  EXPECT_EQ(log->synced_end(), 9u);
}

TEST(MessageLog, DamageInAnOlderSegmentIsRefusedAndNothingChanges) {
  TempDir dir;
  {
    auto log = OpenLog(dir.path(), nullptr, /*segment_bytes=*/512);
    for (uint64_t i = 0; i < 60; ++i) ASSERT_TRUE(log->Append(Payload(i)).ok());
  }
  std::vector<std::string> segs = Segments(dir.path());
  ASSERT_GE(segs.size(), 3u) << "small segments roll";
  uint64_t size = std::filesystem::file_size(segs[0]);
  {
    int fd = ::open(segs[0].c_str(), O_RDWR);
    char c = 0x7f;
    ASSERT_EQ(::pwrite(fd, &c, 1, 20), 1);
    ::close(fd);
  }
  LogOptions o;
  o.dir = dir.path();
  o.segment_bytes = 512;
  auto log = MessageLog::Open(o, nullptr);
  EXPECT_EQ(log.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(log.status().message().find(segs[0]), absl::string_view::npos) << log.status();
  EXPECT_NE(log.status().message().find("newer segments follow it"), absl::string_view::npos);
  EXPECT_EQ(std::filesystem::file_size(segs[0]), size) << "an older segment is never cut";
}

TEST(MessageLog, SegmentsRollAndRetentionRemovesWholeOldOnes) {
  TempDir dir;
  auto log = OpenLog(dir.path(), nullptr, /*segment_bytes=*/512);
  for (uint64_t i = 0; i < 60; ++i) ASSERT_TRUE(log->Append(Payload(i)).ok());
  size_t before = Segments(dir.path()).size();
  ASSERT_TRUE(log->RemoveBefore(30).ok());
  EXPECT_LT(Segments(dir.path()).size(), before);
  uint64_t first = log->first_offset();
  EXPECT_GT(first, 0u);
  EXPECT_LE(first, 30u);
  std::vector<LogRecord> out;
  EXPECT_EQ(log->Read(0, 10, &out).code(), absl::StatusCode::kOutOfRange);
  ExpectRecords(*log, first, 60);
  log.reset();
  RecoveryReport report;
  auto again = OpenLog(dir.path(), &report, 512);
  EXPECT_EQ(again->first_offset(), first);
  ExpectRecords(*again, first, 60);
}

TEST(MessageLog, BadInputIsRefused) {
  TempDir dir;
  LogOptions o;
  o.dir = dir.path();
  o.max_record_bytes = 100;
  auto log = MessageLog::Open(o, nullptr);
  ASSERT_TRUE(log.ok());
  auto big = (*log)->Append(std::string(101, 'x'));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*log)->synced_end(), 0u) << "nothing was written";
  EXPECT_EQ(MessageLog::Open(LogOptions{}, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- replicated mode, over a fake group log -------------------------------

// Keeps the proposals; the test decides when and in what order the group's
// log applies them, as BrokerGroup's Apply does: ApplyAppend on the log,
// then the proposer hears its own entry's outcome.
class HeldReplication : public LogReplication {
 public:
  struct Proposal {
    uint64_t term = 0;
    uint64_t first = 0;
    std::vector<std::string> payloads;
    std::function<void(absl::Status)> done;
  };
  void ProposeAppend(const std::string& /*id*/, uint64_t term, uint64_t first,
                     absl::Span<const absl::string_view> payloads,
                     std::function<void(absl::Status)> done) override {
    absl::MutexLock lock(&mu_);
    held_.push_back({term, first, {payloads.begin(), payloads.end()}, std::move(done)});
  }
  absl::Status ProposeRemoveBefore(const std::string&, uint64_t, uint64_t) override {
    return absl::UnimplementedError("not in these tests");
  }
  // Applied at once on `start_log` (the group's log taking it), as BrokerGroup does.
  absl::Status ProposeStartAt(const std::string&, uint64_t, uint64_t expected_end,
                              uint64_t next) override {
    ++starts;
    return start_log->ApplyStartAt(expected_end, next);
  }
  MessageLog* start_log = nullptr;
  int starts = 0;
  Proposal Take() {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(held_.empty());
    Proposal p = std::move(held_.front());
    held_.erase(held_.begin());
    return p;
  }
  // Applies `p` to `log` and answers its proposer with the outcome.
  static absl::Status Apply(MessageLog& log, Proposal& p) {
    std::vector<absl::string_view> views(p.payloads.begin(), p.payloads.end());
    absl::Status st = log.ApplyAppend(p.first, views);
    p.done(st);
    return st;
  }

 private:
  absl::Mutex mu_;
  std::vector<Proposal> held_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<MessageLog> OpenReplicated(const std::string& dir, LogReplication* r) {
  LogOptions o;
  o.dir = dir;
  o.replication = r;
  o.replication_id = "orders/0";
  auto log = MessageLog::Open(o, nullptr);
  EXPECT_TRUE(log.ok()) << log.status();
  return log.ok() ? std::move(*log) : nullptr;
}

std::vector<absl::string_view> Views(const std::vector<std::string>& v) {
  return {v.begin(), v.end()};
}

TEST(ReplicatedMessageLog, AnAppendIsAcknowledgedByItsOwnEntryOnly) {
  TempDir dir;
  HeldReplication group;
  auto log = OpenReplicated(dir.File("q"), &group);
  ASSERT_NE(log, nullptr);
  log->Lead(1);
  absl::StatusOr<uint64_t> mine = log->Write("mine");
  ASSERT_TRUE(mine.ok()) << mine.status();
  ASSERT_EQ(*mine, 0u);
  absl::Mutex mu;
  std::optional<absl::Status> heard;
  log->WhenDurable(*mine, [&](absl::Status st) {
    absl::MutexLock lock(&mu);
    heard = st;
  });
  // Another leader's entry fills offset 0 first (this one was deposed and
  // does not know yet): that is not this write's acknowledgement.
  std::vector<std::string> theirs = {"theirs-0", "theirs-1"};
  ASSERT_TRUE(log->ApplyAppend(0, Views(theirs)).ok());
  absl::SleepFor(absl::Milliseconds(100));
  {
    absl::MutexLock lock(&mu);
    EXPECT_FALSE(heard.has_value()) << "acknowledged by another entry: " << *heard;
  }
  // Then its own entry applies: it no longer begins at the log's end.
  HeldReplication::Proposal p = group.Take();
  absl::Status applied = HeldReplication::Apply(*log, p);
  EXPECT_TRUE(absl::IsFailedPrecondition(applied)) << applied;
  EXPECT_FALSE(log->WaitDurable(*mine).ok());
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(
      +[](std::optional<absl::Status>* h) { return h->has_value(); }, &heard));
  EXPECT_FALSE(heard->ok());
  // The log holds the other leader's records only, once each.
  std::vector<LogRecord> out;
  ASSERT_TRUE(log->Read(0, 10, &out).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].payload, "theirs-0");
  EXPECT_EQ(out[1].payload, "theirs-1");
  EXPECT_EQ(log->applied_end(), 2u);
}

TEST(ReplicatedMessageLog, AStaleLeadersAppendIsRejectedNotSkippedAsAReplay) {
  TempDir dir;
  HeldReplication group;
  auto log = OpenReplicated(dir.File("q"), &group);
  ASSERT_NE(log, nullptr);
  // Leading, this member proposes at 0; its entry is delayed while another
  // leader appends 0..9; it leads again (later term) and its engines, built
  // earlier, still propose at 0.
  log->Lead(1);
  ASSERT_TRUE(log->Write("lost?").ok());
  std::vector<std::string> others;
  for (int i = 0; i < 10; ++i) others.push_back("other-" + std::to_string(i));
  ASSERT_TRUE(log->ApplyAppend(0, Views(others)).ok());
  HeldReplication::Proposal stale = group.Take();
  absl::Status st = HeldReplication::Apply(*log, stale);
  EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
  EXPECT_FALSE(log->WaitDurable(0).ok()) << "a rejected append was acknowledged";
  // A gap is rejected the same way, and changes nothing.
  std::vector<std::string> gap = {"gap"};
  EXPECT_TRUE(absl::IsFailedPrecondition(log->ApplyAppend(12, Views(gap))));
  EXPECT_EQ(log->applied_end(), 10u);
  // Leading again starts at the group's end; a write is acknowledged once
  // its own entry is applied.
  log->Lead(3);
  absl::StatusOr<uint64_t> next = log->Write("kept");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, 10u);
  HeldReplication::Proposal p = group.Take();
  EXPECT_EQ(p.term, 3u);
  ASSERT_TRUE(HeldReplication::Apply(*log, p).ok());
  EXPECT_TRUE(log->WaitDurable(*next).ok());
  std::vector<LogRecord> out;
  ASSERT_TRUE(log->Read(0, 20, &out).ok());
  ASSERT_EQ(out.size(), 11u);
  EXPECT_EQ(out[10].payload, "kept");
}

TEST(ReplicatedMessageLog, AReplayAfterARestartIsRecognisedFromTheSnapshotsEnd) {
  TempDir dir;
  HeldReplication group;
  std::vector<std::string> first = {"a", "b", "c"}, second = {"d", "e"};
  {
    auto log = OpenReplicated(dir.File("q"), &group);
    ASSERT_NE(log, nullptr);
    ASSERT_TRUE(log->ApplyAppend(0, Views(first)).ok());
    ASSERT_TRUE(log->ApplyAppend(3, Views(second)).ok());
    ASSERT_TRUE(log->Flush().ok());
  }
  auto log = OpenReplicated(dir.File("q"), &group);
  ASSERT_NE(log, nullptr);
  // The snapshot was taken after the first entry; the second applies again.
  ASSERT_TRUE(log->RestoreEnd(3).ok());
  ASSERT_TRUE(log->ApplyAppend(3, Views(second)).ok());
  EXPECT_EQ(log->applied_end(), 5u);
  std::vector<LogRecord> out;
  ASSERT_TRUE(log->Read(0, 10, &out).ok());
  ASSERT_EQ(out.size(), 5u) << "a replay was written twice";
  // A snapshot past what the files hold: records are missing here.
  absl::Status st = log->RestoreEnd(9);
  EXPECT_TRUE(absl::IsDataLoss(st)) << st;
  EXPECT_NE(st.message().find("ends at 5"), absl::string_view::npos) << st;
}

TEST(ReplicatedMessageLog, EverySegmentIsSyncedWhenTheLogRollsPastIt) {
  // Replicated, the records are not synced per append; a segment left
  // behind is, once, before the next one is used (a power loss must not
  // leave a newer segment after an older one's lost tail).
  TempDir dir;
  HeldReplication group;
  LogOptions o;
  o.dir = dir.File("q");
  o.segment_bytes = 256;
  o.replication = &group;
  o.replication_id = "orders/0";
  auto log = MessageLog::Open(o, nullptr);
  ASSERT_TRUE(log.ok()) << log.status();
  std::vector<std::string> batch(8, std::string(100, 'x'));
  uint64_t at = 0;
  for (int i = 0; i < 4; ++i, at += batch.size()) {
    ASSERT_TRUE((*log)->ApplyAppend(at, Views(batch)).ok());
  }
  const size_t segments = (*log)->Segments().size();
  ASSERT_GE(segments, 4u);
  EXPECT_EQ((*log)->syncs(), segments - 1);
}

TEST(ReplicatedMessageLog, WaitersOfALeadershipThatEndedFail) {
  TempDir dir;
  HeldReplication group;
  auto log = OpenReplicated(dir.File("q"), &group);
  ASSERT_NE(log, nullptr);
  log->Lead(1);
  // One acknowledged before the leadership ends stays acknowledged.
  absl::StatusOr<uint64_t> done = log->Write("w");
  ASSERT_TRUE(done.ok());
  HeldReplication::Proposal first = group.Take();
  ASSERT_TRUE(HeldReplication::Apply(*log, first).ok());
  absl::StatusOr<uint64_t> at = log->Write("x");
  ASSERT_TRUE(at.ok());
  std::thread deposed([&] { log->Lead(0); });
  absl::Status st = log->WaitDurable(*at);
  deposed.join();
  EXPECT_TRUE(absl::IsUnavailable(st)) << st;
  EXPECT_TRUE(log->WaitDurable(*done).ok());
  // Its entry commits later under the next leadership: the old waiter was
  // answered "unknown", never OK by offsets.
  HeldReplication::Proposal p = group.Take();
  EXPECT_TRUE(HeldReplication::Apply(*log, p).ok());
  EXPECT_EQ(log->Write("y").status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace formica::dms

namespace formica::dms {
namespace {

std::vector<std::string> Payloads(const std::vector<LogRecord>& records) {
  std::vector<std::string> out;
  for (const LogRecord& r : records) out.push_back(r.payload);
  return out;
}

// A queue taken over from another group whose retention removed its start:
// the empty log begins there in one step, not one placeholder per offset.
TEST(MessageLogStartAt, AnEmptyLogBeginsFurtherOnAndKeepsItAcrossARestart) {
  TempDir dir;
  constexpr uint64_t kFirst = 5'000'000'000;
  {
    LogOptions o;
    o.dir = dir.File("q");
    auto log = MessageLog::Open(o, nullptr);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE((*log)->StartAt(kFirst).ok());
    EXPECT_EQ((*log)->first_offset(), kFirst);
    EXPECT_EQ((*log)->written_end(), kFirst);
    absl::StatusOr<uint64_t> at = (*log)->Append("first kept");
    ASSERT_TRUE(at.ok()) << at.status();
    EXPECT_EQ(*at, kFirst);
    ASSERT_EQ((*log)->Segments().size(), 1u);
    EXPECT_EQ((*log)->Segments()[0].bytes, 16u + 10u) << "no placeholders were written";
    std::vector<LogRecord> out;
    EXPECT_TRUE(absl::IsOutOfRange((*log)->Read(0, 1, &out))) << "offsets before it do not exist";
    EXPECT_TRUE((*log)->StartAt(kFirst - 1).ok()) << "already past it: nothing to do";
    absl::Status st = (*log)->StartAt(kFirst + 100);
    EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
    EXPECT_NE(st.message().find("holds records"), absl::string_view::npos) << st;
    EXPECT_EQ((*log)->written_end(), kFirst + 1) << "a refused start changed the log";
  }
  LogOptions o;
  o.dir = dir.File("q");
  auto log = MessageLog::Open(o, nullptr);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ((*log)->first_offset(), kFirst);
  std::vector<LogRecord> out;
  ASSERT_TRUE((*log)->Read(kFirst, 10, &out).ok());
  EXPECT_EQ(Payloads(out), (std::vector<std::string>{"first kept"}));
  absl::StatusOr<uint64_t> next = (*log)->Append("next");
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, kFirst + 1);
}

TEST(MessageLogStartAt, AReplicatedStartIsOneEntryAppliedOnEveryMemberAndReplayedOnce) {
  TempDir dir;
  HeldReplication group;
  auto leader = OpenReplicated(dir.File("leader"), &group);
  auto follower = OpenReplicated(dir.File("follower"), &group);
  ASSERT_NE(leader, nullptr);
  ASSERT_NE(follower, nullptr);
  group.start_log = leader.get();
  leader->Lead(1);
  ASSERT_TRUE(leader->StartAt(1000).ok());
  EXPECT_EQ(group.starts, 1);
  EXPECT_EQ(leader->applied_end(), 1000u);
  EXPECT_EQ(leader->first_offset(), 1000u);
  // The follower applies the same entry; then both take the appends after it.
  ASSERT_TRUE(follower->ApplyStartAt(0, 1000).ok());
  EXPECT_EQ(follower->first_offset(), 1000u);
  absl::StatusOr<uint64_t> at = leader->Write("after");
  ASSERT_TRUE(at.ok()) << at.status();
  EXPECT_EQ(*at, 1000u);
  HeldReplication::Proposal p = group.Take();
  EXPECT_EQ(p.first, 1000u);
  ASSERT_TRUE(follower->ApplyAppend(p.first, Views(p.payloads)).ok());
  ASSERT_TRUE(HeldReplication::Apply(*leader, p).ok());
  EXPECT_TRUE(leader->WaitDurable(*at).ok());
  // A start proposed where the group's log ended earlier is rejected alike
  // on every member, and changes nothing.
  absl::Status stale = follower->ApplyStartAt(0, 5000);
  EXPECT_TRUE(absl::IsFailedPrecondition(stale)) << stale;
  EXPECT_EQ(follower->first_offset(), 1000u);
  EXPECT_EQ(follower->applied_end(), 1001u);
  // A log holding records is not started anew by its leader.
  absl::Status full = leader->StartAt(9000);
  EXPECT_TRUE(absl::IsFailedPrecondition(full)) << full;
  EXPECT_EQ(group.starts, 1);
  ASSERT_TRUE(follower->Flush().ok());
  follower.reset();
  // A restart replays the group's log from before the start: the start and
  // the append find the files there already.
  auto again = OpenReplicated(dir.File("follower"), &group);
  ASSERT_NE(again, nullptr);
  ASSERT_TRUE(again->ApplyStartAt(0, 1000).ok());
  ASSERT_TRUE(again->ApplyAppend(1000, Views(p.payloads)).ok());
  std::vector<LogRecord> out;
  ASSERT_TRUE(again->Read(1000, 10, &out).ok());
  EXPECT_EQ(Payloads(out), (std::vector<std::string>{"after"})) << "the replay wrote twice";
}

}  // namespace
}  // namespace formica::dms
