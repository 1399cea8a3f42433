// A broker group member's disk fills (docs/ha.md, "Failure cases"): three
// real dmsd members, each with its storage.data_dir and raft.data_dir on a
// tmpfs of its own (a private mount namespace of the test process, which
// the members inherit), a producer with dedup keys and a consumer group.
// A filler file takes a follower's last free byte while they run.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "replicated_fixture.h"

namespace formica::dms::testing {
namespace {

constexpr char kTmpfsSize[] = "size=256m";
constexpr char kSmallTmpfsSize[] = "size=6m";

class DiskFullDms : public ReplicatedDms {
 protected:
  void TearDown() override {
    StopProducing();
    ReplicatedDms::TearDown();
    for (const std::string& m : mounts_) ::umount2(m.c_str(), MNT_DETACH);
  }

  // The members' configs with each member's storage.data_dir and
  // raft.data_dir under disk<N>, a tmpfs of its own; member `small_raft`'s
  // raft.data_dir on raft-disk<N> instead, a tmpfs with no room for a log
  // segment of libraft's (8 MiB). The mounts are this thread's (and its
  // children's) only: the test process leaves the host's mount namespace
  // first. Running as root is required, not optional.
  void WriteConfigsOnTmpfs(int small_raft = -1) {
    WriteConfigs({"orders:4"});
    ASSERT_EQ(::unshare(CLONE_NEWNS), 0)
        << "this test mounts a tmpfs per member and must run as root (CAP_SYS_ADMIN): "
        << "unshare(CLONE_NEWNS): " << std::strerror(errno);
    ASSERT_EQ(::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0)
        << "making the mounts private: " << std::strerror(errno);
    for (Member& m : members_) {
      std::string disk = dir_.File(absl::StrCat("disk", m.id));
      std::filesystem::create_directories(disk);
      ASSERT_EQ(::mount("tmpfs", disk.c_str(), "tmpfs", 0, kTmpfsSize), 0)
          << "mounting a tmpfs on " << disk << ": " << std::strerror(errno);
      mounts_.push_back(disk);
      std::ifstream in(m.config_path);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      for (const char* what : {"dmsd", "raft"}) {
        const std::string from = absl::StrCat("data_dir: ", dir_.File(absl::StrCat(what, m.id)));
        ASSERT_NE(text.find(from + "\n"), std::string::npos) << text;
        std::string to = absl::StrCat(disk, "/", what);
        if (m.id == small_raft + 1 && std::string(what) == "raft") {
          to = RaftDisk(small_raft);
          std::filesystem::create_directories(to);
          ASSERT_EQ(::mount("tmpfs", to.c_str(), "tmpfs", 0, kSmallTmpfsSize), 0)
              << "mounting a tmpfs on " << to << ": " << std::strerror(errno);
          mounts_.push_back(to);
        }
        text.replace(text.find(from + "\n"), from.size(), absl::StrCat("data_dir: ", to));
      }
      std::ofstream(m.config_path, std::ios::trunc) << text;
    }
  }

  std::string Disk(int i) const { return dir_.File(absl::StrCat("disk", members_[i].id)); }
  std::string RaftDisk(int i) const { return dir_.File(absl::StrCat("raft-disk", members_[i].id)); }

  // Starts ProduceLoop on a thread (stopped and joined by StopProducing,
  // or at the end of the test). Paced: a member restarted at the end
  // replays its stores' write-ahead logs, which takes RocksDB long when
  // they are large.
  void StartProducing(History* h) {
    producer_thread_ = std::thread(
        [this, h] { ProduceLoop(h, &stop_, 1000000, /*app_retry=*/true, absl::Milliseconds(5)); });
  }
  void StopProducing() {
    stop_ = true;
    if (producer_thread_.joinable()) producer_thread_.join();
  }

  // `member` takes part in commits again: with `other` killed, `leader`
  // commits only with it, so 100 more sends are acknowledged. Then it holds
  // every acknowledged message: with the leader gone and `other` back, it
  // is the only member whose log can win an election (`other` missed
  // entries), and a new consumer group reads everything from it.
  void CheckCaughtUp(History* h, int member, int leader, int other, absl::Time since) {
    Kill9(other);
    WaitAcked(h, h->Acked() + 100);
    std::printf("100 acknowledged with member %d as the majority, %lld ms after space returned\n",
                members_[member].id,
                static_cast<long long>(absl::ToInt64Milliseconds(absl::Now() - since)));
    StopProducing();
    Kill9(leader);
    StartMember(other);
    int next = WaitForLeader(absl::Seconds(20), leader);
    ASSERT_EQ(next, member) << Logs();
    consumer_.reset();
    {
      absl::MutexLock lock(&h->mu);
      h->delivered.clear();
      h->confirmed.clear();
    }
    StartClients(h, "after-the-disk-filled");
    CheckHistory(h);
  }

