// DTS end to end: a real dsrd, a real dtsd and two bank participant
// processes (account_server), each with its own SQLite database; this test
// process is the initiator. The invariant: money is neither made nor lost.
#include <grpcpp/grpcpp.h>
#include <rocksdb/db.h>
#include <signal.h>
#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bank_books.h"
#include "bank_fixture.h"
#include "formica/common/grpc_status.h"
#include "formica/common/logging.h"
#include "formica/dts/activity.h"
#include "formica/dts/participant.h"
#include "formica/dts/sharded_participant.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "formica/test/account.grpc.pb.h"
#include "json.h"
#include "postgres.h"
#include "registry_fixture.h"

namespace formica::dts {
namespace {

using formica::testing::Subprocess;

ActivityOptions Named(const std::string& name, absl::Duration timeout = absl::ZeroDuration()) {
  ActivityOptions o;
  o.name = name;
  o.timeout = timeout;
  return o;
}

// The same, begun at dtsd with a round trip (dtsd lists it while ACTIVE and
// times it out itself; participants enlist each try).
ActivityOptions BegunAtDtsd(const std::string& name,
                            absl::Duration timeout = absl::ZeroDuration()) {
  ActivityOptions o = Named(name, timeout);
  o.begin_at_coordinator = true;
  return o;
}

class DtsTest : public BankTest {
 protected:
  void SetUp() override {
    BankTest::SetUp();
    dtsd_port_ = formica::testing::PickFreePort();
    StartDtsd();
    StartBanksAndInitiator();
  }

  void StartDtsd(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("dts/dtsd"),
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", dtsd_port_),
                                     "--data-dir",
                                     dir_.File("dtsd"),
                                     "--registry",
                                     dsrd_->address(),
                                     "--set",
                                     "phase_two.retry_initial=50ms",
                                     "--set",
                                     "phase_two.retry_max=400ms",
                                     "--set",
                                     "phase_two.call_timeout=2s",
                                     "--set",
                                     "activity.default_timeout=3s",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("dtsd.", ++dtsd_runs_, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    dtsd_ = std::move(*p);
    ASSERT_TRUE(dtsd_->WaitForOutput("dtsd ready on port", absl::Seconds(20))) << dtsd_->Output();
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", dtsd_port_),
                                   grpc::InsecureChannelCredentials());
    coordinator_ = v1::Coordinator::NewStub(channel_);
  }

  // Serves a participant of this process under `name` (server_), and a
  // stub to call it as dtsd does (stub_). Reset server_ before the participant.
  void HostParticipant(const std::string& name, grpc::Service* service) {
    rpc::ServerOptions so;
    so.unpublish_grace = absl::ZeroDuration();
    auto server = rpc::Server::Start(so, {{name, service}}, registry_.get());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ = v1::Participant::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }

  // One account call (a try step) on `bank`, inside the current activity
  // (or the one `options` name).
  absl::Status Move(const std::string& bank, bool debit, int account, int64_t amount,
                    const rpc::CallOptions& options = {}) {
    test::Move m;
    m.set_account(std::to_string(account));
    m.set_amount(amount);
    test::Moved out;
    return rpc_->Call(bank + "", options,
                      [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
                        auto stub = test::Account::NewStub(ch);
                        return debit ? stub->Debit(ctx, m, &out) : stub->Credit(ctx, m, &out);
                      });
  }

  absl::StatusOr<v1::Activity> Get(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ActivityRef ref;
    ref.set_activity_id(id);
    v1::Activity a;
    grpc::Status st = coordinator_->Get(&ctx, ref, &a);
    if (!st.ok()) return FromGrpcStatus(st);
    return a;
  }

  absl::StatusOr<std::vector<v1::Activity>> Unfinished() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListRequest req;
    req.set_limit(100000);
    v1::ListResponse resp;
    grpc::Status st = coordinator_->List(&ctx, req, &resp);
    if (!st.ok()) return FromGrpcStatus(st);
    return std::vector<v1::Activity>(resp.activities().begin(), resp.activities().end());
  }

  void AwaitQuiet(absl::Duration timeout) {
    AwaitQuietAt([this] { return Unfinished(); }, timeout);
  }

  void ExpectBooksBalance() {
    ExpectBooksBalanceAt([this](const std::string& id) { return Get(id); });
  }

  int dtsd_port_ = 0;
  int dtsd_runs_ = 0;
  std::unique_ptr<Subprocess> dtsd_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Coordinator::Stub> coordinator_;
  std::unique_ptr<rpc::Server> server_;  // HostParticipant
  std::unique_ptr<v1::Participant::Stub> stub_;
};

TEST_F(DtsTest, TransfersCommitOrRollBackEverywhereAndMoneyAddsUp) {
  std::atomic<int> committed{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  std::vector<std::string> committed_ids[8];
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 25; ++i) {
        int from = rng() % kAccounts;
        int to = rng() % kAccounts;
        int64_t amount = 1 + rng() % 400;  // sometimes more than an account holds
        bool change_of_mind = rng() % 5 == 0;
        auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer"));
        ASSERT_TRUE(activity.ok()) << activity.status();
        absl::Status st = (*activity)->Run([&] {
          absl::Status s = Move("bank.a", true, from, amount);
          if (s.ok()) s = Move("bank.b", false, to, amount);
          return s;
        });
        if (st.ok() && !change_of_mind) {
          ASSERT_TRUE((*activity)->Commit().ok());
          committed_ids[t].push_back((*activity)->id());
          ++committed;
        } else {
          refused += !st.ok();
          ASSERT_TRUE(
              (*activity)->Rollback(change_of_mind ? "changed my mind" : st.ToString()).ok());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GT(committed.load(), 50);
  EXPECT_GT(refused.load(), 0) << "some transfers were short of money";
  AwaitQuiet(absl::Seconds(30));
  ExpectBooksBalance();
  Books a = ReadBooks(BankDb("bank.a"));
  Books b = ReadBooks(BankDb("bank.b"));
  EXPECT_LT(a.balance, kAccounts * kInitial);
  EXPECT_EQ(b.balance - kAccounts * kInitial, kAccounts * kInitial - a.balance);
  for (auto& ids : committed_ids) {
    for (const std::string& id : ids) {
      EXPECT_TRUE(a.barrier[id].count("confirm")) << id;
      EXPECT_TRUE(b.barrier[id].count("confirm")) << id;
    }
  }
}

// dtsd is killed -9 four times while 128 initiators run transfers. What
// must hold is safety (every acknowledged commit is confirmed in both banks,
// money adds up, every try ends as dtsd decided) and liveness: after each
// start, activities begun on that dtsd commit within a bound derived from
// the restart, not a share of the total (which would measure the machine).
TEST_F(DtsTest, KillingDtsdDuringThousandsOfActivitiesLosesNothing) {
  constexpr int kThreads = 128;
  constexpr int kKills = 4;
  constexpr int kProgress = 20;  // commits that show a dtsd serves the load
  constexpr absl::Duration kActivityTimeout = absl::Seconds(2);
  // Serving dtsd since the test started: 0 the first, then one per restart.
  std::atomic<int> incarnation{0};
  // Activities begun and committed on the same dtsd, per incarnation.
  std::vector<std::atomic<int>> progress(kKills + 1);
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0};
  absl::Mutex mu;
  std::vector<std::string> committed_ids;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1000 + t);
      while (!stop.load()) {
        int from = rng() % kAccounts;
        int to = rng() % kAccounts;
        int64_t amount = 1 + rng() % 50;
        int began_on = incarnation.load();
        auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer", kActivityTimeout));
        if (!activity.ok()) {  // dtsd is down: nothing began; try again
          absl::SleepFor(absl::Milliseconds(50));
          continue;
        }
        // Both ways, so that money keeps circulating.
        bool a_to_b = rng() % 2 == 0;
        absl::Status st = (*activity)->Run([&] {
          absl::Status s = Move(a_to_b ? "bank.a" : "bank.b", true, from, amount);
          if (s.ok()) s = Move(a_to_b ? "bank.b" : "bank.a", false, to, amount);
          return s;
        });
        absl::Status decided = st.ok() ? (*activity)->Commit() : st;
        if (decided.ok()) {
          absl::MutexLock lock(&mu);
          committed_ids.push_back((*activity)->id());
          if (incarnation.load() == began_on) ++progress[began_on];
        } else {
          ++failed;
          (*activity)->Rollback("a step failed").IgnoreError();
        }
      }
    });
  }
  // Liveness: a dtsd that came up in `restart_took` serves the load within
  // a bound made of that (a slow machine restarts slowly too), the
  // activities caught by the kill timing out (kActivityTimeout) and the
  // initiators' channels reconnecting (gRPC backs off up to a few seconds).
  auto await_progress = [&](int on, absl::Duration restart_took) {
    const absl::Duration bound = 4 * restart_took + 2 * kActivityTimeout + absl::Seconds(10);
    absl::Time start = absl::Now();
    while (progress[on].load() < kProgress && absl::Now() - start < bound) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_GE(progress[on].load(), kProgress)
        << "dtsd #" << on << " (up in " << restart_took << ") served too little within " << bound;
    std::printf("dtsd #%d: %d commits after %s (up in %s)\n", on, progress[on].load(),
                absl::FormatDuration(absl::Now() - start).c_str(),
                absl::FormatDuration(restart_took).c_str());
  };
  std::mt19937 rng(7);
  await_progress(0, absl::ZeroDuration());
  for (int kill = 1; kill <= kKills && !HasFailure(); ++kill) {
    absl::SleepFor(absl::Milliseconds(rng() % 300));  // land the kill anywhere in the load
    absl::Time killed = absl::Now();
    dtsd_->Kill();  // SIGKILL: no goodbye
    absl::SleepFor(absl::Milliseconds(rng() % 300));
    StartDtsd();
    incarnation = kill;
    await_progress(kill, absl::Now() - killed);
  }
  stop = true;
  for (auto& th : threads) th.join();
  // Safety.
  AwaitQuiet(absl::Seconds(60));
  ExpectBooksBalance();
  Books a = ReadBooks(BankDb("bank.a"));
  Books b = ReadBooks(BankDb("bank.b"));
  for (const std::string& id : committed_ids) {
    EXPECT_TRUE(a.barrier[id].count("confirm")) << id << " was committed";
    EXPECT_TRUE(b.barrier[id].count("confirm")) << id << " was committed";
  }
  std::printf("%zu activities committed, %d failed, across %d kill -9 of dtsd\n",
              committed_ids.size(), failed.load(), kKills);
}

