#include "coordinator.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_store.h"
#include "formica/common/config.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/names.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "formica/internal/address.h"

namespace formica::dts {
namespace {

using v1::ActionState;
using v1::ActivityState;

constexpr size_t kMaxNameLength = 256;
constexpr size_t kMaxPayloadBytes = 1 << 20;
constexpr int kMaxBatch = 1000;
constexpr size_t kMaxPhaseTwoBatch = 256;
constexpr size_t kMaxPhaseTwoBytes = 2 << 20;  // under gRPC's 4 MiB message limit

bool IsFinished(ActivityState s) { return s == v1::COMMITTED || s == v1::ROLLED_BACK; }
bool IsDecided(ActivityState s) { return s == v1::COMMITTING || s == v1::ROLLING_BACK; }
bool IsDone(ActionState s) { return s == v1::CONFIRMED || s == v1::CANCELLED || s == v1::SETTLED; }
int64_t UnixMs(absl::Time t) { return absl::ToUnixMillis(t); }

std::string Describe(const v1::Activity& a) {
  std::string out = absl::StrCat("activity ", a.id(), " is ", v1::ActivityState_Name(a.state()));
  if (!a.reason().empty()) absl::StrAppend(&out, " (", a.reason(), ")");
  return out;
}

bool PrintableChar(char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; }

absl::Status CheckName(absl::string_view field, const std::string& value, bool required) {
  return formica::CheckName(NameRule{field, kMaxNameLength, PrintableChar,
                                     "any character but control characters", required},
                            value);
}

}  // namespace

// The API runs on gRPC's callback threads. Enlists and decisions are written
// without a sync and answered from the syncer thread once a sync that
// covers them is done: one sync for every write that arrived meanwhile
// (group commit), and no thread parked per call.
class Coordinator::Impl final : public v1::Coordinator::CallbackService {
 public:
  // One unfinished activity. Lock order: an Entry's mu before Impl::mu_.
  struct Entry {
    absl::Mutex mu;
    v1::Activity record ABSL_GUARDED_BY(mu);
    // Per action: the token of its one live phase-two task, and whether a
    // call is out now. Stale tasks (older tokens) are dropped.
    std::vector<uint64_t> token ABSL_GUARDED_BY(mu);
    std::vector<bool> calling ABSL_GUARDED_BY(mu);
    // The decision is on disk: only then may confirms or cancels go out.
    bool decision_durable ABSL_GUARDED_BY(mu) = false;
  };

  struct Task {
    std::string id;
    int action;  // -1: the activity's timeout
    uint64_t token;
  };

  CoordinatorOptions options;
  std::unique_ptr<ActivityStore> store;
  std::unique_ptr<registry::Client> registry;
  std::unique_ptr<rpc::Client> rpc;
  std::unique_ptr<rpc::Server> server;
  uint64_t epoch = 0;
  std::atomic<uint64_t> seq{0};

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::multimap<absl::Time, Task> tasks_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::set<std::string> no_batch_ ABSL_GUARDED_BY(mu_);  // participants without PhaseTwoBatch
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_){std::random_device{}()};
  std::thread dispatcher_;
  bool shut_down_ = false;
  std::atomic<uint64_t> begun_{0}, committed_{0}, rolled_back_{0}, timed_out_{0};
  std::atomic<uint64_t> phase_two_calls_{0}, phase_two_failures_{0};
  std::atomic<uint64_t> durable_writes_{0};

  // Group commit: callbacks to run once a sync covers every write before them.
  absl::Mutex sync_mu_;
  std::vector<std::function<void()>> sync_waiters_ ABSL_GUARDED_BY(sync_mu_);
  bool sync_stopping_ ABSL_GUARDED_BY(sync_mu_) = false;
  std::thread syncer_;
  std::thread sweeper_;  // removes finished activities past their retention

  // ---- gRPC API ----

  using Reactor = grpc::ServerUnaryReactor;

  static Reactor* Answer(grpc::CallbackServerContext* ctx, const absl::Status& st) {
    Reactor* r = ctx->DefaultReactor();
    r->Finish(ToGrpcStatus(st));
    return r;
  }

  // Answers once the writes made so far are durable; runs `then` first
  // (e.g. starts phase two of a decision now on disk).
  Reactor* AnswerDurable(grpc::CallbackServerContext* ctx, const absl::Status& st,
                         std::function<void()> then = nullptr) {
    // Errors wait for the sync too: a refusal may name a concurrent
    // decision that is not on disk yet.
    Reactor* r = ctx->DefaultReactor();
    AfterSync([r, st, then = std::move(then)] {
      if (then) then();
      r->Finish(ToGrpcStatus(st));
    });
    return r;
  }