  // The first line of `output` holding `needle` ("" when none does).
  static std::string LineWith(const std::string& output, const std::string& needle) {
    size_t at = output.find(needle);
    if (at == std::string::npos) return "";
    size_t begin = output.rfind('\n', at);
    begin = begin == std::string::npos ? 0 : begin + 1;
    return output.substr(begin, output.find('\n', at) - begin);
  }

  // Writes `disk`/filler until the file system refuses (ENOSPC), or until
  // `leave` bytes are free; returns the bytes written.
  static uint64_t Fill(const std::string& disk, uint64_t leave = 0) {
    // Never the machine's own disk (a tmpfs that failed to mount leaves a
    // plain directory behind).
    struct statfs fs {};
    if (::statfs(disk.c_str(), &fs) != 0 || fs.f_type != TMPFS_MAGIC) {
      ADD_FAILURE() << disk << " is not a tmpfs: not filling it";
      return 0;
    }
    int fd = ::open((disk + "/filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    if (fd < 0) return 0;
    uint64_t written = 0;
    for (size_t chunk : {size_t{1} << 20, size_t{4096}, size_t{1}}) {
      std::string bytes(chunk, 'f');
      while (leave == 0 || FreeBytes(disk) >= leave + chunk) {
        ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n <= 0) {
          EXPECT_EQ(errno, ENOSPC) << std::strerror(errno);
          break;
        }
        written += static_cast<uint64_t>(n);
      }
    }
    ::close(fd);
    return written;
  }

  static uint64_t FreeBytes(const std::string& disk) {
    struct statvfs s {};
    if (::statvfs(disk.c_str(), &s) != 0) return 0;
    return static_cast<uint64_t>(s.f_bavail) * s.f_frsize;
  }

  std::vector<std::string> mounts_;
  std::atomic<bool> stop_{false};
  std::thread producer_thread_;
};

TEST_F(DiskFullDms, AFollowersFullDiskKeepsTheGroupServingAndItCatchesUpWhenSpaceReturns) {
  ASSERT_NO_FATAL_FAILURE(WriteConfigsOnTmpfs());
  int leader = StartGroupWithClients();
  ASSERT_GE(leader, 0) << Logs();
  const int full = (leader + 1) % 3, other = (leader + 2) % 3;
  History& h = h_;
  StartProducing(&h);
  WaitAcked(&h, 200);

  // The follower's disk fills under steady produce and consume.
  uint64_t filler = Fill(Disk(full));
  std::printf("filled %s with %llu bytes (%llu free)\n", Disk(full).c_str(),
              static_cast<unsigned long long>(filler),
              static_cast<unsigned long long>(FreeBytes(Disk(full))));
  ASSERT_EQ(FreeBytes(Disk(full)), 0u);
  Member& f = members_[full];
  // It says what is wrong, naming the disk.
  ASSERT_TRUE(f.process->WaitForOutput("No space left on device", absl::Seconds(30)))
      << f.process->Output();
  EXPECT_NE(LineWith(f.process->Output(), "No space left on device").find(Disk(full)),
            std::string::npos)
      << f.process->Output();

  // The leader and the other follower go on acknowledging.
  const size_t at_full = h.Acked();
  absl::SleepFor(absl::Seconds(10));
  const size_t during_full = h.Acked() - at_full;
  std::printf("acknowledged while the follower's disk was full: %zu in 10 s\n", during_full);
  EXPECT_GE(during_full, 100u) << Logs();
  EXPECT_TRUE(f.process->running()) << f.process->Output();

  // Space returns: the follower catches up by itself.
  ASSERT_TRUE(std::filesystem::remove(Disk(full) + "/filler"));
  absl::Time freed = absl::Now();
  EXPECT_TRUE(f.process->WaitForOutput("after its disk was full for", absl::Seconds(30)))
      << f.process->Output();
  CheckCaughtUp(&h, full, leader, other, freed);
}

TEST_F(DiskFullDms, AFollowerStoppedWhileItsDiskIsFullAppliesTheEntryAtItsNextStart) {
  ASSERT_NO_FATAL_FAILURE(WriteConfigsOnTmpfs());
  int leader = StartGroupWithClients();
  ASSERT_GE(leader, 0) << Logs();
  const int full = (leader + 1) % 3, other = (leader + 2) % 3;
  History& h = h_;
  StartProducing(&h);
  WaitAcked(&h, 200);
  Fill(Disk(full));
  Member& f = members_[full];
  ASSERT_TRUE(f.process->WaitForOutput("No space left on device", absl::Seconds(30)))
      << f.process->Output();
  // SIGTERM while it waits: it stops at once, saying what is not applied.
  f.process->Signal(SIGTERM);
  EXPECT_EQ(f.process->Wait(absl::Seconds(10)), 1) << f.process->Output();
  EXPECT_NE(f.process->Output().find("applies it again from its log"), std::string::npos)
      << f.process->Output();
  WaitAcked(&h, h.Acked() + 100);  // the two others go on
  ASSERT_TRUE(std::filesystem::remove(Disk(full) + "/filler"));
  absl::Time freed = absl::Now();
  StartMember(full);
  CheckCaughtUp(&h, full, leader, other, freed);
}

TEST_F(DiskFullDms, AMemberWhoseRaftLogCannotBeWrittenStopsAndCatchesUpWhenRestarted) {
  const int small = 2;
  ASSERT_NO_FATAL_FAILURE(WriteConfigsOnTmpfs(small));
  StartAll();
  int leader = WaitForLeader(absl::Seconds(15), small);
  ASSERT_GE(leader, 0) << Logs();
  // Its first append fails: it exits (1) naming its raft.data_dir.
  Member& s = members_[small];
  EXPECT_EQ(s.process->Wait(absl::Seconds(30)), 1) << s.process->Output();
  EXPECT_NE(s.process->Output().find("writing its log failed"), std::string::npos)
      << s.process->Output();
  EXPECT_NE(LineWith(s.process->Output(), "writing its log failed").find(RaftDisk(small)),
            std::string::npos)
      << s.process->Output();
  EXPECT_NE(s.process->Output().find("No space left on device"), std::string::npos)
      << s.process->Output();
  // The two others go on.
  History& h = h_;
  StartClients(&h);
  StartProducing(&h);
  WaitAcked(&h, 300);

  // Space returns (the tmpfs grows); started again, as its supervisor
  // would, it catches up.
  ASSERT_EQ(::mount("tmpfs", RaftDisk(small).c_str(), "tmpfs", MS_REMOUNT, kTmpfsSize), 0)
      << std::strerror(errno);
  absl::Time freed = absl::Now();
  StartMember(small);
  CheckCaughtUp(&h, small, leader, 3 - leader - small, freed);
}

TEST_F(DiskFullDms, ALeadersFullDiskRefusesProduceAndTheGroupGoesOn) {
  ASSERT_NO_FATAL_FAILURE(WriteConfigsOnTmpfs());
  int leader = StartGroupWithClients();
  ASSERT_GE(leader, 0) << Logs();
  History& h = h_;
  std::atomic<bool> stop{false};
  ProduceLoop(&h, &stop, 200);
  ASSERT_EQ(h.Acked(), 200u);

  // Over storage.disk_full_ratio (95%): the leader refuses produce, as a
  // single dmsd does, before a write of its stores can fail.
  Fill(Disk(leader), /*leave=*/2 << 20);
  OutgoingMessage m;
  m.body = "sent-while-full";
  m.dedup_key = m.body;
  absl::StatusOr<SendReceipt> r;
  absl::Time end = absl::Now() + absl::Seconds(15);
  while (absl::Now() < end && (r = producer_->Send(kTopic, m)).ok()) {
    absl::MutexLock lock(&h.mu);
    h.acked.insert(m.body);
  }
  ASSERT_FALSE(r.ok()) << "produce still acknowledged with the leader's disk full";
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_NE(r.status().message().find("storage.disk_full_ratio"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find(Disk(leader)), std::string::npos) << r.status();
  // It goes on leading (consumers are served), and nothing stops.
  absl::SleepFor(absl::Seconds(2));
  EXPECT_TRUE(Answers(leader).ok()) << Logs();
  for (Member& member : members_) EXPECT_TRUE(member.process->running()) << Logs();

  // Space returns: produce resumes.
  ASSERT_TRUE(std::filesystem::remove(Disk(leader) + "/filler"));
  ProduceLoop(&h, &stop, 300);
  ASSERT_GE(h.Acked(), 300u);
  EXPECT_EQ(WaitForLeader(absl::Seconds(5)), leader);
  CheckHistory(&h);
}

}  // namespace
}  // namespace formica::dms::testing