// A participant that records every confirm and cancel it is sent, with its
// payload, and answers OK. Without `batches` it has no PhaseTwoBatch, as
// libraries before it.
class RecordingParticipant final : public v1::Participant::Service {
 public:
  explicit RecordingParticipant(bool batches = true) : batches_(batches) {}

  struct Call {
    std::string activity_id;
    std::string action;
    std::string payload;
    bool confirm;
  };

  std::vector<Call> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  grpc::Status Confirm(grpc::ServerContext*, const v1::PhaseTwoRequest* req,
                       v1::PhaseTwoResponse*) override {
    Record(req->activity_id(), req->action(), req->payload(), true);
    return grpc::Status::OK;
  }
  grpc::Status Cancel(grpc::ServerContext*, const v1::PhaseTwoRequest* req,
                      v1::PhaseTwoResponse*) override {
    Record(req->activity_id(), req->action(), req->payload(), false);
    return grpc::Status::OK;
  }
  grpc::Status PhaseTwoBatch(grpc::ServerContext*, const v1::PhaseTwoBatchRequest* req,
                             v1::PhaseTwoBatchResponse* resp) override {
    if (!batches_) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "");
    for (const v1::PhaseTwoItem& item : req->items()) {
      Record(item.activity_id(), item.action(), item.payload(), item.confirm());
      resp->add_results();
    }
    return grpc::Status::OK;
  }
  void Record(const std::string& id, const std::string& action, const std::string& payload,
              bool confirm) {
    absl::MutexLock lock(&mu_);
    calls_.push_back({id, action, payload, confirm});
  }

  const bool batches_;
  absl::Mutex mu_;
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
};

// A payload of `size` bytes that differs per action.
std::string PayloadFor(int action, size_t size) {
  std::string payload(size, '\0');
  std::mt19937 rng(action);
  for (char& c : payload) c = static_cast<char>(rng());
  return payload;
}

TEST_F(DtsTest, AnEnlistWritesOnlyItsOwnActionAndAllSurviveAKill) {
  RecordingParticipant sink;
  HostParticipant("sink", &sink);
  absl::Cleanup stop_serving = [&] { server_.reset(); };
  constexpr int kActions = 16;
  constexpr size_t kPayload = 200 << 10;  // all 16 under gRPC's 4 MiB, for Get
  auto stored_bytes = [&] {
    grpc::ClientContext ctx;
    v1::Stats stats;
    EXPECT_TRUE(coordinator_->GetStats(&ctx, v1::StatsRequest(), &stats).ok());
    return stats.stored_bytes();
  };
  grpc::ClientContext begin_ctx;
  v1::BeginRequest begin;
  begin.set_name("sink.Large");
  begin.set_timeout_ms(60000);
  v1::BeginResponse begun;
  ASSERT_TRUE(coordinator_->Begin(&begin_ctx, begin, &begun).ok());
  const std::string id = begun.activity_id();
  for (int i = 0; i < kActions; ++i) {
    v1::EnlistRequest enlist;
    enlist.set_activity_id(id);
    enlist.set_participant("sink");
    enlist.set_action(absl::StrCat("step-", i));
    enlist.set_payload(PayloadFor(i, kPayload));
    uint64_t before = stored_bytes();
    grpc::ClientContext ctx;
    v1::EnlistResponse out;
    grpc::Status st = coordinator_->Enlist(&ctx, enlist, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
    uint64_t written = stored_bytes() - before;
    // The action itself, and none of the ones before it.
    EXPECT_GE(written, kPayload) << "enlist " << i + 1;
    EXPECT_LT(written, kPayload + 1024) << "enlist " << i + 1 << " of " << kActions;
  }
  // Every enlisted action was durable when answered: a kill -9 keeps them all.
  dtsd_->Kill();
  StartDtsd();
  auto kept = Get(id);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->state(), v1::ACTIVE);
  ASSERT_EQ(kept->actions_size(), kActions);
  for (int i = 0; i < kActions; ++i) {
    EXPECT_EQ(kept->actions(i).name(), absl::StrCat("step-", i));
    EXPECT_EQ(kept->actions(i).state(), v1::ENLISTED);
    EXPECT_TRUE(kept->actions(i).payload() == PayloadFor(i, kPayload)) << "action " << i;
  }
  // The decision writes no payload.
  uint64_t before = stored_bytes();
  grpc::ClientContext ctx;
  v1::ActivityRef ref;
  ref.set_activity_id(id);
  v1::DecisionResponse decided;
  ASSERT_TRUE(coordinator_->Commit(&ctx, ref, &decided).ok());
  EXPECT_LT(stored_bytes() - before, 4096u);
  AwaitQuiet(absl::Seconds(20));
  std::map<std::string, std::string> confirmed;
  for (const RecordingParticipant::Call& c : sink.calls()) {
    EXPECT_EQ(c.activity_id, id);
    EXPECT_TRUE(c.confirm) << c.action;
    confirmed[c.action] = c.payload;
  }
  ASSERT_EQ(confirmed.size(), static_cast<size_t>(kActions));
  for (int i = 0; i < kActions; ++i) {
    EXPECT_TRUE(confirmed[absl::StrCat("step-", i)] == PayloadFor(i, kPayload)) << "action " << i;
  }
  auto done = Get(id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::COMMITTED);
  ASSERT_EQ(done->actions_size(), kActions);
  for (int i = 0; i < kActions; ++i) {
    EXPECT_EQ(done->actions(i).state(), v1::CONFIRMED);
    EXPECT_TRUE(done->actions(i).payload() == PayloadFor(i, kPayload)) << "action " << i;
  }
}

