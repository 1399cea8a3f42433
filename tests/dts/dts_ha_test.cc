// dtsd replicated (docs/ha.md): three dtsd processes started from YAML
// configs with a `raft` section, a real dsrd, two bank participants
// (account_server) and this process as the initiator. Kill -9 of the
// leader and of the whole group under business activities: money adds up,
// every acknowledged commit is confirmed at both banks, nothing stays
// unfinished.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "activity_store.h"
#include "bank_books.h"
#include "bank_fixture.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/activity.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/rpc/client.h"
#include "formica/test/account.grpc.pb.h"
#include "registry_fixture.h"

namespace formica::dts {
namespace {

using formica::testing::Subprocess;

constexpr int kMembers = 3;

class DtsHaTest : public BankTest {
 protected:
  void SetUp() override {
    BankTest::SetUp();
    for (int i = 0; i < kMembers; ++i) {
      raft_ports_.push_back(formica::testing::PickFreePort());
      api_ports_.push_back(formica::testing::PickFreePort());
    }
    dtsd_.resize(kMembers);
    for (int i = 0; i < kMembers; ++i) {
      WriteConfig(i);
      StartMember(i);
    }
    StartBanksAndInitiator();
  }

  void TearDown() override {
    BankTest::TearDown();
    for (auto& p : dtsd_) p.reset();  // SIGKILL whatever still runs
  }

  std::string Peers() const {
    std::vector<std::string> peers;
    for (int i = 0; i < kMembers; ++i) {
      peers.push_back(absl::StrCat("\"", i + 1, "@127.0.0.1:", raft_ports_[i], "\""));
    }
    return absl::StrCat("[", absl::StrJoin(peers, ", "), "]");
  }

  std::string ConfigPath(int i) const { return dir_.File(absl::StrCat("dtsd-", i + 1, ".yaml")); }

  // The config a user writes for member i of the group.
  void WriteConfig(int i, const std::string& raft_extra = "") {
    std::ofstream out(ConfigPath(i));
    out << "server:\n  listen: 127.0.0.1:" << api_ports_[i] << "\n  unpublish_grace: 0s\n"
        << "storage:\n  data_dir: " << dir_.File(absl::StrCat("dtsd-", i + 1)) << "\n"
        << "registry:\n  addresses: [" << dsrd_->address() << "]\n"
        << "activity:\n  default_timeout: 3s\n"
        << "phase_two:\n  retry_initial: 50ms\n  retry_max: 400ms\n  call_timeout: 2s\n"
        << "raft:\n  node_id: " << i + 1 << "\n  peers: " << Peers()
        << "\n  data_dir: " << dir_.File(absl::StrCat("raft-", i + 1))
        << "\n  snapshot_threshold: 16\n"
        << "  snapshot_trailing: 4\n"
        << raft_extra;
  }

