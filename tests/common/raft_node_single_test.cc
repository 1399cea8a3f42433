// RaftNode's contract in-process, on a group of one (its own majority):
// proposals answered after apply, in order; barrier; restart from the data
// dir through a snapshot and the log; stop; the role callback.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "formica/internal/raft_node.h"
#include "process.h"

namespace formica {
namespace {

using formica::testing::PickFreePort;
using formica::testing::TempDir;

class ListMachine : public RaftStateMachine {
 public:
  std::string Apply(uint64_t index, absl::string_view entry) override {
    absl::MutexLock l(&mu_);
    EXPECT_GT(index, last_index_) << "applied out of order";
    last_index_ = index;
    values_.emplace_back(entry);
    return absl::StrCat("#", values_.size());
  }
  absl::StatusOr<std::string> Snapshot() override {
    absl::MutexLock l(&mu_);
    ++snapshots_;
    return absl::StrJoin(values_, "\n");
  }
  absl::Status Restore(absl::string_view snapshot) override {
    absl::MutexLock l(&mu_);
    ++restores_;
    values_ = absl::StrSplit(snapshot, '\n', absl::SkipEmpty());
    return absl::OkStatus();
  }
  std::vector<std::string> values() const {
    absl::MutexLock l(&mu_);
    return values_;
  }
  int snapshots() const {
    absl::MutexLock l(&mu_);
    return snapshots_;
  }
  int restores() const {
    absl::MutexLock l(&mu_);
    return restores_;
  }