TEST_F(DtsTest, AParticipantWithoutPhaseTwoBatchGetsEachConfirmWithItsPayload) {
  RecordingParticipant sink(/*batches=*/false);
  HostParticipant("sink", &sink);
  absl::Cleanup stop_serving = [&] { server_.reset(); };
  auto activity = Activity::Begin(rpc_.get(), Named("sink.Old"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    v1::EnlistRequest enlist;
    enlist.set_activity_id((*activity)->id());
    enlist.set_participant("sink");
    enlist.set_action(absl::StrCat("step-", i));
    enlist.set_payload(PayloadFor(i, 5000));
    v1::EnlistResponse out;
    ASSERT_TRUE(coordinator_->Enlist(&ctx, enlist, &out).ok());
  }
  ASSERT_TRUE((*activity)->Commit().ok());
  AwaitQuiet(absl::Seconds(20));
  std::map<std::string, std::string> confirmed;
  for (const RecordingParticipant::Call& c : sink.calls()) {
    EXPECT_TRUE(c.confirm) << c.action;
    confirmed[c.action] = c.payload;
  }
  ASSERT_EQ(confirmed.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(confirmed[absl::StrCat("step-", i)] == PayloadFor(i, 5000)) << "action " << i;
  }
}

// Before the store kept a record per action, each activity was one record
// "a/<id>" holding all its actions. Such a data directory opens: decided
// activities finish, undecided ones time out, finished ones are shown.
TEST_F(DtsTest, ADataDirectoryKeepingWholeActivitiesOpensAndFinishesThem) {
  RecordingParticipant sink;
  HostParticipant("sink", &sink);
  absl::Cleanup stop_serving = [&] { server_.reset(); };
  dtsd_->Kill();
  std::filesystem::remove_all(dir_.File("dtsd"));
  int64_t now = absl::ToUnixMillis(absl::Now());
  auto activity = [&](const std::string& id, v1::ActivityState state, int actions,
                      v1::ActionState action_state) {
    v1::Activity a;
    a.set_id(id);
    a.set_name("sink.Old");
    a.set_state(state);
    a.set_begun_unix_ms(now - 1000);
    a.set_deadline_unix_ms(now + 1000);
    if (state != v1::ACTIVE) a.set_decided_unix_ms(now - 500);
    if (state == v1::COMMITTED) a.set_finished_unix_ms(now - 400);
    for (int i = 0; i < actions; ++i) {
      v1::Action* x = a.add_actions();
      x->set_participant("sink");
      x->set_name(absl::StrCat(id, "/step-", i));
      x->set_payload(PayloadFor(i, 1000 + i));
      x->set_state(action_state);
      x->set_enlisted_unix_ms(now - 900);
    }
    return a;
  };
  const std::string committing = "00000001-000000000001";
  const std::string committed = "00000001-000000000002";
  const std::string active = "00000001-000000000003";
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir_.File("dtsd"), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    for (const v1::Activity& a : {activity(committing, v1::COMMITTING, 3, v1::ENLISTED),
                                  activity(committed, v1::COMMITTED, 2, v1::CONFIRMED),
                                  activity(active, v1::ACTIVE, 2, v1::ENLISTED)}) {
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "a/" + a.id(), a.SerializeAsString()).ok());
    }
  }
  StartDtsd();
  ASSERT_TRUE(dtsd_->WaitForOutput("converted 3 activities", absl::Seconds(5))) << dtsd_->Output();
  AwaitQuiet(absl::Seconds(20));
  std::map<std::string, RecordingParticipant::Call> calls;
  for (const RecordingParticipant::Call& c : sink.calls()) calls[c.action] = c;
  ASSERT_EQ(calls.size(), 5u) << "3 confirms and 2 cancels, none for the finished activity";
  for (auto [id, actions, confirm] :
       {std::tuple(committing, 3, true), std::tuple(active, 2, false)}) {
    for (int i = 0; i < actions; ++i) {
      const RecordingParticipant::Call& c = calls[absl::StrCat(id, "/step-", i)];
      EXPECT_EQ(c.activity_id, id);
      EXPECT_EQ(c.confirm, confirm) << c.action;
      EXPECT_TRUE(c.payload == PayloadFor(i, 1000 + i)) << c.action;
    }
  }
  // The converted records read back the same after another start.
  dtsd_->Kill();
  StartDtsd();
  for (auto [id, state, actions_state] : {std::tuple(committing, v1::COMMITTED, v1::CONFIRMED),
                                          std::tuple(committed, v1::COMMITTED, v1::CONFIRMED),
                                          std::tuple(active, v1::ROLLED_BACK, v1::CANCELLED)}) {
    auto a = Get(id);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->state(), state) << id;
    EXPECT_EQ(a->name(), "sink.Old");
    ASSERT_EQ(a->actions_size(), id == committing ? 3 : 2) << id;
    for (int i = 0; i < a->actions_size(); ++i) {
      EXPECT_EQ(a->actions(i).state(), actions_state) << id << " action " << i;
      EXPECT_TRUE(a->actions(i).payload() == PayloadFor(i, 1000 + i)) << id << " action " << i;
    }
  }
  EXPECT_EQ(Get(active)->reason(), "timed out after 2s");
}

TEST_F(DtsTest, ConfirmsReachAParticipantThatWasDownWhenItReturns) {
  auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  ASSERT_TRUE((*activity)
                  ->Run([&] {
                    absl::Status s = Move("bank.a", true, 1, 100);
                    return s.ok() ? Move("bank.b", false, 2, 100) : s;
                  })
                  .ok());
  b_->Kill();
  ASSERT_TRUE((*activity)->Commit().ok());
  absl::SleepFor(absl::Milliseconds(1500));
  auto seen = Get((*activity)->id());
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->state(), v1::COMMITTING) << seen->DebugString();
  const v1::Action& credit = seen->actions(1);
  EXPECT_EQ(credit.participant(), "bank.b.dts");
  EXPECT_EQ(credit.state(), v1::ENLISTED);
  EXPECT_GE(credit.attempts(), 1u);
  EXPECT_FALSE(credit.last_error().empty());
  b_ = StartBank("bank.b");
  AwaitQuiet(absl::Seconds(20));
  auto done = Get((*activity)->id());
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::COMMITTED);
  ExpectBooksBalance();
  EXPECT_EQ(ReadBooks(BankDb("bank.b")).balance, kAccounts * kInitial + 100);
}

TEST_F(DtsTest, AnUndecidedActivityTimesOutAndRollsBack) {
  auto activity =
      Activity::Begin(rpc_.get(), BegunAtDtsd("bank.Transfer", absl::Milliseconds(500)));
  ASSERT_TRUE(activity.ok()) << activity.status();
  ASSERT_TRUE((*activity)->Run([&] { return Move("bank.a", true, 3, 70); }).ok());
  EXPECT_EQ(ReadBooks(BankDb("bank.a")).frozen, 70);
  AwaitQuiet(absl::Seconds(10));
  auto seen = Get((*activity)->id());
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->state(), v1::ROLLED_BACK);
  EXPECT_EQ(seen->reason(), "timed out after 500ms");
  EXPECT_EQ(ReadBooks(BankDb("bank.a")).frozen, 0) << "the cancel released the frozen money";
  absl::Status late = (*activity)->Commit();
  EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(late.message().find("is ROLLED_BACK (timed out after 500ms); cannot commit"),
            absl::string_view::npos)
      << late;
  // A try for it now is refused: it cannot enlist.
  absl::Status again = (*activity)->Run([&] { return Move("bank.a", true, 3, 70); });
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
  ExpectBooksBalance();
}

TEST_F(DtsTest, AnUndecidedActivityBegunHereIsRolledBackThroughTheParticipantsCheckBack) {
  auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer", absl::Milliseconds(500)));
  ASSERT_TRUE(activity.ok()) << activity.status();
  const std::string id = (*activity)->id();
  ASSERT_TRUE((*activity)->Run([&] { return Move("bank.a", true, 3, 70); }).ok());
  Books a = ReadBooks(BankDb("bank.a"));
  EXPECT_EQ(a.frozen, 70);
  EXPECT_EQ(a.pending, 1) << "the try waits for its outcome in the bank";
  EXPECT_EQ(Get(id).status().code(), absl::StatusCode::kNotFound) << "dtsd has not heard of it";
  AwaitQuiet(absl::Seconds(10));
  auto seen = Get(id);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->state(), v1::ROLLED_BACK);
  EXPECT_EQ(seen->reason(), "not decided by its deadline");
  EXPECT_EQ(ReadBooks(BankDb("bank.a")).frozen, 0) << "the bank's own cancel released it";
  absl::Status late = (*activity)->Commit();
  EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
  EXPECT_NE(late.message().find("is ROLLED_BACK (not decided by its deadline); cannot commit"),
            absl::string_view::npos)
      << late;
  ExpectBooksBalance();
}

TEST_F(DtsTest, ATryWhoseReportNeverReachedTheInitiatorIsConfirmedThroughItsCheckBack) {
  auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer", absl::Seconds(1)));
  ASSERT_TRUE(activity.ok()) << activity.status();
  const std::string id = (*activity)->id();
  ASSERT_TRUE((*activity)->Run([&] { return Move("bank.a", true, 4, 30); }).ok());
  // Made outside Run with the id given by hand: its report reaches no one.
  rpc::CallOptions by_hand;
  by_hand.context.txn_id = id;
  ASSERT_TRUE(Move("bank.b", false, 5, 30, by_hand).ok());
  ASSERT_TRUE((*activity)->Commit().ok());
  auto seen = Get(id);
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_EQ(seen->actions_size(), 1) << seen->DebugString();
  EXPECT_EQ(seen->actions(0).participant(), "bank.a.dts");
  EXPECT_TRUE(seen->actions(0).payload_at_participant());
  AwaitQuiet(absl::Seconds(15));
  Books b = ReadBooks(BankDb("bank.b"));
  EXPECT_EQ(b.barrier[id].count("confirm"), 1u) << "bank.b asked dtsd and confirmed";
  EXPECT_EQ(b.balance, kAccounts * kInitial + 30);
  ExpectBooksBalance();
}

TEST_F(DtsTest, KillingTheInitiatorMidActivityLeavesEveryActionConfirmedOrCancelled) {
  std::set<std::string> committed;
  std::mt19937 rng(11);
  for (int round = 0; round < 3; ++round) {
    auto client = Subprocess::Start(
        {formica::testing::BinaryPath("tests/dts/transfer_client"), "--registry", dsrd_->address(),
         "--threads", "16", "--accounts", std::to_string(kAccounts), "--timeout-ms", "2000"},
        dir_.File(absl::StrCat("transfer_client.", round, ".log")));
    ASSERT_TRUE(client.ok()) << client.status();
    auto commits = [&] { return (*client)->CountInOutput("committed "); };
    absl::Time until = absl::Now() + absl::Seconds(30);
    while (commits() < 50 && absl::Now() < until) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_GE(commits(), 50u) << (*client)->Output();
    absl::SleepFor(absl::Milliseconds(rng() % 200));  // land the kill anywhere in the load
    (*client)->Kill();                                // SIGKILL: tries out, nothing decided
    for (absl::string_view line : absl::StrSplit((*client)->Output(), '\n')) {
      if (absl::ConsumePrefix(&line, "committed ")) committed.insert(std::string(line));
    }
  }
  // Tries the kill caught undecided wait for their deadline (2s), then each
  // bank asks dtsd, which rolls back what it never saw committed.
  AwaitQuiet(absl::Seconds(60));
  ExpectBooksBalance();
  Books a = ReadBooks(BankDb("bank.a"));
  Books b = ReadBooks(BankDb("bank.b"));
  int cancelled = 0;
  for (const auto& [id, phases] : a.barrier) cancelled += phases.count("cancel") > 0;
  for (const std::string& id : committed) {
    EXPECT_EQ(a.barrier[id].count("confirm"), 1u) << id << " was committed";
    EXPECT_EQ(b.barrier[id].count("confirm"), 1u) << id << " was committed";
  }
  std::printf(
      "%zu activities committed, %d cancelled in bank.a, across 3 kill -9 of the "
      "initiator\n",
      committed.size(), cancelled);
}