  void StartMember(int i) {
    auto p =
        Subprocess::Start({formica::testing::BinaryPath("dts/dtsd"), "--config", ConfigPath(i)},
                          dir_.File(absl::StrCat("dtsd-", i + 1, ".", ++runs_, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    dtsd_[i] = std::move(*p);
    ASSERT_TRUE(dtsd_[i]->WaitForOutput("dtsd ready on port", absl::Seconds(20)))
        << dtsd_[i]->Output();
  }

  std::unique_ptr<v1::Coordinator::Stub> Stub(int i) {
    return v1::Coordinator::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", api_ports_[i]),
                                                        grpc::InsecureChannelCredentials()));
  }

  absl::StatusOr<std::vector<v1::Activity>> Unfinished(int i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListRequest req;
    req.set_limit(100000);
    v1::ListResponse resp;
    grpc::Status st = Stub(i)->List(&ctx, req, &resp);
    if (!st.ok()) return FromGrpcStatus(st);
    return std::vector<v1::Activity>(resp.activities().begin(), resp.activities().end());
  }

  absl::StatusOr<v1::Activity> Get(int i, const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ActivityRef ref;
    ref.set_activity_id(id);
    v1::Activity a;
    grpc::Status st = Stub(i)->Get(&ctx, ref, &a);
    if (!st.ok()) return FromGrpcStatus(st);
    return a;
  }

  // Begins an activity at member i (an id made by dtsd: "<epoch>-<seq>").
  absl::StatusOr<std::string> BeginAt(int i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::BeginRequest req;
    req.set_name("bank.Transfer");
    v1::BeginResponse resp;
    grpc::Status st = Stub(i)->Begin(&ctx, req, &resp);
    if (!st.ok()) return FromGrpcStatus(st);
    return resp.activity_id();
  }

  // The member that serves the API (the ready leader), skipping `exclude`;
  // -1 when none within `timeout`.
  int WaitForLeader(absl::Duration timeout, int exclude = -1) {
    absl::Time until = absl::Now() + timeout;
    while (absl::Now() < until) {
      for (int i = 0; i < kMembers; ++i) {
        if (i == exclude || dtsd_[i] == nullptr || !dtsd_[i]->running()) continue;
        if (Unfinished(i).ok()) return i;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return -1;
  }

  absl::Status Move(const std::string& bank, bool debit, int account, int64_t amount) {
    test::Move m;
    m.set_account(std::to_string(account));
    m.set_amount(amount);
    test::Moved out;
    return rpc_->Call(bank, {},
                      [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
                        auto stub = test::Account::NewStub(ch);
                        return debit ? stub->Debit(ctx, m, &out) : stub->Credit(ctx, m, &out);
                      });
  }

  // Transfers both ways on `threads` threads until `stop`; every commit
  // dtsd acknowledged goes to `committed` (with when it was answered).
  void RunTransfers(int threads, std::atomic<bool>* stop, absl::Mutex* mu,
                    std::vector<std::pair<std::string, absl::Time>>* committed,
                    std::vector<std::thread>* out) {
    for (int t = 0; t < threads; ++t) {
      out->emplace_back([=] {
        std::mt19937 rng(100 + t);
        while (!stop->load()) {
          ActivityOptions o;
          o.name = "bank.Transfer";
          o.timeout = absl::Seconds(2);
          // Half begin at dtsd (ids under the leader's epoch), half
          // without a round trip (taken up at the first enlist).
          o.begin_at_coordinator = t % 2 == 0;
          auto activity = Activity::Begin(rpc_.get(), o);
          if (!activity.ok()) {
            absl::SleepFor(absl::Milliseconds(50));
            continue;
          }
          bool a_to_b = rng() % 2 == 0;
          int from = rng() % kAccounts;
          int to = rng() % kAccounts;
          int64_t amount = 1 + rng() % 50;
          absl::Status st = (*activity)->Run([&] {
            absl::Status s = Move(a_to_b ? "bank.a" : "bank.b", true, from, amount);
            if (s.ok()) s = Move(a_to_b ? "bank.b" : "bank.a", false, to, amount);
            return s;
          });
          absl::Status decided = st.ok() ? (*activity)->Commit() : st;
          if (decided.ok()) {
            absl::MutexLock lock(mu);
            committed->emplace_back((*activity)->id(), absl::Now());
          } else {
            (*activity)->Rollback("a step failed").IgnoreError();
            absl::SleepFor(absl::Milliseconds(20));
          }
        }
      });
    }
  }

  size_t Count(absl::Mutex* mu, const std::vector<std::pair<std::string, absl::Time>>& v) {
    absl::MutexLock lock(mu);
    return v.size();
  }

  // Nothing unfinished at the leader, no try pending at the banks.
  void AwaitQuiet(int leader, absl::Duration timeout) {
    AwaitQuietAt([this, leader] { return Unfinished(leader); }, timeout);
  }

  // Money adds up, nothing frozen or in transit, every try ended as the
  // leader says, and every acknowledged commit is confirmed at both banks.
  void ExpectBooksBalance(int leader,
                          const std::vector<std::pair<std::string, absl::Time>>& acked) {
    auto [a, b] =
        ExpectBooksBalanceAt([this, leader](const std::string& id) { return Get(leader, id); });
    for (const auto& [id, when] : acked) {
      EXPECT_TRUE(a.barrier[id].count("confirm")) << id << " was acknowledged committed";
      EXPECT_TRUE(b.barrier[id].count("confirm")) << id << " was acknowledged committed";
    }
  }

  // Every member's own store holds every acknowledged commit, finished:
  // read from its RocksDB once the group is stopped, after each member (one
  // that was down included) had a while to apply the leader's log. A member
  // found behind gets another, longer while.
  void ExpectEveryMemberHolds(const std::vector<std::pair<std::string, absl::Time>>& acked) {
    std::string missing;
    for (int attempt = 1; attempt <= 3; ++attempt) {
      for (int i = 0; i < kMembers; ++i) {
        if (dtsd_[i] == nullptr || !dtsd_[i]->running()) StartMember(i);
      }
      ASSERT_GE(WaitForLeader(absl::Seconds(20)), 0) << Logs();
      absl::SleepFor(absl::Seconds(2 * attempt));
      for (int i = 0; i < kMembers; ++i) {
        ASSERT_EQ(dtsd_[i]->Terminate(), 0) << dtsd_[i]->Output();
      }
      missing.clear();
      for (int i = 0; i < kMembers; ++i) {
        auto store = OpenRocksDbActivityStore(dir_.File(absl::StrCat("dtsd-", i + 1)));
        ASSERT_TRUE(store.ok()) << store.status();
        for (const auto& [id, when] : acked) {
          auto a = (*store)->Get(id);
          ASSERT_TRUE(a.ok()) << a.status();
          if (!a->has_value() || (*a)->state() != v1::COMMITTED) {
            missing = absl::StrCat(
                "member ", i + 1, " holds ", id, " as ",
                a->has_value() ? v1::ActivityState_Name((*a)->state()) : std::string("nothing"));
            break;
          }
        }
      }
      if (missing.empty()) return;
    }
    FAIL() << missing << "\n" << Logs();
  }

  std::string Logs() {
    std::string out;
    for (int i = 0; i < kMembers; ++i) {
      if (dtsd_[i] != nullptr) absl::StrAppend(&out, "--- dtsd ", i + 1, ":\n", dtsd_[i]->Output());
    }
    return out;
  }

  std::vector<int> raft_ports_;
  std::vector<int> api_ports_;
  int runs_ = 0;
  std::vector<std::unique_ptr<Subprocess>> dtsd_;
};

TEST_F(DtsHaTest, AFollowerRefusesNamingTheLeader) {
  int leader = WaitForLeader(absl::Seconds(20));
  ASSERT_GE(leader, 0) << Logs();
  int follower = (leader + 1) % kMembers;
  // The follower learns the leader's API address when it applies the
  // leader's epoch entry, moments after the leader is ready.
  const std::string leader_api = absl::StrCat("127.0.0.1:", api_ports_[leader]);
  grpc::Status st;
  v1::BeginResponse resp;
  for (absl::Time until = absl::Now() + absl::Seconds(5); absl::Now() < until;) {
    grpc::ClientContext ctx;
    v1::BeginRequest req;
    req.set_name("bank.Transfer");
    st = Stub(follower)->Begin(&ctx, req, &resp);
    if (st.error_message().find(leader_api) != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_NE(st.error_message().find(leader_api), std::string::npos) << st.error_message();
  EXPECT_TRUE(resp.activity_id().empty());
  // Only the leader is published: clients never pick a follower.
  ASSERT_TRUE(
      registry_
          ->Subscribe(v1::Coordinator::service_full_name(), [](const registry::ServiceSnapshot&) {})
          .ok());
  absl::StatusOr<registry::ServiceSnapshot> published =
      registry_->AwaitSnapshot(v1::Coordinator::service_full_name(), absl::Seconds(5));
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(registry::testing::Addresses(*published), std::set<std::string>{leader_api});
  // SIGTERM of the leader: it stops cleanly and another member takes over,
  // making ids under a greater epoch than any its predecessor used.
  absl::StatusOr<std::string> before = BeginAt(leader);
  ASSERT_TRUE(before.ok()) << before.status();
  // A Begin nobody syncs for reaches the log within a round (200 ms) of the
  // leadership thread: the successor knows it.
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(dtsd_[leader]->Terminate(), 0) << dtsd_[leader]->Output();
  int next = WaitForLeader(absl::Seconds(20), leader);
  ASSERT_GE(next, 0) << Logs();
  absl::StatusOr<v1::Activity> begun = Get(next, *before);
  EXPECT_TRUE(begun.ok()) << *before << " begun a second before the handover: " << begun.status();
  absl::StatusOr<std::string> after = BeginAt(next);
  ASSERT_TRUE(after.ok()) << after.status();
  auto epoch = [](const std::string& id) {
    uint64_t e = 0;
    EXPECT_TRUE(absl::SimpleHexAtoi(id.substr(0, id.find('-')), &e)) << id;
    return e;
  };
  EXPECT_GT(epoch(*after), epoch(*before)) << *before << " then " << *after;
}

TEST_F(DtsHaTest, KillNineOfTheLeaderUnderBusinessActivitiesLosesNothing) {
  int leader = WaitForLeader(absl::Seconds(20));
  ASSERT_GE(leader, 0) << Logs();
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::vector<std::pair<std::string, absl::Time>> committed;
  std::vector<std::thread> threads;
  auto join = absl::MakeCleanup([&] {
    stop = true;
    for (auto& th : threads) th.join();
  });
  RunTransfers(16, &stop, &mu, &committed, &threads);
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (Count(&mu, committed) < 100 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_GE(Count(&mu, committed), 100u) << Logs();
  size_t before_kill = Count(&mu, committed);
  absl::Time killed = absl::Now();
  dtsd_[leader]->Kill();  // SIGKILL
  int next = WaitForLeader(absl::Seconds(20), leader);
  ASSERT_GE(next, 0) << Logs();
  // Failover: from the kill to the first commit acknowledged after it.
  until = absl::Now() + absl::Seconds(30);
  absl::Time first_after = absl::InfiniteFuture();
  while (absl::Now() < until) {
    {
      absl::MutexLock lock(&mu);
      for (const auto& [id, when] : committed) {
        if (when > killed + absl::Milliseconds(100)) first_after = std::min(first_after, when);
      }
      if (committed.size() >= before_kill + 100) break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_NE(first_after, absl::InfiniteFuture()) << "no commit after the kill\n" << Logs();
  EXPECT_GE(Count(&mu, committed), before_kill + 100) << "the new leader served too little";
  std::printf(
      "failover: kill -9 of the dtsd leader to the first acknowledged commit: %s "
      "(new leader: member %d)\n",
      absl::FormatDuration(first_after - killed).c_str(), next + 1);
  EXPECT_LT(first_after - killed, absl::Seconds(15));
  std::move(join).Invoke();
  AwaitQuiet(next, absl::Seconds(40));
  ExpectBooksBalance(next, committed);
  std::printf("%zu activities acknowledged committed, all confirmed at both banks\n",
              committed.size());
  ExpectEveryMemberHolds(committed);
}

TEST_F(DtsHaTest, RestartingTheWholeGroupAtOnceLosesNothing) {
  ASSERT_GE(WaitForLeader(absl::Seconds(20)), 0) << Logs();
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::vector<std::pair<std::string, absl::Time>> committed;
  std::vector<std::thread> threads;
  auto join = absl::MakeCleanup([&] {
    stop = true;
    for (auto& th : threads) th.join();
  });
  RunTransfers(16, &stop, &mu, &committed, &threads);
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (Count(&mu, committed) < 150 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_GE(Count(&mu, committed), 150u) << Logs();
  // The restart goes through a snapshot (Restore) and the log after it.
  int snapshots = 0;
  for (int i = 0; i < kMembers; ++i) {
    for (const auto& f :
         std::filesystem::directory_iterator(dir_.File(absl::StrCat("raft-", i + 1)))) {
      snapshots += f.path().filename().string().rfind("snapshot-", 0) == 0;
    }
  }
  EXPECT_GT(snapshots, 0) << "no member took a snapshot: raise the load";
  // All three at once, phase two still owed for the latest commits.
  for (int i = 0; i < kMembers; ++i) dtsd_[i]->Kill();
  std::move(join).Invoke();
  for (int i = 0; i < kMembers; ++i) StartMember(i);
  int leader = WaitForLeader(absl::Seconds(20));
  ASSERT_GE(leader, 0) << Logs();
  for (const auto& [id, when] : committed) {
    auto a = Get(leader, id);
    ASSERT_TRUE(a.ok()) << id << ": " << a.status();
    EXPECT_TRUE(a->state() == v1::COMMITTING || a->state() == v1::COMMITTED)
        << id << " was acknowledged committed, is " << v1::ActivityState_Name(a->state());
  }
  AwaitQuiet(leader, absl::Seconds(40));
  ExpectBooksBalance(leader, committed);
}

TEST_F(DtsHaTest, APausedLeaderStepsDownAndNothingAcknowledgedIsLost) {
  int leader = WaitForLeader(absl::Seconds(20));
  ASSERT_GE(leader, 0) << Logs();
  std::atomic<bool> stop{false};
  absl::Mutex mu;
  std::vector<std::pair<std::string, absl::Time>> committed;
  std::vector<std::thread> threads;
  auto join = absl::MakeCleanup([&] {
    stop = true;
    for (auto& th : threads) th.join();
  });
  auto resume = absl::MakeCleanup([&] { dtsd_[leader]->Signal(SIGCONT); });
  RunTransfers(16, &stop, &mu, &committed, &threads);
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (Count(&mu, committed) < 50 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_GE(Count(&mu, committed), 50u) << Logs();
  // Paused past the election timeout, with decisions in flight.
  dtsd_[leader]->Signal(SIGSTOP);
  int next = WaitForLeader(absl::Seconds(20), leader);
  ASSERT_GE(next, 0) << Logs();
  size_t at_takeover = Count(&mu, committed);
  until = absl::Now() + absl::Seconds(20);
  while (Count(&mu, committed) < at_takeover + 50 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GE(Count(&mu, committed), at_takeover + 50) << "the new leader served too little";
  std::move(resume).Invoke();
  // Resumed, the old leader learns the new term and refuses as a follower.
  absl::Status refused;
  for (until = absl::Now() + absl::Seconds(10); absl::Now() < until;) {
    refused = Unfinished(leader).status();
    if (absl::IsUnavailable(refused)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(absl::IsUnavailable(refused)) << refused;
  EXPECT_TRUE(dtsd_[leader]->WaitForOutput("dtsd steps down", absl::Seconds(10)))
      << dtsd_[leader]->Output();
  std::move(join).Invoke();
  AwaitQuiet(next, absl::Seconds(40));
  ExpectBooksBalance(next, committed);
}

TEST_F(DtsHaTest, ASingleDtsdsActivitiesAreNotTakenIntoANewGroup) {
  // A single dtsd leaves an activity in its data dir.
  int port = formica::testing::PickFreePort();
  std::string data_dir = dir_.File("single");
  auto single = Subprocess::Start(
      {formica::testing::BinaryPath("dts/dtsd"), "--listen", absl::StrCat("127.0.0.1:", port),
       "--data-dir", data_dir, "--registry", dsrd_->address()},
      dir_.File("single.log"));
  ASSERT_TRUE(single.ok());
  ASSERT_TRUE((*single)->WaitForOutput("dtsd ready on port", absl::Seconds(20)))
      << (*single)->Output();
  {
    auto stub = v1::Coordinator::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::BeginRequest req;
    req.set_name("bank.Transfer");
    v1::BeginResponse resp;
    ASSERT_TRUE(stub->Begin(&ctx, req, &resp).ok());
  }
  ASSERT_EQ((*single)->Terminate(), 0);
  // The same data dir as a member of a new group: refused, naming it.
  std::string path = dir_.File("joins.yaml");
  std::ofstream(path) << "registry:\n  addresses: [" << dsrd_->address() << "]\n"
                      << "storage:\n  data_dir: " << data_dir << "\n"
                      << "raft:\n  node_id: 1\n  peers: [\"1@127.0.0.1:"
                      << formica::testing::PickFreePort()
                      << "\"]\n  data_dir: " << dir_.File("joins-raft") << "\n";
  auto p = Subprocess::Start({formica::testing::BinaryPath("dts/dtsd"), "--config", path},
                             dir_.File("joins.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 1) << (*p)->Output();
  EXPECT_NE((*p)->Output().find("storage.data_dir " + data_dir + " holds activities"),
            std::string::npos)
      << (*p)->Output();
}

TEST_F(DtsHaTest, ARestartNamingAPeerTheStoredGroupDoesNotKnowIsRefused) {
  ASSERT_GE(WaitForLeader(absl::Seconds(20)), 0) << Logs();
  const int member = 2;
  ASSERT_EQ(dtsd_[member]->Terminate(), 0) << dtsd_[member]->Output();
  // The same member, its peers grown by two the group never admitted.
  WriteConfig(member);
  std::string config;
  {
    std::ifstream in(ConfigPath(member));
    config.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::string peers = Peers();
  std::string grown = peers.substr(0, peers.size() - 1) +
                      absl::StrCat(", \"4@127.0.0.1:", formica::testing::PickFreePort(),
                                   "\", \"5@127.0.0.1:", formica::testing::PickFreePort(), "\"]");
  config.replace(config.find(peers), peers.size(), grown);
  std::ofstream(ConfigPath(member)) << config;
  auto p =
      Subprocess::Start({formica::testing::BinaryPath("dts/dtsd"), "--config", ConfigPath(member)},
                        dir_.File("grown.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 1) << (*p)->Output();
  EXPECT_NE((*p)->Output().find("raft.peers"), std::string::npos) << (*p)->Output();
  // Its own config again: it rejoins with its log as it was.
  WriteConfig(member);
  StartMember(member);
  EXPECT_TRUE(dtsd_[member]->running()) << dtsd_[member]->Output();
}

TEST_F(DtsHaTest, BadRaftConfigsAreRefusedNamingTheKey) {
  struct Case {
    std::string raft;
    std::string key;
    std::string says;
  };
  std::vector<Case> cases = {
      {"  node_id: 1\n  peers: [\"1@127.0.0.1:7001\", \"2@127.0.0.1:7002\"]\n", "raft.peers",
       "even"},
      {"  node_id: 1\n  peers: [\"1@127.0.0.1:7001\", \"1@127.0.0.1:7002\", "
       "\"3@127.0.0.1:7003\"]\n",
       "raft.peers", "listed twice"},
      {"  node_id: 4\n  peers: [\"1@127.0.0.1:7001\", \"2@127.0.0.1:7002\", "
       "\"3@127.0.0.1:7003\"]\n",
       "raft.node_id", "not in raft.peers"},
      {"  node_id: 1\n  peers: [\"1@127.0.0.1:7001\"]\n  election: 1s\n", "raft.election", ""},
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    std::string path = dir_.File(absl::StrCat("bad-", c, ".yaml"));
    std::string data_dir = dir_.File(absl::StrCat("bad-", c));
    std::ofstream(path) << "registry:\n  addresses: [" << dsrd_->address() << "]\n"
                        << "storage:\n  data_dir: " << data_dir << "\n"
                        << "raft:\n  data_dir: " << data_dir << "-raft\n"
                        << cases[c].raft;
    auto p = Subprocess::Start({formica::testing::BinaryPath("dts/dtsd"), "--config", path},
                               dir_.File(absl::StrCat("bad-", c, ".log")));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 2) << (*p)->Output();
    EXPECT_NE((*p)->Output().find(cases[c].key), std::string::npos) << (*p)->Output();
    EXPECT_NE((*p)->Output().find(cases[c].says), std::string::npos) << (*p)->Output();
    EXPECT_FALSE(std::filesystem::exists(data_dir)) << "a refused config changed nothing";
  }
}

}  // namespace
}  // namespace formica::dts