  Reactor* Begin(grpc::CallbackServerContext* ctx, const v1::BeginRequest* req,
                 v1::BeginResponse* resp) override {
    return Answer(ctx, DoBegin(*req, resp));
  }
  Reactor* Enlist(grpc::CallbackServerContext* ctx, const v1::EnlistRequest* req,
                  v1::EnlistResponse*) override {
    return AnswerDurable(ctx, DoEnlist(*req));
  }
  Reactor* Commit(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                  v1::DecisionResponse* resp) override {
    std::shared_ptr<Entry> decided;
    absl::Status st = DoDecide(*req, true, resp, &decided);
    return AnswerDurable(ctx, st, StarterFor(decided));
  }
  Reactor* Rollback(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                    v1::DecisionResponse* resp) override {
    std::shared_ptr<Entry> decided;
    absl::Status st = DoDecide(*req, false, resp, &decided);
    return AnswerDurable(ctx, st, StarterFor(decided));
  }
  Reactor* Batch(grpc::CallbackServerContext* ctx, const v1::BatchRequest* req,
                 v1::BatchResponse* resp) override {
    if (req->ops_size() > kMaxBatch) {
      return Answer(ctx, absl::InvalidArgumentError(absl::StrCat(
                             "a batch holds at most ", kMaxBatch, " ops, got ", req->ops_size())));
    }
    std::vector<std::function<void()>> starters;
    bool durable = false;
    for (const v1::CoordinatorOp& op : req->ops()) {
      v1::OpResult* result = resp->add_results();
      absl::Status st;
      switch (op.op_case()) {
        case v1::CoordinatorOp::kBegin: {
          v1::BeginResponse begun;
          st = DoBegin(op.begin(), &begun);
          result->set_activity_id(begun.activity_id());
          break;
        }
        case v1::CoordinatorOp::kEnlist:
          st = DoEnlist(op.enlist());
          durable = true;
          break;
        case v1::CoordinatorOp::kCommit:
        case v1::CoordinatorOp::kRollback: {
          bool commit = op.op_case() == v1::CoordinatorOp::kCommit;
          std::shared_ptr<Entry> decided;
          v1::DecisionResponse decision;
          st = DoDecide(commit ? op.commit() : op.rollback(), commit, &decision, &decided);
          result->set_state(decision.state());
          if (auto start = StarterFor(decided)) starters.push_back(std::move(start));
          durable = true;
          break;
        }
        default:
          st = absl::InvalidArgumentError("a batch op must be begin, enlist, commit or rollback");
      }
      result->set_code(static_cast<int>(st.code()));
      result->set_message(std::string(st.message()));
    }
    if (!durable) return Answer(ctx, absl::OkStatus());
    return AnswerDurable(ctx, absl::OkStatus(), [starters = std::move(starters)] {
      for (const auto& start : starters) start();
    });
  }
  Reactor* Get(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
               v1::Activity* resp) override {
    absl::StatusOr<v1::Activity> a = Load(req->activity_id());
    if (a.ok()) *resp = *std::move(a);
    return Answer(ctx, a.status());
  }
  Reactor* List(grpc::CallbackServerContext* ctx, const v1::ListRequest* req,
                v1::ListResponse* resp) override {
    return Answer(ctx, DoList(*req, resp));
  }
  Reactor* Retry(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                 v1::DecisionResponse* resp) override {
    return Answer(ctx, DoRetry(*req, resp));
  }
  Reactor* Settle(grpc::CallbackServerContext* ctx, const v1::ActivityRef* req,
                  v1::DecisionResponse* resp) override {
    return Answer(ctx, DoSettle(*req, resp));
  }
  Reactor* GetStats(grpc::CallbackServerContext* ctx, const v1::StatsRequest*,
                    v1::Stats* s) override {
    s->set_begun(begun_.load());
    s->set_committed(committed_.load());
    s->set_rolled_back(rolled_back_.load());
    s->set_timed_out(timed_out_.load());
    {
      absl::MutexLock lock(&mu_);
      s->set_unfinished(entries_.size());
    }
    s->set_phase_two_calls(phase_two_calls_.load());
    s->set_phase_two_failures(phase_two_failures_.load());
    s->set_synced_writes(durable_writes_.load());
    s->set_wal_syncs(store->syncs());
    s->set_stored_bytes(store->written_bytes());
    return Answer(ctx, absl::OkStatus());
  }

  // ---- group commit ----

  void AfterSync(std::function<void()> done) {
    absl::MutexLock lock(&sync_mu_);
    sync_waiters_.push_back(std::move(done));
  }