TEST_F(DtsTest, BadRequestsGetClearErrorsAndChangeNothing) {
  auto unknown = Get("ffffffff-000000000001");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.status().message(), "no activity ffffffff-000000000001");

  auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  ASSERT_TRUE((*activity)->Rollback("testing").ok());
  ASSERT_TRUE((*activity)->Rollback("testing").ok()) << "a repeat is a success";
  absl::Status commit = (*activity)->Commit();
  EXPECT_EQ(commit.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(commit.message().find(absl::StrCat("activity ", (*activity)->id(),
                                               " is ROLLED_BACK (testing); cannot commit")),
            absl::string_view::npos)
      << commit;

  auto nameless = Activity::Begin(rpc_.get(), {});
  EXPECT_EQ(nameless.status().code(), absl::StatusCode::kInvalidArgument);
  grpc::ClientContext ctx;
  v1::BeginRequest too_long;
  too_long.set_name("x");
  too_long.set_timeout_ms(48u * 3600 * 1000);
  v1::BeginResponse resp;
  grpc::Status st = coordinator_->Begin(&ctx, too_long, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("exceeds the coordinator's maximum"), std::string::npos);
  // Names follow the rule every Formica name follows: never "." or "..".
  grpc::ClientContext dots_ctx;
  v1::BeginRequest dots;
  dots.set_name("..");
  st = coordinator_->Begin(&dots_ctx, dots, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(),
            "name '..' is not allowed: '..' means the current or parent directory in the paths "
            "names become");

  // A try outside any activity is refused before it touches the database.
  absl::Status outside = Move("bank.a", true, 1, 10);
  EXPECT_EQ(outside.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(outside.message().find("outside a business activity"), absl::string_view::npos)
      << outside;
  ExpectBooksBalance();
  EXPECT_EQ(ReadBooks(BankDb("bank.a")).balance, kAccounts * kInitial);
}

TEST_F(DtsTest, FinishedActivitiesAreListedNewestFirstAndRemovedAfterTheirRetention) {
  dtsd_->Kill();
  StartDtsd({"--set", "activity.finished_retention=2s", "--set", "activity.sweep_interval=100ms"});
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer", absl::Milliseconds(500)));
    ASSERT_TRUE(activity.ok()) << activity.status();
    ASSERT_TRUE((*activity)->Commit().ok());
    ids.push_back((*activity)->id());
    absl::SleepFor(absl::Milliseconds(3));  // ids of initiators sort by deadline, in ms
  }
  // Begun by its initiator, it stays until its deadline too is past the
  // retention: a participant's check-back within it must find it.
  auto far = Activity::Begin(rpc_.get(), Named("bank.Transfer", absl::Seconds(60)));
  ASSERT_TRUE(far.ok()) << far.status();
  ASSERT_TRUE((*far)->Commit().ok());
  // One begun at dtsd and still open is never swept.
  auto open = Activity::Begin(rpc_.get(), BegunAtDtsd("bank.Transfer", absl::Seconds(60)));
  ASSERT_TRUE(open.ok()) << open.status();
  grpc::ClientContext ctx;
  v1::ListRequest req;
  req.add_states(v1::COMMITTED);
  req.set_limit(3);
  v1::ListResponse resp;
  ASSERT_TRUE(coordinator_->List(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.activities_size(), 3);
  EXPECT_EQ(resp.activities(0).id(), (*far)->id()) << "the latest deadline first";
  EXPECT_EQ(resp.activities(1).id(), ids[2]) << "newest first";
  EXPECT_EQ(resp.activities(2).id(), ids[1]);
  // One begun at dtsd and committed goes too, though its id sorts after the
  // initiators' (its epoch is the wall-clock second, "6...").
  auto begun = Activity::Begin(rpc_.get(), BegunAtDtsd("bank.Transfer", absl::Seconds(60)));
  ASSERT_TRUE(begun.ok()) << begun.status();
  ASSERT_TRUE((*begun)->Commit().ok());
  ASSERT_GT((*begun)->id(), ids[2]) << "it sorts after the initiators' ids";
  ids.push_back((*begun)->id());
  absl::SleepFor(absl::Seconds(3));
  for (const std::string& id : ids) {
    EXPECT_EQ(Get(id).status().code(), absl::StatusCode::kNotFound) << id << " outlived retention";
  }
  auto kept = Get((*far)->id());
  ASSERT_TRUE(kept.ok()) << "finished, but its deadline is not past the retention yet";
  EXPECT_EQ(kept->state(), v1::COMMITTED);
  auto still = Get((*open)->id());
  ASSERT_TRUE(still.ok()) << "an unfinished activity is never swept";
  EXPECT_EQ(still->state(), v1::ACTIVE);
}

TEST_F(DtsTest, AMalformedConfigStopsDtsdNamingTheKey) {
  std::string path = dir_.File("bad-dtsd.yaml");
  {
    std::ofstream out(path);
    out << "phase_two:\n  retry_max: forever\n";
  }
  auto p = Subprocess::Start({formica::testing::BinaryPath("dts/dtsd"), "--config", path},
                             dir_.File("bad-dtsd.log"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 2);
  EXPECT_NE((*p)->Output().find(path + ":2: phase_two.retry_max: expected a duration"),
            std::string::npos)
      << (*p)->Output();
}

TEST_F(DtsTest, FormicactlWatchesDtsdsRatesLive) {
  std::atomic<bool> stop{false};
  std::atomic<int> committed{0};
  std::thread load([&] {
    while (!stop.load()) {
      absl::Status st = RunActivity(rpc_.get(), Named("bank.Transfer"), [&] {
        absl::Status s = Move("bank.a", true, 1, 1);
        return s.ok() ? Move("bank.b", false, 2, 1) : s;
      });
      if (st.ok()) ++committed;
    }
  });
  auto run = [&](const std::string& output, const std::string& log) {
    auto p = Subprocess::Start({formica::testing::BinaryPath("tools/formicactl"), "--dts",
                                absl::StrCat("127.0.0.1:", dtsd_port_), "-o", output, "dts",
                                "stats", "--watch", "--limit", "3"},
                               dir_.File(log));
    EXPECT_TRUE(p.ok());
    EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 0) << (*p)->Output();
    return (*p)->Output();
  };
  std::string json = run("json", "watch-json.log");
  std::string text = run("text", "watch-text.log");
  stop = true;
  load.join();
  ASSERT_GT(committed.load(), 0);
  // One JSON object a line, a line a second.
  auto field = [](absl::string_view line, const std::string& key) {
    size_t at = line.find("\"" + key + "\":");
    return at == absl::string_view::npos
               ? -1.0
               : std::strtod(std::string(line.substr(at + key.size() + 3)).c_str(), nullptr);
  };
  std::vector<std::string> lines = absl::StrSplit(json, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << json;
  // A loaded machine may stall the load for a whole second: each line with
  // commits must show their cost, and at least one line must have some.
  double committed_in_all = 0;
  for (const std::string& line : lines) {
    double per_s = field(line, "committed_per_s");
    ASSERT_GE(per_s, 0) << line;
    committed_in_all += per_s;
    if (per_s > 0) {
      EXPECT_GT(field(line, "cpu_ms_per_activity"), 0) << line;
      EXPECT_GE(field(line, "writes_per_sync"), 1) << line;
    }
    EXPECT_GE(field(line, "unfinished"), 0) << line;
  }
  EXPECT_GT(committed_in_all, 0) << json;
  EXPECT_EQ(text.rfind("  BEGUN/S COMMITTED/S ROLLED_BACK/S", 0), 0u) << text;
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(text, '\n', absl::SkipEmpty())).size(), 4u)
      << text;
}

