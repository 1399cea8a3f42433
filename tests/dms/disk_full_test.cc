// A broker group member's disk fills (docs/ha.md, "Failure cases"): three
// real dmsd members, each with its storage.data_dir and raft.data_dir on a
// tmpfs of its own (a private mount namespace of the test process, which
// the members inherit), a producer with dedup keys and a consumer group.
// A filler file takes a follower's last free byte while they run.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
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

class DiskFullDms : public ReplicatedDms {
 protected:
  void TearDown() override {
    ReplicatedDms::TearDown();
    for (const std::string& m : mounts_) ::umount2(m.c_str(), MNT_DETACH);
  }

  // The members' configs with each member's storage.data_dir and
  // raft.data_dir under disk<N>, a tmpfs of its own. The mounts are this
  // thread's (and its children's) only: the test process leaves the host's
  // mount namespace first. Running as root is required, not optional.
  void WriteConfigsOnTmpfs() {
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
        text.replace(text.find(from + "\n"), from.size(),
                     absl::StrCat("data_dir: ", disk, "/", what));
      }
      std::ofstream(m.config_path, std::ios::trunc) << text;
    }
  }

  std::string Disk(int i) const { return dir_.File(absl::StrCat("disk", members_[i].id)); }

  // Writes `disk`/filler until the file system refuses (ENOSPC); returns
  // the bytes written.
  static uint64_t Fill(const std::string& disk) {
    int fd = ::open((disk + "/filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    if (fd < 0) return 0;
    uint64_t written = 0;
    for (size_t chunk : {size_t{1} << 20, size_t{4096}, size_t{1}}) {
      std::string bytes(chunk, 'f');
      while (true) {
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
};

TEST_F(DiskFullDms, AFollowersFullDiskKeepsTheGroupServingAndItCatchesUpWhenSpaceReturns) {
  WriteConfigsOnTmpfs();
  StartAll();
  int leader = WaitForLeader(absl::Seconds(15));
  ASSERT_GE(leader, 0) << Logs();
  const int full = (leader + 1) % 3, other = (leader + 2) % 3;
  History& h = h_;
  StartClients(&h);
  std::atomic<bool> stop{false};
  // Paced: a member restarted at the end replays its stores' write-ahead
  // logs, which takes RocksDB long when they are large.
  std::thread producer(
      [&] { ProduceLoop(&h, &stop, 1000000, /*app_retry=*/true, absl::Milliseconds(5)); });
  struct Join {
    std::atomic<bool>* stop;
    std::thread* t;
    ~Join() {
      stop->store(true);
      if (t->joinable()) t->join();
    }
  } join{&stop, &producer};
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
  EXPECT_NE(f.process->Output().find(Disk(full)), std::string::npos) << f.process->Output();

  // The leader and the other follower go on acknowledging.
  const size_t at_full = h.Acked();
  absl::SleepFor(absl::Seconds(10));
  const size_t during_full = h.Acked() - at_full;
  std::printf("acknowledged while the follower's disk was full: %zu in 10 s\n", during_full);
  EXPECT_GE(during_full, 100u) << Logs();
  EXPECT_TRUE(f.process->running()) << f.process->Output();

  // Space returns: the follower catches up by itself. With the other
  // follower killed, the leader commits only with it.
  ASSERT_TRUE(std::filesystem::remove(Disk(full) + "/filler"));
  absl::Time freed = absl::Now();
  EXPECT_TRUE(f.process->WaitForOutput("after its disk was full for", absl::Seconds(30)))
      << f.process->Output();
  Kill9(other);
  const size_t at_free = h.Acked();
  WaitAcked(&h, at_free + 100);
  std::printf("space returned: 100 acknowledged with the follower as the majority in %lld ms\n",
              static_cast<long long>(absl::ToInt64Milliseconds(absl::Now() - freed)));
  stop = true;
  producer.join();

  // It holds every acknowledged message: with the leader gone it is the
  // only member whose log can win an election (the other missed entries),
  // and a new consumer group reads everything from it.
  Kill9(leader);
  StartMember(other);
  int next = WaitForLeader(absl::Seconds(20), leader);
  ASSERT_EQ(next, full) << Logs();
  consumer_.reset();
  {
    absl::MutexLock lock(&h.mu);
    h.delivered.clear();
    h.confirmed.clear();
  }
  StartClients(&h, "after-the-disk-filled");
  CheckHistory(&h);
}

}  // namespace
}  // namespace formica::dms::testing
