// MessageLog on real files: durability across reopen, group commit, a torn
// or corrupted tail cut at the last whole record, damage in an older
// segment refused, retention.
#include "message_log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

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

}  // namespace
}  // namespace formica::dms