TEST_F(DtsTest, FormicactlListsShowsRetriesAndSettlesAStuckActivity) {
  auto run = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tools/formicactl"), "--dts",
                                     absl::StrCat("127.0.0.1:", dtsd_port_)};
    argv.insert(argv.end(), args.begin(), args.end());
    static int n = 0;
    auto p = Subprocess::Start(argv, dir_.File("ctl" + std::to_string(++n) + ".log"));
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait(absl::Seconds(20));
    return std::make_pair(code, (*p)->Output());
  };
  auto activity = Activity::Begin(rpc_.get(), Named("bank.Transfer"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  std::string id = (*activity)->id();
  ASSERT_TRUE((*activity)
                  ->Run([&] {
                    absl::Status s = Move("bank.a", true, 1, 5);
                    return s.ok() ? Move("bank.b", false, 2, 5) : s;
                  })
                  .ok());
  b_->Kill();  // bank B is gone for good: the confirm of its credit cannot land
  ASSERT_TRUE((*activity)->Commit().ok());
  absl::SleepFor(absl::Milliseconds(800));

  auto [code, out] = run({"dts", "ls"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find(id), std::string::npos) << out;
  EXPECT_NE(out.find("COMMITTING"), std::string::npos) << out;
  EXPECT_NE(out.find("1/2"), std::string::npos) << "bank A confirmed, bank B not: " << out;
  std::tie(code, out) = run({"dts", "show", id});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("bank.b.dts"), std::string::npos) << out;
  EXPECT_NE(out.find("UNAVAILABLE"), std::string::npos) << "the last error is shown: " << out;
  // The same for scripts: one JSON document each, read back into the proto.
  std::tie(code, out) = run({"--output", "json", "dts", "show", id});
  EXPECT_EQ(code, 0) << out;
  auto shown = formica::testing::ParseJson<v1::Activity>(out);
  ASSERT_TRUE(shown.ok()) << shown.status();
  EXPECT_EQ(shown->id(), id);
  EXPECT_EQ(shown->state(), v1::COMMITTING);
  ASSERT_EQ(shown->actions_size(), 2);
  EXPECT_EQ(shown->actions(0).state(), v1::CONFIRMED);
  EXPECT_EQ(shown->actions(1).participant(), "bank.b.dts");
  EXPECT_GT(shown->actions(1).attempts(), 0u);
  EXPECT_NE(shown->actions(1).last_error().find("UNAVAILABLE"), std::string::npos) << out;
  EXPECT_NE(out.find("\"state\": \"COMMITTING\""), std::string::npos) << "enums by name: " << out;
  std::tie(code, out) = run({"-o", "json", "dts", "ls"});
  EXPECT_EQ(code, 0) << out;
  auto listed = formica::testing::ParseJson<v1::ListResponse>(out);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->activities_size(), 1) << out;
  EXPECT_EQ(listed->activities(0).id(), id);
  std::tie(code, out) = run({"dts", "retry", id, "--yes", "-o", "json"});
  EXPECT_EQ(code, 0) << out;
  auto retried = formica::testing::ParseJson<v1::DecisionResponse>(out);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->state(), v1::COMMITTING);
  std::tie(code, out) = run({"dts", "retry", id, "--yes"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find(id + ": COMMITTING"), std::string::npos) << out;
  // Without a reason, or without a yes on the terminal, settle does nothing.
  std::tie(code, out) = run({"dts", "settle", id});
  EXPECT_EQ(code, 2) << out;
  std::tie(code, out) = run({"dts", "settle", id, "--reason", "credited by hand, ticket 42"});
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("nothing done"), std::string::npos) << out;
  EXPECT_EQ(Get(id)->state(), v1::COMMITTING);
  std::tie(code, out) =
      run({"dts", "settle", id, "--reason", "credited by hand, ticket 42", "--yes"});
  EXPECT_EQ(code, 0) << out;
  auto settled = Get(id);
  ASSERT_TRUE(settled.ok()) << settled.status();
  EXPECT_EQ(settled->state(), v1::COMMITTED);
  EXPECT_EQ(settled->actions(0).state(), v1::CONFIRMED);
  EXPECT_EQ(settled->actions(1).state(), v1::SETTLED);
  EXPECT_NE(settled->reason().find("settled by an operator: credited by hand, ticket 42"),
            std::string::npos);
  std::tie(code, out) = run({"dts", "ls", "--state", "COMMITTED"});
  EXPECT_NE(out.find(id), std::string::npos) << out;
  std::tie(code, out) = run({"dts", "ls", "--state", "DONE"});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("unknown state 'DONE'"), std::string::npos) << out;
  std::tie(code, out) = run({"dts", "stats"});
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.find("committed 1"), std::string::npos) << out;
  EXPECT_NE(out.find("stored_bytes "), std::string::npos) << out;
  EXPECT_EQ(out.find("stored_bytes 0\n"), std::string::npos) << out;  // the activity was stored
  std::tie(code, out) = run({"-o", "json", "dts", "stats"});
  EXPECT_EQ(code, 0) << out;
  auto stats = formica::testing::ParseJson<v1::Stats>(out);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->committed(), 1u);
  EXPECT_EQ(stats->begun(), 1u);
}

// What the initiator's library logs, captured through formica::SetLogSink.
class CapturedLog {
 public:
  CapturedLog() {
    SetLogSink([this](const LogRecord& r) {
      absl::MutexLock lock(&mu_);
      lines_.emplace_back(r.level, std::string(r.message));
    });
  }
  ~CapturedLog() { SetLogSink(nullptr); }
  // The lines at `level` or above that mention `text`.
  std::vector<std::string> Find(LogLevel level, const std::string& text) {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> found;
    for (const auto& [l, line] : lines_) {
      if (l >= level && line.find(text) != std::string::npos) found.push_back(line);
    }
    return found;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<LogLevel, std::string>> lines_;
};

TEST_F(DtsTest, AFailedCommitIsTheCallersErrorAndTheDestructorAddsNothing) {
  CapturedLog log;
  auto committed = Activity::Begin(rpc_.get(), Named("bank.Transfer", absl::Seconds(2)));
  ASSERT_TRUE(committed.ok()) << committed.status();
  std::string committed_id = (*committed)->id();
  ASSERT_TRUE((*committed)->Run([&] { return Move("bank.a", true, 1, 5); }).ok());
  auto abandoned = Activity::Begin(rpc_.get(), Named("bank.Transfer", absl::Seconds(2)));
  ASSERT_TRUE(abandoned.ok()) << abandoned.status();
  std::string abandoned_id = (*abandoned)->id();
  ASSERT_TRUE((*abandoned)->Run([&] { return Move("bank.a", true, 2, 5); }).ok());

  dtsd_->Kill();
  absl::Status st = (*committed)->Commit();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("the outcome of activity " + committed_id + " is unknown"),
            absl::string_view::npos)
      << st;
  committed->reset();  // its caller has the error: nothing more is sent or logged
  EXPECT_THAT(log.Find(LogLevel::kInfo, committed_id), ::testing::IsEmpty());
  // Left undecided, with the coordinator away: one warning, naming it.
  abandoned->reset();
  EXPECT_EQ(log.Find(LogLevel::kWarn, abandoned_id).size(), 1u);

  // Neither decision reached dtsd: their timeouts roll both back.
  StartDtsd();
  for (const std::string& id : {committed_id, abandoned_id}) {
    absl::StatusOr<v1::Activity> a;
    absl::Time until = absl::Now() + absl::Seconds(20);
    while (absl::Now() < until && (!(a = Get(id)).ok() || a->state() != v1::ROLLED_BACK)) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->state(), v1::ROLLED_BACK) << a->DebugString();
  }
  AwaitQuiet(absl::Seconds(20));
  ExpectBooksBalance();
}

// The barrier, driven directly: a participant in this process, its
// Participant service called as dtsd would call it.
class BarrierTest : public DtsTest {
 protected:
  void SetUp() override {
    DtsTest::SetUp();
    ParticipantOptions po;
    po.name = "ledger.dts";
    po.database = dir_.File("ledger.db");
    auto p = Participant::Open(po, rpc_.get());
    ASSERT_TRUE(p.ok()) << p.status();
    participant_ = std::move(*p);
    participant_->Declare(
        "book",
        [this](sqlite3*, const ActionCall& c) {
          absl::MutexLock lock(&mu_);
          confirms_[c.activity_id]++;
          return absl::OkStatus();
        },
        [this](sqlite3*, const ActionCall& c) {
          absl::MutexLock lock(&mu_);
          cancels_[c.activity_id]++;
          return absl::OkStatus();
        });
    HostParticipant(participant_->name(), participant_->service());
  }
  void TearDown() override {
    server_.reset();
    participant_.reset();
    DtsTest::TearDown();
  }

  grpc::Status PhaseTwo(bool confirm, const std::string& id) {
    grpc::ClientContext ctx;
    v1::PhaseTwoRequest req;
    req.set_activity_id(id);
    req.set_action("book");
    v1::PhaseTwoResponse resp;
    return confirm ? stub_->Confirm(&ctx, req, &resp) : stub_->Cancel(&ctx, req, &resp);
  }

  int Tried(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return tries_[id];
  }

  absl::Status TryBook(const std::string& id) {
    return participant_->Try(id, "book", "", [&](sqlite3*) {
      absl::MutexLock lock(&mu_);
      tries_[id]++;
      return absl::OkStatus();
    });
  }

  std::unique_ptr<Participant> participant_;
  absl::Mutex mu_;
  std::map<std::string, int> tries_, confirms_, cancels_;
};

TEST_F(BarrierTest, ConfirmAndCancelAreIdempotent) {
  auto one = Activity::Begin(rpc_.get(), Named("ledger.Book"));
  auto two = Activity::Begin(rpc_.get(), Named("ledger.Book"));
  ASSERT_TRUE(one.ok() && two.ok());
  ASSERT_TRUE(TryBook((*one)->id()).ok());
  ASSERT_TRUE(TryBook((*one)->id()).ok()) << "a repeated try is a no-op success";
  EXPECT_EQ(Tried((*one)->id()), 1);
  ASSERT_TRUE(TryBook((*two)->id()).ok());
  ASSERT_TRUE((*one)->Commit().ok());
  ASSERT_TRUE((*two)->Rollback("no").ok());
  AwaitQuiet(absl::Seconds(10));
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(PhaseTwo(true, (*one)->id()).ok());
    EXPECT_TRUE(PhaseTwo(false, (*two)->id()).ok());
  }
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(confirms_[(*one)->id()], 1);
  EXPECT_EQ(cancels_[(*two)->id()], 1);
  EXPECT_EQ(cancels_[(*one)->id()], 0);
  EXPECT_EQ(confirms_[(*two)->id()], 0);
}