  void SyncLoop() {
    absl::MutexLock lock(&sync_mu_);
    while (true) {
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) {
        return !sync_waiters_.empty() || sync_stopping_;
      };
      sync_mu_.Await(absl::Condition(&ready));
      if (sync_waiters_.empty()) return;  // stopping, nothing owed
      std::vector<std::function<void()>> batch;
      batch.swap(sync_waiters_);
      sync_mu_.Unlock();
      // Every write these waiters made returned before they queued.
      absl::Status st = store->Sync();
      if (!st.ok()) {
        // Answering from a state that may not be on disk would break every
        // promise above; a restart recovers from what is.
        SPDLOG_CRITICAL("cannot sync the activity log ({}); stopping", st.ToString());
        std::abort();
      }
      for (auto& done : batch) done();
      sync_mu_.Lock();
    }
  }

  // After a decision is durable: start its phase two.
  std::function<void()> StarterFor(const std::shared_ptr<Entry>& e) {
    if (e == nullptr) return nullptr;
    return [this, e] {
      absl::MutexLock lock(&e->mu);
      if (IsDecided(e->record.state())) {
        e->decision_durable = true;
        StartPhaseTwoLocked(*e);
      }
    };
  }

  // ---- operations ----

  absl::Status DoBegin(const v1::BeginRequest& req, v1::BeginResponse* resp) {
    if (absl::Status st = CheckName("name", req.name(), true); !st.ok()) return st;
    if (absl::Status st = CheckName("initiator", req.initiator(), false); !st.ok()) return st;
    absl::Duration timeout =
        req.timeout_ms() == 0 ? options.default_timeout : absl::Milliseconds(req.timeout_ms());
    if (timeout > options.max_timeout) {
      return absl::InvalidArgumentError(absl::StrCat("timeout_ms ", req.timeout_ms(),
                                                     " exceeds the coordinator's maximum of ",
                                                     absl::FormatDuration(options.max_timeout)));
    }
    auto e = std::make_shared<Entry>();
    absl::Time now = absl::Now();
    std::string id = absl::StrFormat("%08x-%012x", epoch, seq.fetch_add(1) + 1);
    {
      absl::MutexLock lock(&e->mu);
      v1::Activity& a = e->record;
      a.set_id(id);
      a.set_name(req.name());
      a.set_initiator(req.initiator());
      a.set_state(v1::ACTIVE);
      a.set_begun_unix_ms(UnixMs(now));
      a.set_deadline_unix_ms(UnixMs(now + timeout));
      // Not synced: the first enlisted action's synced write carries it to
      // disk. An activity lost before that had nothing to undo, and its
      // initiator learns it at its first enlist (NOT_FOUND).
      if (absl::Status st = store->Put(a, false); !st.ok()) return st;
    }
    {
      absl::MutexLock lock(&mu_);
      entries_[id] = e;
      AddTaskLocked(now + timeout, Task{id, -1, 0});
    }
    begun_.fetch_add(1, std::memory_order_relaxed);
    resp->set_activity_id(id);
    return absl::OkStatus();
  }

  absl::Status DoEnlist(const v1::EnlistRequest& req) {
    if (absl::Status st = CheckName("participant", req.participant(), true); !st.ok()) return st;
    if (absl::Status st = CheckName("action", req.action(), true); !st.ok()) return st;
    if (req.payload().size() > kMaxPayloadBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("payload is ", req.payload().size(), " bytes; at most ", kMaxPayloadBytes));
    }
    std::shared_ptr<Entry> e = FindLive(req.activity_id());
    if (e == nullptr) return Missing(req.activity_id());
    absl::MutexLock lock(&e->mu);
    v1::Activity& a = e->record;
    if (a.state() == v1::ACTIVE && absl::Now() >= absl::FromUnixMillis(a.deadline_unix_ms())) {
      timed_out_.fetch_add(1, std::memory_order_relaxed);
      DecideLocked(*e, false, TimeoutReason(a), /*durable=*/true).IgnoreError();
    }
    if (a.state() != v1::ACTIVE) {
      return absl::FailedPreconditionError(absl::StrCat(Describe(a), "; cannot enlist"));
    }
    for (const v1::Action& x : a.actions()) {
      if (x.participant() == req.participant() && x.name() == req.action()) {
        if (x.payload() == req.payload()) return absl::OkStatus();  // a repeated try
        return absl::FailedPreconditionError(absl::StrCat(
            "action ", req.action(), " of ", req.participant(), " is already enlisted in activity ",
            a.id(), " with another payload; give each action of an activity its own name"));
      }
    }
    if (a.actions_size() >= options.max_actions) {
      return absl::ResourceExhaustedError(absl::StrCat("activity ", a.id(), " already has ",
                                                       a.actions_size(),
                                                       " actions, the coordinator's limit"));
    }
    v1::Action* x = a.add_actions();
    x->set_participant(req.participant());
    x->set_name(req.action());
    x->set_payload(req.payload());
    x->set_state(v1::ENLISTED);
    x->set_enlisted_unix_ms(UnixMs(absl::Now()));
    e->token.push_back(0);
    e->calling.push_back(false);
    durable_writes_.fetch_add(1, std::memory_order_relaxed);
    // Only this action is written (synced before the answer).
    if (absl::Status st = store->PutAction(a.id(), a.actions_size() - 1, *x, false); !st.ok()) {
      a.mutable_actions()->RemoveLast();
      e->token.pop_back();
      e->calling.pop_back();
      return st;
    }
    return absl::OkStatus();
  }

  // Records the decision (not yet synced: the caller answers after a sync,
  // then starts phase two of *decided).
  absl::Status DoDecide(const v1::ActivityRef& req, bool commit, v1::DecisionResponse* resp,
                        std::shared_ptr<Entry>* decided) {
    std::shared_ptr<Entry> e = FindLive(req.activity_id());
    if (e == nullptr) {
      // Finished already: a repeat of the same decision is a success.
      absl::StatusOr<v1::Activity> a = Load(req.activity_id());
      if (!a.ok()) return a.status();
      if (a->state() == (commit ? v1::COMMITTED : v1::ROLLED_BACK)) {
        resp->set_state(a->state());
        return absl::OkStatus();
      }
      return absl::FailedPreconditionError(
          absl::StrCat(Describe(*a), "; cannot ", commit ? "commit" : "roll back"));
    }
    absl::MutexLock lock(&e->mu);
    v1::Activity& a = e->record;
    if (commit && a.state() == v1::ACTIVE &&
        absl::Now() >= absl::FromUnixMillis(a.deadline_unix_ms())) {
      timed_out_.fetch_add(1, std::memory_order_relaxed);
      DecideLocked(*e, false, TimeoutReason(a), /*durable=*/true).IgnoreError();
    }
    ActivityState same = commit ? v1::COMMITTING : v1::ROLLING_BACK;
    ActivityState done = commit ? v1::COMMITTED : v1::ROLLED_BACK;
    if (a.state() == same || a.state() == done) {
      resp->set_state(a.state());
      return absl::OkStatus();
    }
    if (a.state() != v1::ACTIVE) {
      return absl::FailedPreconditionError(
          absl::StrCat(Describe(a), "; cannot ", commit ? "commit" : "roll back"));
    }
    std::string reason =
        commit ? "" : (req.reason().empty() ? "rolled back by the initiator" : req.reason());
    if (absl::Status st = DecideLocked(*e, commit, reason, /*durable=*/false); !st.ok()) return st;
    *decided = e;
    resp->set_state(a.state());
    return absl::OkStatus();
  }

  absl::Status DoRetry(const v1::ActivityRef& req, v1::DecisionResponse* resp) {
    std::shared_ptr<Entry> e = FindLive(req.activity_id());
    if (e == nullptr) {
      absl::StatusOr<v1::Activity> a = Load(req.activity_id());
      if (!a.ok()) return a.status();
      return absl::FailedPreconditionError(absl::StrCat(Describe(*a), "; nothing to retry"));
    }
    absl::MutexLock lock(&e->mu);
    if (!IsDecided(e->record.state()) || !e->decision_durable) {
      return absl::FailedPreconditionError(
          absl::StrCat(Describe(e->record),
                       "; only a decided activity's phase two is retried, once the "
                       "decision is on disk"));
    }
    SPDLOG_INFO("operator retries phase two of {}", e->record.id());
    ScheduleActionsLocked(*e, absl::Now(), /*reset=*/true);
    resp->set_state(e->record.state());
    return absl::OkStatus();
  }

  absl::Status DoSettle(const v1::ActivityRef& req, v1::DecisionResponse* resp) {
    if (req.reason().empty()) {
      return absl::InvalidArgumentError("settling needs a reason, for the record");
    }
    std::shared_ptr<Entry> e = FindLive(req.activity_id());
    if (e == nullptr) {
      absl::StatusOr<v1::Activity> a = Load(req.activity_id());
      if (!a.ok()) return a.status();
      return absl::FailedPreconditionError(absl::StrCat(Describe(*a), "; nothing to settle"));
    }
    absl::MutexLock lock(&e->mu);
    v1::Activity& a = e->record;
    if (!IsDecided(a.state())) {
      return absl::FailedPreconditionError(
          absl::StrCat(Describe(a), "; commit or roll it back before settling"));
    }
    std::vector<v1::ActionState> states_before;
    for (v1::Action& x : *a.mutable_actions()) {
      states_before.push_back(x.state());
      if (!IsDone(x.state())) x.set_state(v1::SETTLED);
    }
    std::string reason_before = a.reason();
    a.set_reason(absl::StrCat(a.reason().empty() ? "" : a.reason() + "; ",
                              "settled by an operator: ", req.reason()));
    if (absl::Status st = FinishLocked(*e, /*sync=*/true); !st.ok()) {
      for (int i = 0; i < a.actions_size(); ++i) a.mutable_actions(i)->set_state(states_before[i]);
      a.set_reason(reason_before);
      return st;
    }
    SPDLOG_WARN("{} settled by an operator: {}", a.id(), req.reason());
    resp->set_state(a.state());
    return absl::OkStatus();
  }

  absl::Status DoList(const v1::ListRequest& req, v1::ListResponse* resp) {
    size_t limit = req.limit() == 0 ? 100 : req.limit();
    std::vector<ActivityState> states;
    for (int s : req.states()) {
      if (!v1::ActivityState_IsValid(s) || s == v1::ACTIVITY_STATE_UNSPECIFIED) {
        return absl::InvalidArgumentError(absl::StrCat("unknown activity state ", s));
      }
      states.push_back(static_cast<ActivityState>(s));
    }
    bool finished_too = false;
    if (states.empty()) states = {v1::ACTIVE, v1::COMMITTING, v1::ROLLING_BACK};
    for (auto s : states) finished_too = finished_too || IsFinished(s);
    auto wanted = [&states](ActivityState s) {
      return std::find(states.begin(), states.end(), s) != states.end();
    };
    // Only what is answered is copied (with its actions and payloads).
    if (finished_too) {
      // The store holds every activity, newest first; live ones are read
      // from memory, where they may be newer than on disk.
      absl::Status read;
      absl::Status st = store->ScanNewestFirst([&](const v1::Activity& own) {
        if (std::shared_ptr<Entry> e = FindLive(own.id()); e != nullptr) {
          absl::MutexLock lock(&e->mu);
          if (wanted(e->record.state())) *resp->add_activities() = e->record;
        } else if (wanted(own.state()) || !IsFinished(own.state())) {  // it may have ended since
          absl::StatusOr<std::optional<v1::Activity>> stored = store->Get(own.id());
          if (!stored.ok()) {
            read = stored.status();
            return false;
          }
          if (stored->has_value() && wanted((*stored)->state())) {
            *resp->add_activities() = **std::move(stored);
          }
        }
        return static_cast<size_t>(resp->activities_size()) < limit;
      });
      if (!st.ok()) return st;
      if (!read.ok()) return read;
    } else {
      std::map<std::string, std::shared_ptr<Entry>> live;  // by id: creation order
      {
        absl::MutexLock lock(&mu_);
        for (auto& [id, e] : entries_) live.emplace(id, e);
      }
      for (auto it = live.rbegin(); it != live.rend(); ++it) {
        if (static_cast<size_t>(resp->activities_size()) >= limit) break;
        absl::MutexLock lock(&it->second->mu);
        if (wanted(it->second->record.state())) *resp->add_activities() = it->second->record;
      }
    }
    return absl::OkStatus();
  }

  // ---- decisions and phase two ----

  static std::string TimeoutReason(const v1::Activity& a) {
    return absl::StrCat(
        "timed out after ",
        absl::FormatDuration(absl::Milliseconds(a.deadline_unix_ms() - a.begun_unix_ms())));
  }

  // Records the decision. `durable`: synced now, and phase two starts;
  // otherwise the caller syncs and then calls StartPhaseTwoLocked.
  absl::Status DecideLocked(Entry& e, bool commit, const std::string& reason, bool durable)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu) {
    v1::Activity& a = e.record;
    int64_t decided_before = a.decided_unix_ms();
    std::string reason_before = a.reason();
    a.set_state(commit ? v1::COMMITTING : v1::ROLLING_BACK);
    a.set_decided_unix_ms(UnixMs(absl::Now()));
    a.set_reason(reason);
    durable_writes_.fetch_add(1, std::memory_order_relaxed);
    if (absl::Status st = store->Put(a, durable); !st.ok()) {
      a.set_state(v1::ACTIVE);
      a.set_decided_unix_ms(decided_before);
      a.set_reason(reason_before);
      return st;
    }
    if (!commit) SPDLOG_DEBUG("{} rolling back: {}", a.id(), reason);
    e.decision_durable = durable;
    if (durable) StartPhaseTwoLocked(e);
    return absl::OkStatus();
  }

  void StartPhaseTwoLocked(Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu) {
    if (e.record.actions_size() == 0) {
      if (absl::Status st = FinishLocked(e, false); !st.ok()) {
        SPDLOG_ERROR("cannot record the end of {}: {}", e.record.id(), st.ToString());
      }
      return;
    }
    ScheduleActionsLocked(e, absl::Now(), false);
  }

  // Every action done: the activity ends. Not synced unless asked: losing
  // it only repeats phase two, which participants take as a no-op.
  absl::Status FinishLocked(Entry& e, bool sync) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu) {
    v1::Activity& a = e.record;
    a.set_state(a.state() == v1::COMMITTING ? v1::COMMITTED : v1::ROLLED_BACK);
    a.set_finished_unix_ms(UnixMs(absl::Now()));
    if (absl::Status st = store->Put(a, sync); !st.ok()) {
      a.set_state(a.state() == v1::COMMITTED ? v1::COMMITTING : v1::ROLLING_BACK);
      return st;
    }
    (a.state() == v1::COMMITTED ? committed_ : rolled_back_).fetch_add(1);
    absl::MutexLock lock(&mu_);
    entries_.erase(a.id());
    return absl::OkStatus();
  }

  void ScheduleActionsLocked(Entry& e, absl::Time when, bool reset)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(e.mu) {
    absl::MutexLock lock(&mu_);
    for (int i = 0; i < e.record.actions_size(); ++i) {
      v1::Action* x = e.record.mutable_actions(i);
      if (IsDone(x->state()) || e.calling[i]) continue;
      if (reset) x->set_attempts(0);
      AddTaskLocked(when, Task{e.record.id(), i, ++e.token[i]});
    }
  }

  void AddTaskLocked(absl::Time when, Task task) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    tasks_.emplace(when, std::move(task));
    wake_ = true;
  }

  absl::Duration BackoffLocked(uint32_t attempts) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::Duration d = options.retry_initial;
    for (uint32_t i = 1; i < attempts && d < options.retry_max; ++i) d *= 2;
    d = std::min(d, options.retry_max);
    // Full jitter over the upper half, so retries of many actions spread out.
    double f = 0.5 + 0.5 * std::uniform_real_distribution<double>(0, 1)(rng_);
    return d * f;
  }

  // Removes finished activities older than the retention. Ids grow with
  // begin time, so the oldest come first and the sweep stops at the first
  // one begun after the cutoff.
  // Returns true when it stopped at its limit with more to remove.
  bool SweepFinished(absl::Time now) {
    constexpr size_t kPerSweep = 20000;
    int64_t cutoff = UnixMs(now - options.finished_retention);
    std::vector<std::string> old;
    absl::Status st = store->Scan([&](const v1::Activity& a) {
      if (a.begun_unix_ms() >= cutoff || old.size() >= kPerSweep) return false;
      if (IsFinished(a.state()) && a.finished_unix_ms() < cutoff) old.push_back(a.id());
      return true;
    });
    for (const std::string& id : old) {
      if (st.ok()) st = store->Delete(id);
    }
    if (!st.ok()) SPDLOG_WARN("retention sweep: {}", st.ToString());
    if (!old.empty()) SPDLOG_INFO("retention: removed {} finished activities", old.size());
    return st.ok() && old.size() >= kPerSweep;
  }

  void SweepLoop() {
    absl::MutexLock lock(&mu_);
    while (!stopping_) {
      mu_.Unlock();
      bool more = SweepFinished(absl::Now());
      mu_.Lock();
      if (!more) mu_.AwaitWithTimeout(absl::Condition(&stopping_), options.sweep_interval);
    }
  }

  void Dispatch() {
    while (true) {
      std::vector<Task> due;
      {
        absl::MutexLock lock(&mu_);
        absl::Time now = absl::Now();
        absl::Time next = now + absl::Seconds(1);
        if (!tasks_.empty()) next = std::min(next, tasks_.begin()->first);
        // At the in-flight cap, due calls wait for a freed slot (wake_), not
        // in a spin; timeouts still run within 50 ms.
        if (in_flight_ >= options.max_in_flight) next = now + absl::Milliseconds(50);
        if (!stopping_ && (tasks_.empty() || next > now)) {
          mu_.AwaitWithDeadline(absl::Condition(&wake_), next);
        }
        wake_ = false;
        if (stopping_) return;
        now = absl::Now();
        for (auto it = tasks_.begin(); it != tasks_.end() && it->first <= now;) {
          Task& t = it->second;
          if (t.action >= 0) {
            if (in_flight_ >= options.max_in_flight) {
              ++it;  // stays queued; timeouts behind it still run
              continue;
            }
            ++in_flight_;
          }
          due.push_back(std::move(t));
          it = tasks_.erase(it);
        }
      }
      std::map<std::string, std::vector<Prepared>> by_participant;
      for (Task& t : due) {
        if (t.action < 0) {
          Expire(t.id);
        } else if (std::optional<Prepared> p = Prepare(t); p.has_value()) {
          by_participant[p->participant].push_back(std::move(*p));
        }
      }
      for (auto& [participant, items] : by_participant) {
        // Chunks of at most kMaxPhaseTwoBatch items and kMaxPhaseTwoBytes.
        std::vector<Prepared> chunk;
        size_t bytes = 0;
        for (Prepared& p : items) {
          size_t size = p.item.ByteSizeLong();
          if (!chunk.empty() &&
              (chunk.size() >= kMaxPhaseTwoBatch || bytes + size > kMaxPhaseTwoBytes)) {
            Launch(participant, std::move(chunk));
            chunk.clear();
            bytes = 0;
          }
          bytes += size;
          chunk.push_back(std::move(p));
        }
        if (!chunk.empty()) Launch(participant, std::move(chunk));
      }
    }
  }

  void Expire(const std::string& id) {
    std::shared_ptr<Entry> e = FindLive(id);
    if (e == nullptr) return;
    absl::MutexLock lock(&e->mu);
    v1::Activity& a = e->record;
    if (a.state() != v1::ACTIVE) return;
    absl::Time deadline = absl::FromUnixMillis(a.deadline_unix_ms());
    if (absl::Now() < deadline) {
      absl::MutexLock l(&mu_);
      AddTaskLocked(deadline, Task{id, -1, 0});
      return;
    }
    timed_out_.fetch_add(1, std::memory_order_relaxed);
    if (absl::Status st = DecideLocked(*e, false, TimeoutReason(a), /*durable=*/true); !st.ok()) {
      SPDLOG_ERROR("cannot roll back expired {}: {}; trying again in 1s", id, st.ToString());
      absl::MutexLock l(&mu_);
      AddTaskLocked(absl::Now() + absl::Seconds(1), Task{id, -1, 0});
    }
  }

  // One confirm or cancel, ready to go: its action is marked as being called.
  struct Prepared {
    std::shared_ptr<Entry> entry;
    int index;
    std::string participant;
    v1::PhaseTwoItem item;
  };

  void SlotFreed() {
    absl::MutexLock lock(&mu_);
    --in_flight_;
    wake_ = true;
  }

  std::optional<Prepared> Prepare(const Task& t) {
    std::shared_ptr<Entry> e = FindLive(t.id);
    if (e == nullptr) {
      SlotFreed();
      return std::nullopt;
    }
    absl::MutexLock lock(&e->mu);
    const v1::Activity& a = e->record;
    if (t.action >= a.actions_size() || e->token[t.action] != t.token || e->calling[t.action] ||
        IsDone(a.actions(t.action).state()) || !IsDecided(a.state()) || !e->decision_durable) {
      SlotFreed();
      return std::nullopt;
    }
    e->calling[t.action] = true;
    const v1::Action& x = a.actions(t.action);
    Prepared p{e, t.action, x.participant(), {}};
    p.item.set_activity_id(a.id());
    p.item.set_action(x.name());
    p.item.set_payload(x.payload());
    p.item.set_confirm(a.state() == v1::COMMITTING);
    return p;
  }

  // One confirm or cancel on its own: for participants whose library
  // predates PhaseTwoBatch.
  void LaunchSingle(const std::string& participant, Prepared p) {
    struct Call {
      Prepared p;
      v1::PhaseTwoRequest request;
      v1::PhaseTwoResponse response;
    };
    auto call = std::make_shared<Call>();
    call->request.set_activity_id(p.item.activity_id());
    call->request.set_action(p.item.action());
    call->request.set_payload(std::move(*p.item.mutable_payload()));  // one copy in memory
    call->p = std::move(p);
    rpc::CallOptions opts;
    opts.timeout = options.call_timeout;
    opts.idempotent = true;
    opts.context.txn_id = call->request.activity_id();
    phase_two_calls_.fetch_add(1, std::memory_order_relaxed);
    rpc->CallAsync(
        participant, opts,
        [call](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
               std::function<void(grpc::Status)> finish) {
          auto stub = v1::Participant::NewStub(channel);
          if (call->p.item.confirm()) {
            stub->async()->Confirm(ctx, &call->request, &call->response, std::move(finish));
          } else {
            stub->async()->Cancel(ctx, &call->request, &call->response, std::move(finish));
          }
        },
        [this, call](absl::Status status) { Completed(call->p.entry, call->p.index, status); });
  }

  // Confirms and cancels for one participant travel in one round trip.
  void Launch(const std::string& participant, std::vector<Prepared> items) {
    bool batches;
    {
      absl::MutexLock lock(&mu_);
      batches = no_batch_.count(participant) == 0;
    }
    if (!batches) {
      for (Prepared& p : items) LaunchSingle(participant, std::move(p));
      return;
    }
    struct Call {
      std::vector<Prepared> items;
      v1::PhaseTwoBatchRequest request;
      v1::PhaseTwoBatchResponse response;
    };
    auto call = std::make_shared<Call>();
    call->items = std::move(items);
    // Payloads move into the request: one copy in memory while it is out.
    for (Prepared& p : call->items) *call->request.add_items() = std::move(p.item);
    rpc::CallOptions opts;
    opts.timeout = options.call_timeout;
    opts.idempotent = true;
    if (call->items.size() == 1) opts.context.txn_id = call->request.items(0).activity_id();
    phase_two_calls_.fetch_add(call->items.size(), std::memory_order_relaxed);
    rpc->CallAsync(
        participant, opts,
        [call](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
               std::function<void(grpc::Status)> finish) {
          v1::Participant::NewStub(channel)->async()->PhaseTwoBatch(
              ctx, &call->request, &call->response, std::move(finish));
        },
        [this, call, participant](absl::Status status) {
          // The whole call unimplemented (an undeclared action fails only
          // its item): the participant's library predates PhaseTwoBatch.
          if (absl::IsUnimplemented(status)) {
            SPDLOG_WARN("{} has no PhaseTwoBatch (an older library); calling it per action",
                        participant);
            {
              absl::MutexLock lock(&mu_);
              no_batch_.insert(participant);
            }
            for (size_t i = 0; i < call->items.size(); ++i) {
              call->items[i].item = std::move(*call->request.mutable_items(static_cast<int>(i)));
              LaunchSingle(participant, std::move(call->items[i]));
            }
            return;
          }
          if (status.ok() &&
              call->response.results_size() != static_cast<int>(call->items.size())) {
            status = absl::InternalError(absl::StrCat("the participant answered ",
                                                      call->response.results_size(), " of ",
                                                      call->items.size(), " items"));
          }
          for (size_t i = 0; i < call->items.size(); ++i) {
            absl::Status item = status;
            if (status.ok()) {
              const v1::PhaseTwoResult& r = call->response.results(static_cast<int>(i));
              item = r.code() == 0 ? absl::OkStatus() : StatusFromCode(r.code(), r.message());
            }
            Completed(call->items[i].entry, call->items[i].index, item);
          }
        });
  }

  void Completed(const std::shared_ptr<Entry>& e, int index, const absl::Status& status) {
    {
      absl::MutexLock lock(&e->mu);
      e->calling[index] = false;
      v1::Activity& a = e->record;
      v1::Action* x = a.mutable_actions(index);
      if (status.ok()) {
        x->set_state(a.state() == v1::COMMITTING ? v1::CONFIRMED : v1::CANCELLED);
        x->clear_last_error();
        bool all = true;
        for (const v1::Action& y : a.actions()) all = all && IsDone(y.state());
        if (all && IsDecided(a.state())) {
          if (absl::Status st = FinishLocked(*e, false); !st.ok()) {
            // Do this action again later (a no-op at the participant), and
            // with it the end of the activity.
            SPDLOG_ERROR("cannot record the end of {}: {}; trying again", a.id(), st.ToString());
            x->set_state(v1::ENLISTED);
            absl::MutexLock l(&mu_);
            AddTaskLocked(absl::Now() + options.retry_initial,
                          Task{a.id(), index, ++e->token[index]});
          }
        }
      } else if (IsDecided(a.state()) && !IsDone(x->state())) {
        phase_two_failures_.fetch_add(1, std::memory_order_relaxed);
        x->set_attempts(x->attempts() + 1);
        x->set_last_error(status.ToString());
        uint32_t n = x->attempts();
        if ((n & (n - 1)) == 0) {  // 1, 2, 4, 8...: a log line per doubling
          SPDLOG_WARN("{} of {} action {}/{} failed (attempt {}): {}",
                      a.state() == v1::COMMITTING ? "confirm" : "cancel", a.id(), x->participant(),
                      x->name(), n, status.ToString());
        }
        absl::MutexLock l(&mu_);
        AddTaskLocked(absl::Now() + BackoffLocked(n), Task{a.id(), index, ++e->token[index]});
      }
    }
    SlotFreed();
  }

  // ---- lookups ----

  std::shared_ptr<Entry> FindLive(const std::string& id) {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    return it == entries_.end() ? nullptr : it->second;
  }

  absl::Status Missing(const std::string& id) {
    if (id.empty()) return absl::InvalidArgumentError("activity_id is required");
    absl::StatusOr<std::optional<v1::Activity>> stored = store->Get(id);
    if (!stored.ok()) return stored.status();
    if (!stored->has_value()) {
      return absl::NotFoundError(absl::StrCat("no activity ", id));
    }
    return absl::FailedPreconditionError(absl::StrCat(Describe(**stored), "; cannot enlist"));
  }

  absl::StatusOr<v1::Activity> Load(const std::string& id) {
    if (id.empty()) return absl::InvalidArgumentError("activity_id is required");
    if (std::shared_ptr<Entry> e = FindLive(id); e != nullptr) {
      absl::MutexLock lock(&e->mu);
      return e->record;
    }
    absl::StatusOr<std::optional<v1::Activity>> stored = store->Get(id);
    if (!stored.ok()) return stored.status();
    if (!stored->has_value()) return absl::NotFoundError(absl::StrCat("no activity ", id));
    return **stored;
  }

  // ---- start and stop ----

  // Reloads every unfinished activity: ACTIVE ones wait for their deadline,
  // decided ones resume phase two at once.
  absl::Status Recover() {
    std::vector<std::string> unfinished;
    absl::Status st = store->Scan([&](const v1::Activity& a) {
      if (!IsFinished(a.state())) unfinished.push_back(a.id());
      return true;
    });
    if (!st.ok()) return st;
    int decided = 0;
    for (const std::string& id : unfinished) {
      absl::StatusOr<std::optional<v1::Activity>> a = store->Get(id);
      if (!a.ok()) return a.status();
      if (!a->has_value()) continue;  // removed since the scan: cannot happen before serving
      auto e = std::make_shared<Entry>();
      absl::MutexLock lock(&e->mu);
      e->record = **std::move(a);
      e->token.assign(e->record.actions_size(), 0);
      e->calling.assign(e->record.actions_size(), false);
      e->decision_durable = IsDecided(e->record.state());  // read back from disk
      for (v1::Action& x : *e->record.mutable_actions()) x.set_attempts(0);
      {
        absl::MutexLock l(&mu_);
        entries_[e->record.id()] = e;
        if (e->record.state() == v1::ACTIVE) {
          AddTaskLocked(absl::FromUnixMillis(e->record.deadline_unix_ms()),
                        Task{e->record.id(), -1, 0});
        }
      }
      if (IsDecided(e->record.state())) {
        ++decided;
        bool all = true;
        for (const v1::Action& x : e->record.actions()) all = all && IsDone(x.state());
        if (all) {
          FinishLocked(*e, false).IgnoreError();
        } else {
          ScheduleActionsLocked(*e, absl::Now(), false);
        }
      }
    }
    SPDLOG_INFO("recovered {} unfinished activities ({} decided, phase two resumes)",
                unfinished.size(), decided);
    return absl::OkStatus();
  }

  void Shutdown() {
    if (shut_down_) return;
    shut_down_ = true;
    if (server != nullptr) server->Shutdown();  // unpublish, drain API calls
    {
      absl::MutexLock lock(&sync_mu_);
      sync_stopping_ = true;
    }
    if (syncer_.joinable()) syncer_.join();  // answers every call still owed a sync
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      wake_ = true;
    }
    if (dispatcher_.joinable()) dispatcher_.join();
    if (sweeper_.joinable()) sweeper_.join();
    // Phase-two calls out now finish (or time out) before the client goes.
    // Phase-two calls out now end by their deadline (call_timeout): wait for
    // every one, since their completions use this object.
    {
      absl::MutexLock lock(&mu_);
      auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
      mu_.Await(absl::Condition(&idle));
      SPDLOG_INFO("dtsd stopped with {} unfinished activities on disk", entries_.size());
    }
    rpc.reset();
  }
};

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(CoordinatorOptions options) {
  if (options.registries.empty()) {
    return absl::InvalidArgumentError("dtsd needs at least one registry (dsrd) address");
  }
  if (options.retry_initial <= absl::ZeroDuration() || options.retry_max < options.retry_initial) {
    return absl::InvalidArgumentError(
        "phase_two.retry_initial must be positive and at most retry_max");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  const CoordinatorOptions& o = impl->options;
  absl::StatusOr<std::unique_ptr<ActivityStore>> store = OpenRocksDbActivityStore(o.data_dir);
  if (!store.ok()) return store.status();
  impl->store = *std::move(store);
  absl::StatusOr<uint64_t> epoch = impl->store->NextBootEpoch();
  if (!epoch.ok()) return epoch.status();
  impl->epoch = *epoch;

  registry::ClientOptions ro;
  ro.registries = o.registries;
  ro.client_name = "dtsd";
  absl::StatusOr<std::unique_ptr<registry::Client>> registry = registry::Client::Create(ro);
  if (!registry.ok()) return registry.status();
  impl->registry = *std::move(registry);
  rpc::ClientOptions co;
  co.app_name = "dtsd";
  co.zone = o.zone;
  co.default_timeout = o.call_timeout;
  absl::StatusOr<std::unique_ptr<rpc::Client>> rpc = rpc::Client::Create(co, impl->registry.get());
  if (!rpc.ok()) return rpc.status();
  impl->rpc = *std::move(rpc);

  if (absl::Status st = impl->Recover(); !st.ok()) return st;
  Impl* raw = impl.get();
  impl->dispatcher_ = std::thread([raw] { raw->Dispatch(); });
  impl->syncer_ = std::thread([raw] { raw->SyncLoop(); });
  impl->sweeper_ = std::thread([raw] { raw->SweepLoop(); });

  rpc::ServerOptions so;
  so.listen = o.listen;
  so.advertise_host = o.advertise_host;
  so.zone = o.zone;
  so.unpublish_grace = o.unpublish_grace;
  so.drain_timeout = o.drain_timeout;
  absl::StatusOr<std::unique_ptr<rpc::Server>> server = rpc::Server::Start(
      so, {{v1::Coordinator::service_full_name(), impl.get()}}, impl->registry.get());
  if (!server.ok()) {
    impl->Shutdown();
    return server.status();
  }
  impl->server = *std::move(server);
  SPDLOG_INFO("dtsd serving on {} (boot epoch {:x})", impl->server->address(), impl->epoch);
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Coordinator::~Coordinator() { Shutdown(); }
int Coordinator::port() const { return impl_->server->port(); }
void Coordinator::Shutdown() { impl_->Shutdown(); }

absl::StatusOr<CoordinatorOptions> LoadCoordinatorOptions(const Config& config) {
  CoordinatorOptions o;
  ConfigReader r(config);
  o.listen = r.String("server.listen", o.listen);
  o.advertise_host = r.String("server.advertise_host", o.advertise_host);
  o.zone = r.String("server.zone", o.zone);
  o.unpublish_grace = r.Duration("server.unpublish_grace", o.unpublish_grace, absl::ZeroDuration(),
                                 absl::Minutes(10));
  o.drain_timeout =
      r.Duration("server.drain_timeout", o.drain_timeout, absl::ZeroDuration(), absl::Minutes(10));
  o.data_dir = r.String("storage.data_dir", o.data_dir);
  o.registries = r.StringList("registry.addresses", o.registries);
  o.default_timeout = r.Duration("activity.default_timeout", o.default_timeout,
                                 absl::Milliseconds(10), absl::Hours(24 * 7));
  o.max_timeout = r.Duration("activity.max_timeout", o.max_timeout, absl::Milliseconds(10),
                             absl::Hours(24 * 30));
  o.max_actions = static_cast<int>(r.Int("activity.max_actions", o.max_actions, 1, 100000));
  o.finished_retention = r.Duration("activity.finished_retention", o.finished_retention,
                                    absl::Seconds(1), absl::Hours(24 * 366));
  o.sweep_interval = r.Duration("activity.sweep_interval", o.sweep_interval,
                                absl::Milliseconds(100), absl::Hours(24));
  o.call_timeout = r.Duration("phase_two.call_timeout", o.call_timeout, absl::Milliseconds(10),
                              absl::Minutes(10));
  o.retry_initial =
      r.Duration("phase_two.retry_initial", o.retry_initial, absl::Milliseconds(1), absl::Hours(1));
  o.retry_max =
      r.Duration("phase_two.retry_max", o.retry_max, absl::Milliseconds(1), absl::Hours(24));
  o.max_in_flight = static_cast<int>(r.Int("phase_two.max_in_flight", o.max_in_flight, 1, 100000));
  for (const std::string& a : o.registries) {
    if (absl::Status st = ValidateAddress(a); !st.ok()) {
      r.Fail("registry.addresses", st.message());
      break;
    }
  }
  if (o.retry_max < o.retry_initial) {
    r.Fail("phase_two.retry_max", "must be at least phase_two.retry_initial");
  }
  if (o.default_timeout > o.max_timeout) {
    r.Fail("activity.default_timeout", "must be at most activity.max_timeout");
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  return o;
}

}  // namespace formica::dts