 private:
  mutable absl::Mutex mu_;
  uint64_t last_index_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> values_ ABSL_GUARDED_BY(mu_);
  int snapshots_ ABSL_GUARDED_BY(mu_) = 0;
  int restores_ ABSL_GUARDED_BY(mu_) = 0;
};

RaftNodeOptions OneMember(const std::string& dir) {
  RaftNodeOptions o;
  o.node_id = 1;
  o.peers = {{1, absl::StrCat("127.0.0.1:", PickFreePort())}};
  o.data_dir = dir;
  o.election_timeout = absl::Milliseconds(200);
  o.heartbeat = absl::Milliseconds(50);
  return o;
}

bool WaitReady(const RaftNode& node) {
  for (absl::Time limit = absl::Now() + absl::Seconds(10); absl::Now() < limit;) {
    if (node.status().leader_ready) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(RaftNode, AnswersProposalsAfterApplyingThemInOrder) {
  TempDir dir;
  ListMachine machine;
  auto node = RaftNode::Start(OneMember(dir.File("raft")), &machine);
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(WaitReady(**node));
  std::vector<std::future<ProposeResult>> inflight;
  for (int n = 0; n < 200; ++n) inflight.push_back((*node)->Propose(absl::StrCat("value-", n)));
  uint64_t last = 0;
  for (int n = 0; n < 200; ++n) {
    ProposeResult r = inflight[n].get();
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_GT(r.index, last);
    last = r.index;
    EXPECT_EQ(r.output, absl::StrCat("#", n + 1));
    EXPECT_GE(r.term, 1u);
  }
  std::vector<std::string> values = machine.values();
  ASSERT_EQ(values.size(), 200u);
  EXPECT_EQ(values[0], "value-0");
  EXPECT_EQ(values[199], "value-199");
  // Entries of any length and content arrive as proposed (the framing).
  for (const std::string& odd :
       {std::string(), std::string("a"), std::string(9, '\0'), std::string(4097, 'x')}) {
    ProposeResult r = (*node)->Propose(odd).get();
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(machine.values().back(), odd);
  }
  ProposeResult barrier = (*node)->Barrier().get();
  ASSERT_TRUE(barrier.status.ok()) << barrier.status;
  EXPECT_GT(barrier.index, last);
  EXPECT_EQ((*node)->status().role, RaftRole::kLeader);
}

TEST(RaftNode, RefusesAProposalForATermItDoesNotLead) {
  TempDir dir;
  ListMachine machine;
  auto node = RaftNode::Start(OneMember(dir.File("raft")), &machine);
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(WaitReady(**node));
  const uint64_t term = (*node)->status().term;
  for (uint64_t other : {term + 1, term + 7}) {  // 0 is "any term"
    ProposeResult r = (*node)->Propose("stale", other).get();
    EXPECT_TRUE(absl::IsFailedPrecondition(r.status)) << r.status;
    EXPECT_NE(r.status.message().find("term"), absl::string_view::npos) << r.status;
  }
  EXPECT_TRUE(machine.values().empty()) << "a refused entry was appended";
  ProposeResult r = (*node)->Propose("current", term).get();
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.term, term);
  ASSERT_EQ(machine.values().size(), 1u);
  EXPECT_EQ(machine.values()[0], "current");
}

TEST(RaftNode, RestartsFromItsDataDirThroughASnapshotAndTheLog) {
  TempDir dir;
  RaftNodeOptions options = OneMember(dir.File("raft"));
  options.snapshot_threshold = 16;
  options.snapshot_trailing = 4;
  std::vector<std::string> want;
  {
    ListMachine machine;
    auto node = RaftNode::Start(options, &machine);
    ASSERT_TRUE(node.ok()) << node.status();
    ASSERT_TRUE(WaitReady(**node));
    for (int n = 0; n < 50; ++n) {
      want.push_back(absl::StrCat("v", n));
      ASSERT_TRUE((*node)->Propose(want.back()).get().status.ok());
    }
    EXPECT_GE(machine.snapshots(), 1);
  }
  ListMachine machine;
  auto node = RaftNode::Start(options, &machine);
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(WaitReady(**node));
  EXPECT_EQ(machine.restores(), 1);
  EXPECT_EQ(machine.values(), want);
  ASSERT_TRUE((*node)->Propose("after").get().status.ok());
  EXPECT_EQ(machine.values().back(), "after");
}

TEST(RaftNode, ReportsTheLeaderOnceReadyThroughTheRoleCallback) {
  TempDir dir;
  ListMachine machine;
  absl::Mutex mu;
  std::vector<RaftNodeStatus> seen;
  auto node = RaftNode::Start(OneMember(dir.File("raft")), &machine, [&](const RaftNodeStatus& s) {
    absl::MutexLock l(&mu);
    seen.push_back(s);
  });
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(WaitReady(**node));
  absl::MutexLock l(&mu);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().role, RaftRole::kLeader);
  EXPECT_TRUE(seen.back().leader_ready);
  EXPECT_EQ(seen.back().leader.id, 1u);
  EXPECT_GE(seen.back().term, 1u);
  for (const RaftNodeStatus& s : seen) {
    EXPECT_FALSE(s.role == RaftRole::kLeader && !s.leader_ready) << "a leader reported unready";
  }
}

TEST(RaftNode, StopFailsLaterRequestsAndIsIdempotent) {
  TempDir dir;
  ListMachine machine;
  auto node = RaftNode::Start(OneMember(dir.File("raft")), &machine);
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(WaitReady(**node));
  (*node)->Stop();
  (*node)->Stop();
  EXPECT_EQ((*node)->status().role, RaftRole::kStopped);
  ProposeResult r = (*node)->Propose("late").get();
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  EXPECT_EQ((*node)->Barrier().get().status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(machine.values().empty());
}

TEST(RaftNode, RefusesADataDirItCannotCreate) {
  TempDir dir;
  std::ofstream(dir.File("file")) << "not a directory";
  ListMachine machine;
  auto node = RaftNode::Start(OneMember(dir.File("file/raft")), &machine);
  ASSERT_FALSE(node.ok());
  EXPECT_EQ(node.status().code(), absl::StatusCode::kFailedPrecondition) << node.status();
  EXPECT_NE(node.status().message().find("raft.data_dir"), std::string::npos) << node.status();
}

TEST(RaftNode, RefusesAnAddressInUse) {
  TempDir dir;
  RaftNodeOptions options = OneMember(dir.File("raft"));
  ListMachine first_machine;
  auto first = RaftNode::Start(options, &first_machine);
  ASSERT_TRUE(first.ok()) << first.status();
  options.data_dir = dir.File("other");
  ListMachine machine;
  auto node = RaftNode::Start(options, &machine);
  ASSERT_FALSE(node.ok());
  EXPECT_NE(node.status().message().find(options.peers[0].address), std::string::npos)
      << node.status();
}

bool Accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

TEST(RaftNode, ListensOnRaftListenWhenItDiffersFromItsPeerAddress) {
  TempDir dir;
  RaftNodeOptions options = OneMember(dir.File("raft"));
  const int advertised = std::stoi(options.peers[0].address.substr(10));
  const int bound = PickFreePort();
  options.listen = absl::StrCat("127.0.0.1:", bound);
  ListMachine machine;
  auto node = RaftNode::Start(options, &machine);
  ASSERT_TRUE(node.ok()) << node.status();
  ASSERT_TRUE(WaitReady(**node));
  EXPECT_TRUE(Accepts(bound));
  EXPECT_FALSE(Accepts(advertised));
}

// Three members of one group in this process, on free loopback ports.
struct ThreeMembers {
  // `host` names the members in raft.peers; `tweak` adjusts member i's
  // options before it starts.
  void Start(const std::string& host = "127.0.0.1",
             const std::function<void(int i, RaftNodeOptions&)>& tweak = nullptr) {
    std::vector<RaftPeer> peers;
    for (uint64_t id = 1; id <= 3; ++id) {
      ports.push_back(PickFreePort());
      peers.push_back({id, absl::StrCat(host, ":", ports.back())});
    }
    for (int i = 0; i < 3; ++i) {
      RaftNodeOptions o;
      o.node_id = i + 1;
      o.peers = peers;
      o.data_dir = dir.File(absl::StrCat("raft", i + 1));
      if (tweak) tweak(i, o);
      auto node = RaftNode::Start(o, &machines[i]);
      ASSERT_TRUE(node.ok()) << node.status();
      nodes.push_back(*std::move(node));
    }
  }

  // The member that leads and is ready (other than `other_than`), within
  // `timeout`; -1 when none is.
  int WaitForReadyLeader(absl::Duration timeout, int other_than = -1) {
    for (absl::Time limit = absl::Now() + timeout; absl::Now() < limit;) {
      for (int i = 0; i < 3; ++i) {
        if (i != other_than && nodes[i]->status().leader_ready) return i;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  TempDir dir;
  std::vector<int> ports;
  ListMachine machines[3];
  std::vector<std::unique_ptr<RaftNode>> nodes;
};

TEST(RaftNode, TransfersLeadershipToAFollower) {
  ThreeMembers group;
  ASSERT_NO_FATAL_FAILURE(group.Start());
  auto& nodes = group.nodes;
  auto& machines = group.machines;
  int leader = group.WaitForReadyLeader(absl::Seconds(10));
  ASSERT_GE(leader, 0);
  ASSERT_TRUE(nodes[leader]->Propose("before").get().status.ok());
  // A follower cannot hand over what it does not have.
  auto refused = std::make_shared<std::promise<ProposeResult>>();
  nodes[(leader + 1) % 3]->TransferLeadership(
      [refused](ProposeResult r) { refused->set_value(std::move(r)); });
  EXPECT_TRUE(refused->get_future().get().not_leader);
  auto moved = std::make_shared<std::promise<ProposeResult>>();
  nodes[leader]->TransferLeadership([moved](ProposeResult r) { moved->set_value(std::move(r)); });
  ProposeResult r = moved->get_future().get();
  ASSERT_TRUE(r.status.ok()) << r.status;
  int next = group.WaitForReadyLeader(absl::Seconds(10), leader);
  ASSERT_GE(next, 0);
  ASSERT_TRUE(nodes[next]->Propose("after").get().status.ok());
  EXPECT_EQ(machines[next].values(), (std::vector<std::string>{"before", "after"}));
  EXPECT_NE(nodes[leader]->status().role, RaftRole::kLeader);
}

TEST(RaftNode, StopFailsAProposalInFlightThatHasNoMajority) {
  ThreeMembers group;
  // The default election timeout, 1 s: the leader cut off keeps its role
  // well past the 100 ms below (it steps down after an election timeout
  // alone).
  ASSERT_NO_FATAL_FAILURE(group.Start());
  auto& nodes = group.nodes;
  auto& machines = group.machines;
  int leader = group.WaitForReadyLeader(absl::Seconds(10));
  ASSERT_GE(leader, 0);
  ASSERT_TRUE(nodes[leader]->Propose("with a majority").get().status.ok());
  for (int i = 0; i < 3; ++i) {
    if (i != leader) nodes[i]->Stop();
  }
  std::future<ProposeResult> stranded = nodes[leader]->Propose("without a majority");
  EXPECT_EQ(stranded.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout)
      << "acknowledged without a majority";
  nodes[leader]->Stop();
  ProposeResult r = stranded.get();
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  EXPECT_EQ(machines[leader].values(), std::vector<std::string>{"with a majority"});
}

// The TCP_USER_TIMEOUT (ms) of every TCP socket this process holds that is
// connected to one of `ports` on the loopback.
std::vector<unsigned> UserTimeoutsOfConnectionsTo(const std::vector<int>& ports) {
  std::vector<unsigned> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    int fd = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &fd)) continue;
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0 ||
        peer.sin_family != AF_INET) {
      continue;
    }
    if (std::find(ports.begin(), ports.end(), ntohs(peer.sin_port)) == ports.end()) continue;
    unsigned timeout = 0;
    socklen_t size = sizeof(timeout);
    if (getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, &size) == 0) {
      out.push_back(timeout);
    }
  }
  return out;
}

// A member named by host is dialled again by name once its connection
// holds unacknowledged data too long (a pod gone without a reset, back on
// another IP): its connections carry TCP_USER_TIMEOUT, 5 election timeouts
// and at least 10 s. Members listed by IP keep libraft's sockets as they are.
TEST(RaftNode, ConnectionsToMembersNamedByHostGiveUpOnADeadPeer) {
  for (bool named : {true, false}) {
    SCOPED_TRACE(named ? "members named localhost" : "members listed by IP");
    ThreeMembers group;
    ASSERT_NO_FATAL_FAILURE(
        group.Start(named ? "localhost" : "127.0.0.1", [&](int i, RaftNodeOptions& o) {
          o.election_timeout = absl::Seconds(3);
          o.heartbeat = absl::Milliseconds(100);
          if (named) o.listen = absl::StrCat("127.0.0.1:", group.ports[i]);
        }));
    auto& nodes = group.nodes;
    int leader = group.WaitForReadyLeader(absl::Seconds(20));
    ASSERT_GE(leader, 0);
    ASSERT_TRUE(nodes[leader]->Propose("x").get().status.ok());
    std::vector<unsigned> timeouts = UserTimeoutsOfConnectionsTo(group.ports);
    // The leader's connections to both followers at least, and the
    // followers' answers to it.
    ASSERT_GE(timeouts.size(), 2u);
    for (unsigned t : timeouts) EXPECT_EQ(t, named ? 15000u : 0u);
    for (auto& node : nodes) node->Stop();
  }
}

}  // namespace
}  // namespace formica