TEST_F(BarrierTest, CancelBeforeTryIsAnEmptyRollbackAndBarsTheLateTry) {
  auto activity = Activity::Begin(rpc_.get(), Named("ledger.Book"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  std::string id = (*activity)->id();
  // The initiator gave up (say its try call timed out) before the try ran.
  ASSERT_TRUE(PhaseTwo(false, id).ok()) << "a cancel with no try succeeds";
  {
    absl::MutexLock lock(&mu_);
    EXPECT_EQ(cancels_[id], 0) << "an empty rollback runs no cancel step";
  }
  absl::Status late = TryBook(id);
  EXPECT_EQ(late.code(), absl::StatusCode::kAborted) << late;
  EXPECT_NE(late.message().find("was cancelled before its try arrived"), absl::string_view::npos);
  EXPECT_EQ(Tried(id), 0) << "the late try's body never ran";
  // A confirm with no try is an inconsistency for an operator, not a no-op.
  auto other = Activity::Begin(rpc_.get(), Named("ledger.Book"));
  ASSERT_TRUE(other.ok()) << other.status();
  grpc::Status confirm = PhaseTwo(true, (*other)->id());
  EXPECT_EQ(confirm.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(confirm.error_message().find("nothing to confirm"), std::string::npos);
}

TEST_F(BarrierTest, AnActionEnlistedTwiceWithAnotherPayloadIsRefused) {
  auto activity = Activity::Begin(rpc_.get(), Named("ledger.Book"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  std::string id = (*activity)->id();
  ASSERT_TRUE(participant_->Try(id, "book", "100", [](sqlite3*) { return absl::OkStatus(); }).ok());
  absl::Status other =
      participant_->Try(id, "book", "250", [](sqlite3*) { return absl::OkStatus(); });
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
  EXPECT_NE(other.message().find("already enlisted"), absl::string_view::npos) << other;
  EXPECT_TRUE(participant_->Try(id, "book", "100", [](sqlite3*) { return absl::OkStatus(); }).ok())
      << "the same payload again is a repeat";
}

TEST_F(BarrierTest, ConfirmAfterCancelIsRefusedNotApplied) {
  auto activity = Activity::Begin(rpc_.get(), Named("ledger.Book"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  std::string id = (*activity)->id();
  ASSERT_TRUE(TryBook(id).ok());
  ASSERT_TRUE(PhaseTwo(false, id).ok());
  grpc::Status confirm = PhaseTwo(true, id);
  EXPECT_EQ(confirm.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(confirm.error_message().find("was already cancelled"), std::string::npos);
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(confirms_[id], 0);
  EXPECT_EQ(cancels_[id], 1);
}

TEST_F(BarrierTest, BodiesCannotEndOrNestTheirTransaction) {
  auto activity = Activity::Begin(rpc_.get(), Named("ledger.Book"));
  ASSERT_TRUE(activity.ok()) << activity.status();
  std::string id = (*activity)->id();
  absl::Status nested = participant_->Try(id, "book", "", [&](sqlite3*) {
    return participant_->Transaction([](sqlite3*) { return absl::OkStatus(); });
  });
  EXPECT_EQ(nested.code(), absl::StatusCode::kFailedPrecondition) << nested;
  absl::Status commit_inside = participant_->Transaction([](sqlite3* db) {
    return sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK
               ? absl::OkStatus()
               : absl::PermissionDeniedError(sqlite3_errmsg(db));
  });
  EXPECT_EQ(commit_inside.code(), absl::StatusCode::kPermissionDenied) << commit_inside;
  EXPECT_NE(commit_inside.message().find("not authorized"), absl::string_view::npos);
  // The participant still works.
  EXPECT_TRUE(TryBook(id).ok());
  EXPECT_EQ(Tried(id), 1);
}

// The barrier through DDS: a ShardedParticipant whose accounts are split
// over two SQLite databases by user id; each action runs, with its barrier
// row, on its user's shard. dtsd drives phase two as for any participant.
class ShardedBarrierTest : public DtsTest {
 protected:
  static constexpr int64_t kAlice = 101;  // shard 1, database east
  static constexpr int64_t kBob = 299;    // shard 99, database west

  // Two databases, east (shards 0-49) and west (50-99).
  virtual dds::DataSourceConfig Databases() {
    dds::DataSourceConfig c;
    c.databases = {{"east", dds::DatabaseKind::kSqlite, dir_.File("east.db"), {}, 4, {}},
                   {"west", dds::DatabaseKind::kSqlite, dir_.File("west.db"), {}, 4, {}}};
    return c;
  }

  void SetUp() override {
    DtsTest::SetUp();
    dds::DataSourceConfig c = Databases();
    if (HasFatalFailure()) return;
    c.sharded_tables = {{"accounts", "user_id"},
                        {"formica_dts_barrier", "shard_key"},
                        {"formica_dts_pending", "shard_key"}};
    auto ds = dds::ShardedDataSource::Open(c);
    ASSERT_TRUE(ds.ok()) << ds.status();
    ds_ = std::move(*ds);
    ASSERT_TRUE(ds_->Execute("CREATE TABLE accounts (user_id bigint PRIMARY KEY, balance bigint "
                             "NOT NULL, frozen bigint NOT NULL, incoming bigint NOT NULL)")
                    .ok());
    auto inserted = ds_->Execute(
        "INSERT INTO accounts (user_id, balance, frozen, incoming) VALUES ($1, 1000, 0, 0), "
        "($2, 1000, 0, 0)",
        {kAlice, kBob});
    ASSERT_TRUE(inserted.ok()) << inserted.status();
    ShardedParticipantOptions po;
    po.name = "fund.ledger";
    po.check_back_interval = absl::Milliseconds(200);
    auto p = ShardedParticipant::Open(po, rpc_.get(), ds_.get());
    ASSERT_TRUE(p.ok()) << p.status();
    participant_ = std::move(*p);
    auto amount = [](const ActionCall& c) { return dds::Value(std::stoll(c.payload)); };
    auto run = [](dds::Transaction* tx, const char* sql, const dds::Value& user,
                  const dds::Value& amount) -> absl::Status {
      auto r = tx->Execute(sql, {user, amount});
      if (!r.ok()) return r.status();
      return r->rows_affected == 1 ? absl::OkStatus()
                                   : absl::FailedPreconditionError("no such account");
    };
    participant_->Declare(
        "debit",
        [=](dds::Transaction* tx, const ActionCall& c) {
          return run(tx, "UPDATE accounts SET frozen = frozen - $2 WHERE user_id = $1", kAlice,
                     amount(c));
        },
        [=](dds::Transaction* tx, const ActionCall& c) {
          return run(tx,
                     "UPDATE accounts SET balance = balance + $2, frozen = frozen - $2 WHERE "
                     "user_id = $1",
                     kAlice, amount(c));
        });
    participant_->Declare(
        "credit",
        [=](dds::Transaction* tx, const ActionCall& c) {
          return run(tx,
                     "UPDATE accounts SET balance = balance + $2, incoming = incoming - $2 WHERE "
                     "user_id = $1",
                     kBob, amount(c));
        },
        [=](dds::Transaction* tx, const ActionCall& c) {
          return run(tx, "UPDATE accounts SET incoming = incoming - $2 WHERE user_id = $1", kBob,
                     amount(c));
        });
    HostParticipant(participant_->name(), participant_->service());
  }
  void TearDown() override {
    server_.reset();
    participant_.reset();
    ds_.reset();
    DtsTest::TearDown();
  }

  absl::Status Debit(const std::string& id, int64_t amount) {
    return participant_->Try(
        id, kAlice, "debit", std::to_string(amount), [&](dds::Transaction* tx) -> absl::Status {
          auto r = tx->Execute(
              "UPDATE accounts SET balance = balance - $2, frozen = frozen + "
              "$2 WHERE user_id = $1 AND balance >= $2",
              {kAlice, amount});
          if (!r.ok()) return r.status();
          return r->rows_affected == 1 ? absl::OkStatus()
                                       : absl::FailedPreconditionError("insufficient funds");
        });
  }
  absl::Status Credit(const std::string& id, int64_t amount) {
    return participant_->Try(id, kBob, "credit", std::to_string(amount), [&](dds::Transaction* tx) {
      return tx
          ->Execute(
              "UPDATE accounts SET incoming = incoming + $2 WHERE "
              "user_id = $1",
              {kBob, amount})
          .status();
    });
  }
  std::vector<int64_t> Account(int64_t user) {
    auto r =
        ds_->Execute("SELECT balance, frozen, incoming FROM accounts WHERE user_id = $1", {user});
    EXPECT_TRUE(r.ok() && r->rows.size() == 1) << r.status();
    if (!r.ok() || r->rows.size() != 1) return {};
    std::vector<int64_t> out;
    for (const dds::Value& v : r->rows[0]) out.push_back(std::get<int64_t>(v));
    return out;
  }
  grpc::Status PhaseTwo(bool confirm, const std::string& id, const std::string& action,
                        int64_t user, int64_t amount) {
    grpc::ClientContext ctx;
    v1::PhaseTwoRequest req;
    req.set_activity_id(id);
    req.set_action(action);
    // As the try enlisted it: the shard key travels with the payload.
    req.set_payload(absl::StrCat("formica.dds:i:", user, "\n", amount));
    v1::PhaseTwoResponse resp;
    return confirm ? stub_->Confirm(&ctx, req, &resp) : stub_->Cancel(&ctx, req, &resp);
  }

  // 4 threads each run activities moving 10.. from Alice to Bob, one in
  // three rolled back; returns what the committed ones moved. Then checks
  // the accounts once dtsd has finished every activity.
  int64_t Transfers() {
    std::atomic<int64_t> moved{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 10; ++i) {
          auto activity = Activity::Begin(rpc_.get(), Named("fund.Transfer"));
          ASSERT_TRUE(activity.ok()) << activity.status();
          const std::string id = (*activity)->id();
          const int64_t amount = 10 + t * 10 + i;
          // Inside Run: each try reports itself back to the activity.
          ASSERT_TRUE((*activity)->Run([&] { return Debit(id, amount); }).ok());
          ASSERT_TRUE((*activity)->Run([&] { return Credit(id, amount); }).ok());
          if (i % 3 == 2) {
            ASSERT_TRUE((*activity)->Rollback("changed my mind").ok());
          } else {
            ASSERT_TRUE((*activity)->Commit().ok());
            moved += amount;
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    AwaitSettled(absl::Seconds(30));
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{1000 - moved, 0, 0}));
    EXPECT_EQ(Account(kBob), (std::vector<int64_t>{1000 + moved, 0, 0}));
    return moved;
  }

  // Tries waiting for their outcome, over every shard.
  int64_t Pending() {
    auto r = ds_->Execute("SELECT count(*) FROM formica_dts_pending");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && !r->rows.empty() ? std::get<int64_t>(r->rows[0][0]) : -1;
  }

  // Waits until dtsd has finished every activity and no try is pending.
  void AwaitSettled(absl::Duration timeout) {
    absl::Time until = absl::Now() + timeout;
    std::string last;
    while (absl::Now() < until) {
      auto u = Unfinished();
      int64_t pending = Pending();
      if (u.ok() && u->empty() && pending == 0) return;
      last = !u.ok()
                 ? u.status().ToString()
                 : absl::StrCat(u->size(), " unfinished activities, ", pending, " tries pending");
      absl::SleepFor(absl::Milliseconds(50));
    }
    FAIL() << "not settled after " << timeout << ": " << last;
  }

  // Waits until Alice's account reads `want`; false after `timeout`.
  bool AwaitAlice(const std::vector<int64_t>& want, absl::Duration timeout) {
    absl::Time until = absl::Now() + timeout;
    while (absl::Now() < until) {
      if (Account(kAlice) == want) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return Account(kAlice) == want;
  }

  // A try inside Run reaches dtsd with the commit, not by an enlist: the
  // action is listed as joined, its route (the shard key) is what phase
  // two gets, and the confirm comes long before the deadline.
  void ReportReachesTheCommit() {
    auto activity = Activity::Begin(rpc_.get(), Named("fund.Transfer", absl::Seconds(60)));
    ASSERT_TRUE(activity.ok()) << activity.status();
    const std::string id = (*activity)->id();
    ASSERT_TRUE((*activity)->Run([&] { return Debit(id, 7); }).ok());
    ASSERT_TRUE((*activity)->Run([&] { return Credit(id, 7); }).ok());
    EXPECT_EQ(Get(id).status().code(), absl::StatusCode::kNotFound) << "nothing was enlisted";
    EXPECT_EQ(Pending(), 2);
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{993, 7, 0}));
    ASSERT_TRUE((*activity)->Commit().ok());
    auto seen = Get(id);
    ASSERT_TRUE(seen.ok()) << seen.status();
    ASSERT_EQ(seen->actions_size(), 2) << seen->DebugString();
    std::map<std::string, std::string> routes;
    for (const v1::Action& a : seen->actions()) {
      EXPECT_EQ(a.participant(), "fund.ledger");
      EXPECT_TRUE(a.payload_at_participant());
      routes[a.name()] = a.payload();
    }
    EXPECT_EQ(routes["debit"], absl::StrCat("formica.dds:i:", kAlice, "\n"));
    EXPECT_EQ(routes["credit"], absl::StrCat("formica.dds:i:", kBob, "\n"));
    AwaitSettled(absl::Seconds(20));
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{993, 0, 0}));
    EXPECT_EQ(Account(kBob), (std::vector<int64_t>{1007, 0, 0}));
    EXPECT_LT(absl::Now(), *DeadlineOf(id)) << "confirmed by dtsd, not by the check-back";
  }

  // A try whose report reached no one (made outside Run) is finished by
  // the participant's check-back once the deadline has passed: confirmed
  // when the activity committed, cancelled when it was never decided.
  void LostReportsAreFinishedByTheCheckBack() {
    auto committed = Activity::Begin(rpc_.get(), Named("fund.Transfer", absl::Seconds(1)));
    auto undecided = Activity::Begin(rpc_.get(), Named("fund.Transfer", absl::Seconds(1)));
    ASSERT_TRUE(committed.ok() && undecided.ok());
    const std::string yes = (*committed)->id();
    const std::string no = (*undecided)->id();
    ASSERT_TRUE(Debit(yes, 30).ok());
    ASSERT_TRUE(Debit(no, 20).ok());
    ASSERT_TRUE(Credit(yes, 30).ok());
    EXPECT_EQ(Pending(), 3);
    ASSERT_TRUE((*committed)->Commit().ok());
    auto seen = Get(yes);
    ASSERT_TRUE(seen.ok()) << seen.status();
    EXPECT_EQ(seen->actions_size(), 0) << "no report reached the commit";
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{950, 50, 0}));
    AwaitSettled(absl::Seconds(20));
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{970, 0, 0})) << "30 taken, 20 released";
    EXPECT_EQ(Account(kBob), (std::vector<int64_t>{1030, 0, 0}));
    auto rolled = Get(no);
    ASSERT_TRUE(rolled.ok()) << rolled.status();
    EXPECT_EQ(rolled->state(), v1::ROLLED_BACK);
    EXPECT_EQ(rolled->reason(), "not decided by its deadline");
    absl::Status late = (*undecided)->Commit();
    EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
    // Its late confirm or a repeated cancel changes nothing.
    grpc::Status again = PhaseTwo(false, no, "debit", kAlice, 20);
    EXPECT_TRUE(again.ok()) << again.error_message();
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{970, 0, 0}));
  }

  // A repeated try is a no-op, a second try with another payload is
  // refused, and a try after its action's cancel is refused: on the
  // joined path as on the enlisted one.
  void RepeatsAndLateTries() {
    auto activity = Activity::Begin(rpc_.get(), Named("fund.Transfer", absl::Seconds(60)));
    ASSERT_TRUE(activity.ok()) << activity.status();
    const std::string id = (*activity)->id();
    ASSERT_TRUE((*activity)->Run([&] { return Debit(id, 9); }).ok());
    ASSERT_TRUE((*activity)->Run([&] { return Debit(id, 9); }).ok()) << "a repeat is a no-op";
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{991, 9, 0}));
    absl::Status other = (*activity)->Run([&] { return Debit(id, 4); });
    EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
    EXPECT_NE(other.message().find("already enlisted"), absl::string_view::npos) << other;
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{991, 9, 0}));
    EXPECT_EQ(Pending(), 1);
    ASSERT_TRUE((*activity)->Commit().ok());
    AwaitSettled(absl::Seconds(20));
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{991, 0, 0}));
    // Cancelled (rolled back) before its try arrived: the try is refused.
    auto gone = Activity::Begin(rpc_.get(), Named("fund.Transfer", absl::Seconds(60)));
    ASSERT_TRUE(gone.ok()) << gone.status();
    const std::string late_id = (*gone)->id();
    ASSERT_TRUE(PhaseTwo(false, late_id, "debit", kAlice, 5).ok());
    absl::Status late = (*gone)->Run([&] { return Debit(late_id, 5); });
    EXPECT_EQ(late.code(), absl::StatusCode::kAborted) << late;
    EXPECT_NE(late.message().find("was cancelled before its try arrived"), absl::string_view::npos);
    EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{991, 0, 0}));
    EXPECT_EQ(Pending(), 0) << "a refused try leaves no pending row";
    ASSERT_TRUE((*gone)->Rollback("late").ok());
  }

  static std::optional<absl::Time> DeadlineOf(const std::string& id) {
    // "<deadline in unix ms, 11 hex digits>-...": see docs/dts.md.
    int64_t ms = 0;
    if (id.size() < 11 || !absl::SimpleHexAtoi(id.substr(0, 11), &ms)) return std::nullopt;
    return absl::FromUnixMillis(ms);
  }

  std::unique_ptr<dds::ShardedDataSource> ds_;
  std::unique_ptr<ShardedParticipant> participant_;
};

TEST_F(ShardedBarrierTest, ATryInsideRunIsReportedToTheCommitNotEnlisted) {
  ReportReachesTheCommit();
}

TEST_F(ShardedBarrierTest, ATryWhoseReportWasLostIsFinishedByTheCheckBack) {
  LostReportsAreFinishedByTheCheckBack();
}

TEST_F(ShardedBarrierTest, RepeatedTriesAndTriesAfterTheCancelOnTheJoinedPath) {
  RepeatsAndLateTries();
}

// The initiator runs its own action's confirm once its commit is durable:
// the effect shows at once, dtsd's confirm is then a no-op, and the step
// runs once. Refused for an activity begun at dtsd.
TEST_F(ShardedBarrierTest, AnInitiatorConfirmsItsOwnCommittedActionAndDtsdsConfirmIsANoOp) {
  auto activity = Activity::Begin(rpc_.get(), Named("fund.Transfer", absl::Seconds(60)));
  ASSERT_TRUE(activity.ok()) << activity.status();
  const std::string id = (*activity)->id();
  ASSERT_TRUE((*activity)->Run([&] { return Debit(id, 8); }).ok());
  ASSERT_TRUE((*activity)->Commit().ok());
  ASSERT_TRUE(participant_->ConfirmCommitted(id, kAlice, "debit").ok());
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{992, 0, 0}));
  EXPECT_TRUE(participant_->ConfirmCommitted(id, kAlice, "debit").ok()) << "idempotent";
  AwaitSettled(absl::Seconds(20));
  auto seen = Get(id);
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_EQ(seen->actions_size(), 1);
  EXPECT_EQ(seen->actions(0).state(), v1::CONFIRMED) << "dtsd's confirm succeeded as a no-op";
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{992, 0, 0})) << "the step ran once";
  auto at_dtsd = Activity::Begin(rpc_.get(), BegunAtDtsd("fund.Transfer", absl::Seconds(30)));
  ASSERT_TRUE(at_dtsd.ok()) << at_dtsd.status();
  EXPECT_EQ(participant_->ConfirmCommitted((*at_dtsd)->id(), kAlice, "debit").code(),
            absl::StatusCode::kFailedPrecondition);
}

// Begun at dtsd: each try is enlisted before its local transaction, and
// nothing is left pending.
TEST_F(ShardedBarrierTest, ATryOfAnActivityBegunAtDtsdIsEnlisted) {
  auto activity = Activity::Begin(rpc_.get(), BegunAtDtsd("fund.Transfer", absl::Seconds(30)));
  ASSERT_TRUE(activity.ok()) << activity.status();
  const std::string id = (*activity)->id();
  ASSERT_TRUE(Debit(id, 11).ok());
  auto seen = Get(id);
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_EQ(seen->actions_size(), 1);
  EXPECT_FALSE(seen->actions(0).payload_at_participant());
  EXPECT_EQ(seen->actions(0).payload(), absl::StrCat("formica.dds:i:", kAlice, "\n11"));
  EXPECT_EQ(Pending(), 0);
  ASSERT_TRUE((*activity)->Commit().ok());
  AwaitSettled(absl::Seconds(20));
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{989, 0, 0}));
}

TEST_F(ShardedBarrierTest, TransfersAcrossShardsFinishEverywhereOrNowhere) {
  int64_t moved = Transfers();
  EXPECT_GT(moved, 0);
  // Each barrier row is on its user's shard, in that shard's database.
  auto rows = [&](const std::string& db, const std::string& table) {
    sqlite3* h = nullptr;
    EXPECT_EQ(sqlite3_open(dir_.File(db).c_str(), &h), SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(h, ("SELECT count(*) FROM " + table).c_str(), -1, &s, nullptr),
              SQLITE_OK);
    int64_t n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_finalize(s);
    sqlite3_close(h);
    return n;
  };
  EXPECT_EQ(rows("east.db", "formica_dts_barrier_01"), 80);  // 40 tries, 40 confirms or cancels
  EXPECT_EQ(rows("west.db", "formica_dts_barrier_99"), 80);
}

// The same on PostgreSQL, where the transactions of one action really run
// at once: the barrier's unique keys and row locks decide.
class ShardedBarrierPostgresTest : public ShardedBarrierTest {
 protected:
  dds::DataSourceConfig Databases() override {
    auto pg = formica::testing::PostgresServer::Start();
    EXPECT_TRUE(pg.ok()) << pg.status();
    if (!pg.ok()) return {};
    pg_ = std::move(*pg);
    dds::DataSourceConfig c;
    for (const char* name : {"east", "west"}) {
      EXPECT_TRUE(pg_->CreateDatabase(name).ok());
      c.databases.push_back({name, dds::DatabaseKind::kPostgres, pg_->Dsn(name), {}, 4, {}});
    }
    return c;
  }
  void TearDown() override {
    ShardedBarrierTest::TearDown();
    pg_.reset();
  }
  std::unique_ptr<formica::testing::PostgresServer> pg_;
};

TEST_F(ShardedBarrierPostgresTest, TransfersAcrossShardsFinishEverywhereOrNowhere) {
  EXPECT_GT(Transfers(), 0);
  auto rows = ds_->Execute("SELECT count(*) FROM formica_dts_barrier");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(std::get<int64_t>(rows->rows[0][0]), 160);
}

TEST_F(ShardedBarrierPostgresTest, ATryInsideRunIsReportedToTheCommitNotEnlisted) {
  ReportReachesTheCommit();
}

TEST_F(ShardedBarrierPostgresTest, ATryWhoseReportWasLostIsFinishedByTheCheckBack) {
  LostReportsAreFinishedByTheCheckBack();
}

TEST_F(ShardedBarrierPostgresTest, RepeatedTriesAndTriesAfterTheCancelOnTheJoinedPath) {
  RepeatsAndLateTries();
}

TEST_F(ShardedBarrierPostgresTest, ACancelRacingItsTryLeavesNoHangingFreeze) {
  // Cancels sent while the try may be running: either the try ran (and the
  // cancel undid it) or it was refused; nothing stays frozen.
  for (int i = 0; i < 20; ++i) {
    auto activity = Activity::Begin(rpc_.get(), Named("fund.Transfer"));
    ASSERT_TRUE(activity.ok()) << activity.status();
    const std::string id = (*activity)->id();
    std::thread canceller([&] {
      for (int k = 0; k < 50; ++k) {
        if (PhaseTwo(false, id, "debit", kAlice, 3).ok()) return;
      }
    });
    absl::Status tried = Debit(id, 3);
    canceller.join();
    EXPECT_TRUE(tried.ok() || tried.code() == absl::StatusCode::kAborted) << tried;
    (*activity)->Rollback("raced").IgnoreError();
  }
  AwaitSettled(absl::Seconds(30));
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{1000, 0, 0}));
}

TEST_F(ShardedBarrierTest, TheBarrierHoldsOnTheUsersShard) {
  auto one = Activity::Begin(rpc_.get(), Named("fund.Transfer"));
  ASSERT_TRUE(one.ok()) << one.status();
  std::string id = (*one)->id();
  // A cancel with no try: an empty rollback that bars the late try.
  ASSERT_TRUE(PhaseTwo(false, id, "debit", kAlice, 5).ok());
  absl::Status late = Debit(id, 5);
  EXPECT_EQ(late.code(), absl::StatusCode::kAborted) << late;
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{1000, 0, 0})) << "the late try did nothing";
  // Confirm and cancel are idempotent; the opposite outcome is refused.
  auto two = Activity::Begin(rpc_.get(), Named("fund.Transfer"));
  ASSERT_TRUE(two.ok()) << two.status();
  id = (*two)->id();
  ASSERT_TRUE(Debit(id, 7).ok());
  ASSERT_TRUE(Debit(id, 7).ok()) << "a repeated try is a no-op success";
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{993, 7, 0}));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(PhaseTwo(true, id, "debit", kAlice, 7).ok());
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{993, 0, 0}));
  grpc::Status cancel = PhaseTwo(false, id, "debit", kAlice, 7);
  EXPECT_EQ(cancel.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(cancel.error_message().find("was already confirmed"), std::string::npos);
  EXPECT_EQ(Account(kAlice), (std::vector<int64_t>{993, 0, 0}));
  // A confirm with nothing tried is an inconsistency, not a no-op.
  auto three = Activity::Begin(rpc_.get(), Named("fund.Transfer"));
  ASSERT_TRUE(three.ok()) << three.status();
  grpc::Status confirm = PhaseTwo(true, (*three)->id(), "credit", kBob, 1);
  EXPECT_EQ(confirm.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(confirm.error_message().find("nothing to confirm"), std::string::npos);
  // A payload without the shard key is refused, naming why.
  grpc::ClientContext ctx;
  v1::PhaseTwoRequest req;
  req.set_activity_id((*three)->id());
  req.set_action("credit");
  req.set_payload("1");
  v1::PhaseTwoResponse resp;
  grpc::Status bare = stub_->Cancel(&ctx, req, &resp);
  EXPECT_EQ(bare.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bare.error_message().find("carries no shard key"), std::string::npos);
  (*one)->Rollback("done").IgnoreError();
  (*two)->Rollback("done").IgnoreError();
  (*three)->Rollback("done").IgnoreError();
}

TEST_F(ShardedBarrierTest, OpenNeedsTheBarrierTableSharded) {
  dds::DataSourceConfig c;
  c.databases = {{"only", dds::DatabaseKind::kSqlite, dir_.File("only.db"), {}, 1, {}}};
  c.sharded_tables = {{"accounts", "user_id"}};
  auto ds = dds::ShardedDataSource::Open(c);
  ASSERT_TRUE(ds.ok()) << ds.status();
  auto p = ShardedParticipant::Open({"x"}, rpc_.get(), ds->get());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(p.status().message().find("formica_dts_barrier: shard_key"), absl::string_view::npos);
}

}  // namespace
}  // namespace formica::dts
