#include "formica/dts/participant.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <map>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_id.h"
#include "barrier.h"
#include "coordinator_calls.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/activity.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "participant_sql.h"

namespace formica::dts {
namespace {

// Set while this thread runs a body or step inside a local transaction.
thread_local bool in_local_transaction = false;
thread_local bool in_body = false;

}  // namespace

class Participant::Impl final : public v1::Participant::CallbackService {
 public:
  ParticipantOptions options;
  std::shared_ptr<CoordinatorCalls> calls;  // shared with the process's other users of rpc
  absl::Mutex db_mu;                        // one local transaction at a time on the connection
  sqlite3* db ABSL_GUARDED_BY(db_mu) = nullptr;
  Statement insert ABSL_GUARDED_BY(db_mu);
  Statement exists ABSL_GUARDED_BY(db_mu);
  Statement add_pending ABSL_GUARDED_BY(db_mu);
  Statement read_pending ABSL_GUARDED_BY(db_mu);
  Statement drop_pending ABSL_GUARDED_BY(db_mu);
  DeclaredSteps<Step> steps;

  // The check-back thread: asks dtsd about tries past their deadline.
  absl::Mutex stop_mu;
  bool stopping ABSL_GUARDED_BY(stop_mu) = false;
  std::thread check_back;
  absl::flat_hash_set<std::string> reported_lost;  // check-back thread only

  ~Impl() override {
    {
      absl::MutexLock lock(&stop_mu);
      stopping = true;
    }
    if (check_back.joinable()) check_back.join();
    {
      absl::MutexLock lock(&queue_mu);
      closing = true;
    }
    if (committer.joinable()) committer.join();
    absl::MutexLock lock(&db_mu);
    insert.Finalize();
    exists.Finalize();
    add_pending.Finalize();
    read_pending.Finalize();
    drop_pending.Finalize();
    for (Statement& c : control) c.Finalize();
    if (db != nullptr) sqlite3_close(db);
  }

  static void BindText(sqlite3_stmt* s, int i, absl::string_view v) {
    sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }

  // Records a first try of an activity whose id carries its deadline.
  absl::Status AddPending(absl::string_view id, absl::string_view action, absl::string_view payload,
                          absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    sqlite3_stmt* s = add_pending.get();
    sqlite3_reset(s);
    BindText(s, 1, id);
    BindText(s, 2, action);
    sqlite3_bind_blob(s, 3, payload.data(), static_cast<int>(payload.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 4, absl::ToUnixMillis(deadline));
    if (sqlite3_step(s) != SQLITE_DONE) return SqlError("recording the try");
    return absl::OkStatus();
  }

  // The payload a pending try was given; nullopt when none is pending.
  absl::StatusOr<std::optional<std::string>> PendingPayload(absl::string_view id,
                                                            absl::string_view action)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    sqlite3_stmt* s = read_pending.get();
    sqlite3_reset(s);
    BindText(s, 1, id);
    BindText(s, 2, action);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) return std::nullopt;
    if (rc != SQLITE_ROW) return SqlError("reading the try");
    const void* blob = sqlite3_column_blob(s, 0);
    int n = sqlite3_column_bytes(s, 0);
    return std::string(static_cast<const char*>(blob), static_cast<size_t>(n));
  }

  absl::Status DropPending(absl::string_view id, absl::string_view action)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    sqlite3_stmt* s = drop_pending.get();
    sqlite3_reset(s);
    BindText(s, 1, id);
    BindText(s, 2, action);
    if (sqlite3_step(s) != SQLITE_DONE) return SqlError("clearing the try");
    return absl::OkStatus();
  }

  absl::Status SqlError(absl::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    return absl::InternalError(
        absl::StrCat(options.database, ": ", what, ": ", sqlite3_errmsg(db)));
  }

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return SqlError(sql);
    return absl::OkStatus();
  }

  // The statements every local transaction runs, prepared once.
  enum Control { kBegin, kSavepoint, kRollbackTo, kRelease, kCommit, kRollback, kControls };
  Statement control[kControls] ABSL_GUARDED_BY(db_mu);

  absl::Status Run(Control c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    static constexpr const char* kSql[kControls] = {"BEGIN IMMEDIATE",
                                                    "SAVEPOINT formica_step",
                                                    "ROLLBACK TO formica_step",
                                                    "RELEASE formica_step",
                                                    "COMMIT",
                                                    "ROLLBACK"};
    Statement& s = control[c];
    if (s.get() == nullptr) {
      if (absl::Status st = s.Prepare(db, kSql[c]); !st.ok()) return st;
    }
    absl::Status st = sqlite3_step(s.get()) == SQLITE_DONE ? absl::OkStatus() : SqlError(kSql[c]);
    sqlite3_reset(s.get());
    return st;
  }

  // Inserts a barrier row; false when it was there already.
  absl::StatusOr<bool> Mark(absl::string_view id, absl::string_view action, const char* phase)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    sqlite3_stmt* s = insert.get();
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, action.data(), static_cast<int>(action.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, phase, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, absl::ToUnixMillis(absl::Now()));
    if (sqlite3_step(s) != SQLITE_DONE) return SqlError("writing the barrier");
    return sqlite3_changes(db) > 0;
  }

  absl::StatusOr<bool> Has(absl::string_view id, absl::string_view action, const char* phase)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    sqlite3_stmt* s = exists.get();
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, action.data(), static_cast<int>(action.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 3, phase, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqlError("reading the barrier");
  }

  // The barrier rows of one action in the SQLite table, for the protocol
  // in barrier.h. Used only inside a local transaction (db_mu held).
  class Rows final : public BarrierRows {
   public:
    Rows(Impl* impl, absl::string_view id, absl::string_view action)
        : impl_(impl), id_(id), action_(action) {}
    absl::StatusOr<bool> Mark(BarrierPhase phase) override ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return impl_->Mark(id_, action_, BarrierPhaseName(phase));
    }
    absl::StatusOr<bool> Has(BarrierPhase phase) override ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return impl_->Has(id_, action_, BarrierPhaseName(phase));
    }
    // The cancel's own row tells a late try it came too late.
    absl::StatusOr<TryClaim> ClaimTry() override {
      absl::StatusOr<bool> cancelled = Has(BarrierPhase::kCancel);
      if (!cancelled.ok()) return cancelled.status();
      if (*cancelled) return TryClaim::kAfterCancel;
      absl::StatusOr<bool> fresh = Mark(BarrierPhase::kTry);
      if (!fresh.ok()) return fresh.status();
      return *fresh ? TryClaim::kFirst : TryClaim::kRepeat;
    }
    // SQLite runs one writer at a time, and a try checks for the cancel row
    // the cancel already wrote: nothing more to bar it.
    absl::StatusOr<bool> BarLateTry() override { return true; }

   private:
    Impl* const impl_;
    const absl::string_view id_;
    const absl::string_view action_;
  };

  // Runs `work` in a local transaction: its changes are committed when it
  // returns OK (and asks to keep them), undone otherwise. Concurrent callers
  // share one SQLite transaction and so one sync (group commit): the first
  // becomes the leader and runs every waiting `work` inside its own
  // savepoint, on the leader's thread, then commits once.
  using Work = std::function<absl::Status(bool* keep)>;
  // One InTransactions call: the leader hands leadership to it by name.
  struct Caller {
    bool may_lead = false;
  };
  struct Pending {
    const Work* work;
    absl::Status result;
    bool done = false;
    Caller* caller;  // nullptr: queued by RunAsync, finished through on_done
    std::function<void(absl::Status)> on_done;
    Work owned;
  };
  absl::Mutex queue_mu;
  std::vector<Pending*> queue ABSL_GUARDED_BY(queue_mu);
  bool leading ABSL_GUARDED_BY(queue_mu) = false;
  // The committer thread leads when the oldest queued work has no caller
  // waiting for it (RunAsync): no gRPC thread waits for a sync.
  bool committer_leads ABSL_GUARDED_BY(queue_mu) = false;
  bool closing ABSL_GUARDED_BY(queue_mu) = false;
  std::thread committer;

  // Runs `work` in the next group commit without waiting; `done` gets its
  // outcome on the thread that ran it.
  void RunAsync(Work work, std::function<void(absl::Status)> done) {
    auto* p =
        new Pending{nullptr, absl::OkStatus(), false, nullptr, std::move(done), std::move(work)};
    p->work = &p->owned;
    absl::MutexLock lock(&queue_mu);
    queue.push_back(p);
    if (!leading) {
      leading = true;
      committer_leads = true;
    }
  }

  // Hands the lead to whoever owns the oldest queued work, or gives it up.
  void HandOverLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu) {
    if (queue.empty()) {
      leading = false;
    } else if (queue.front()->caller != nullptr) {
      queue.front()->caller->may_lead = true;
    } else {
      committer_leads = true;
    }
  }

  // Runs a batch (queue_mu not held) and finishes its RunAsync works; the
  // others are marked done by the caller once it holds queue_mu again.
  std::vector<Pending*> RunAndFinish(std::vector<Pending*> batch) {
    RunBatch(batch);
    std::vector<Pending*> waited;
    for (Pending* p : batch) {
      if (p->caller != nullptr) {
        waited.push_back(p);
      } else {
        p->on_done(std::move(p->result));
        delete p;
      }
    }
    return waited;
  }

  void CommitterLoop() {
    absl::MutexLock lock(&queue_mu);
    auto wake = [this]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu) { return committer_leads || closing; };
    while (true) {
      queue_mu.Await(absl::Condition(&wake));
      if (!committer_leads) return;  // closing, nothing handed over
      committer_leads = false;
      // Leads for one batch, then hands over as any leader does.
      if (!queue.empty()) {
        std::vector<Pending*> batch;
        batch.swap(queue);
        queue_mu.Unlock();
        std::vector<Pending*> waited = RunAndFinish(std::move(batch));
        queue_mu.Lock();
        for (Pending* p : waited) p->done = true;
      }
      HandOverLocked();
    }
  }

  absl::Status InTransaction(const Work& work) {
    std::vector<absl::Status> results = InTransactions({&work});
    return results[0];
  }

  // As InTransaction, for several independent works at once.
  std::vector<absl::Status> InTransactions(const std::vector<const Work*>& works) {
    if (in_local_transaction) {
      // A body or step starting another local transaction would wait for
      // the one it runs in.
      return std::vector<absl::Status>(
          works.size(), absl::FailedPreconditionError(
                            "a body or step cannot start another local transaction; use the "
                            "sqlite3* it is given"));
    }
    Caller me;
    std::vector<Pending> mine;
    mine.reserve(works.size());
    for (const Work* w : works) mine.push_back(Pending{w, absl::OkStatus(), false, &me, {}, {}});
    auto all_done = [&mine]() {
      for (const Pending& p : mine) {
        if (!p.done) return false;
      }
      return true;
    };
    // Woken only when its works are done or it is handed the lead: never
    // all at once.
    auto wake = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return all_done() || me.may_lead || !leading;
    };
    absl::MutexLock lock(&queue_mu);
    for (Pending& p : mine) queue.push_back(&p);
    while (!all_done()) {
      if (leading && !me.may_lead) {
        queue_mu.Await(absl::Condition(&wake));
        continue;
      }
      // Lead until our own works are done, then hand the lead to the
      // caller of the oldest work still queued (or give it up).
      leading = true;
      me.may_lead = false;
      while (!all_done() && !queue.empty()) {
        std::vector<Pending*> batch;
        batch.swap(queue);
        queue_mu.Unlock();
        std::vector<Pending*> waited = RunAndFinish(std::move(batch));
        queue_mu.Lock();
        for (Pending* p : waited) p->done = true;
      }
      HandOverLocked();
    }
    std::vector<absl::Status> results;
    for (Pending& p : mine) results.push_back(std::move(p.result));
    return results;
  }

  // Runs a batch in as few SQLite transactions as it can: each work in a
  // savepoint of the open one. Bodies may not run transaction statements
  // (the authorizer refuses them), so the transaction only ends early when
  // SQLite rolls it back on an error; then the works kept in it so far are
  // reported ABORTED (nothing of them stays) and a new one begins.
  void RunBatch(const std::vector<Pending*>& batch) {
    absl::MutexLock lock(&db_mu);
    std::vector<Pending*> kept;
    bool open = false;
    auto lost = [&](const absl::Status& why) {
      for (Pending* k : kept) {
        k->result = absl::AbortedError(absl::StrCat(
            "the local transaction was rolled back with another step of its group commit (",
            why.message(), "); nothing of this step was kept, try again"));
      }
      kept.clear();
      open = false;
    };
    for (Pending* p : batch) {
      if (!open) {
        if (absl::Status st = Run(kBegin); !st.ok()) {
          p->result = st;
          continue;
        }
        open = true;
      }
      if (absl::Status st = Run(kSavepoint); !st.ok()) {
        p->result = st;
        if (sqlite3_get_autocommit(db)) lost(st);
        continue;
      }
      bool keep = true;
      in_local_transaction = true;
      in_body = true;
      p->result = (*p->work)(&keep);
      in_body = false;
      in_local_transaction = false;
      if (sqlite3_get_autocommit(db)) {  // SQLite rolled the transaction back
        absl::Status why = p->result.ok() ? SqlError("the transaction ended") : p->result;
        if (p->result.ok()) p->result = why;
        lost(why);
        continue;
      }
      absl::Status undo = absl::OkStatus();
      if (!p->result.ok() || !keep) undo = Run(kRollbackTo);
      absl::Status release = Run(kRelease);
      if (!undo.ok() || !release.ok()) {
        absl::Status why = !undo.ok() ? undo : release;
        if (p->result.ok()) p->result = why;
        // Cannot tell what of this step stays: give up the transaction.
        Run(kRollback).IgnoreError();
        lost(why);
        continue;
      }
      if (p->result.ok() && keep) kept.push_back(p);
    }
    if (!open) return;
    absl::Status end = Run(kept.empty() ? kRollback : kCommit);
    if (!end.ok()) {
      Run(kRollback).IgnoreError();
      for (Pending* k : kept) k->result = end;  // nothing of it is kept
    }
  }

  // Refuses transaction statements from a body or step.
  static int Authorize(void*, int action, const char*, const char*, const char*, const char*) {
    if (in_body && (action == SQLITE_TRANSACTION || action == SQLITE_SAVEPOINT)) {
      return SQLITE_DENY;
    }
    return SQLITE_OK;
  }

  absl::Status Enlist(absl::string_view id, absl::string_view action, absl::string_view payload) {
    v1::CoordinatorOp op;
    v1::EnlistRequest* request = op.mutable_enlist();
    request->set_activity_id(std::string(id));
    request->set_participant(options.name);
    request->set_action(std::string(action));
    request->set_payload(std::string(payload));
    return calls->Run(op, options.enlist_timeout).status();
  }

  std::string JoinedEntry(absl::string_view id, absl::string_view action) const {
    return absl::StrCat("dts ", EscapeJoinedField(id), " ", EscapeJoinedField(options.name), " ",
                        EscapeJoinedField(action));
  }

  // The local work of a try of an activity whose id carries its deadline:
  // the barrier, the pending row (payload and deadline), and the body.
  Work RecordedTryWork(std::string id, std::string action, std::string payload, absl::Time deadline,
                       Body body) {
    return [this, id = std::move(id), action = std::move(action), payload = std::move(payload),
            deadline, body = std::move(body)](bool* keep)
               ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
                 absl::StatusOr<std::optional<std::string>> before = PendingPayload(id, action);
                 if (!before.ok()) return before.status();
                 if (before->has_value() && **before != payload) {
                   *keep = false;
                   return absl::FailedPreconditionError(absl::StrCat(
                       "action ", action, " of ", options.name, " is already enlisted in activity ",
                       id, " with another payload; give each action of an activity its own name"));
                 }
                 Rows rows(this, id, action);
                 return TryUnderBarrier(
                     rows, BarrierAction{options.name, id, action}, keep,
                     [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
                       if (absl::Status p = AddPending(id, action, payload, deadline); !p.ok()) {
                         return p;
                       }
                       return body(db);
                     });
               };
  }

  void TryAsync(grpc::CallbackServerContext* ctx, absl::string_view action, std::string payload,
                Body body, std::function<void(absl::Status)> done) {
    std::string id = rpc::ReadCallContext(*ctx).txn_id;
    std::optional<absl::Time> deadline = DeadlineOfId(id);
    absl::Status checked =
        CheckTry(BarrierAction{options.name, id, action}, steps.Declared(action));
    if (!checked.ok() || !deadline.has_value()) {
      // Refused, or begun at the coordinator: its enlist waits here.
      done(checked.ok() ? Try(id, action, payload, body) : checked);
      return;
    }
    std::string entry = JoinedEntry(id, action);
    RunAsync(
        RecordedTryWork(id, std::string(action), std::move(payload), *deadline, std::move(body)),
        [ctx, entry = std::move(entry), done = std::move(done)](absl::Status st) {
          if (st.ok()) ctx->AddTrailingMetadata(rpc::kJoinedKey, entry);
          done(std::move(st));
        });
  }

  absl::Status Try(absl::string_view id, absl::string_view action, absl::string_view payload,
                   const Body& body) {
    BarrierAction what{options.name, id, action};
    if (absl::Status st = CheckTry(what, steps.Declared(action)); !st.ok()) return st;
    if (std::optional<absl::Time> deadline = DeadlineOfId(id); deadline.has_value()) {
      // The initiator made the id: the try is recorded here, in its own
      // local transaction (durable before the answer), and reported back
      // to the initiator, who hands it to dtsd with the decision. If the
      // report is lost, the check-back finds the try past its deadline.
      absl::Status st =
          InTransaction(RecordedTryWork(std::string(id), std::string(action), std::string(payload),
                                        *deadline, [&body](sqlite3* db) { return body(db); }));
      if (st.ok()) rpc::ReportJoined(JoinedEntry(id, action));
      return st;
    }
    // Enlisted first, durably: whatever the local transaction then does,
    // dtsd will come back with confirm or cancel.
    if (absl::Status st = Enlist(id, action, payload); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("enlisting ", action, " in activity ",
                                                  std::string(id), ": ", st.message()));
    }
    return InTransaction([&](bool* keep) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
      Rows rows(this, id, action);
      return TryUnderBarrier(rows, what, keep,
                             [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return body(db); });
    });
  }

  // The local work of one confirm or cancel, or the error that stops it.
  absl::StatusOr<Work> PhaseTwoWork(bool confirm, ActionCall call) {
    if (absl::Status st = CheckPhaseTwo(call.activity_id, call.action); !st.ok()) return st;
    absl::StatusOr<Step> step = steps.For(call.action, confirm, options.name);
    if (!step.ok()) return step.status();
    bool pending = DeadlineOfId(call.activity_id).has_value();
    return Work([this, confirm, pending, call = std::move(call), step = *std::move(step)](
                    bool* keep) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
      Rows rows(this, call.activity_id, call.action);
      absl::Status st =
          PhaseTwoUnderBarrier(rows, BarrierAction{options.name, call.activity_id, call.action},
                               confirm, keep, [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
                                 if (!step) return absl::OkStatus();
                                 if (!pending || !call.payload.empty()) return step(db, call);
                                 // dtsd sends no payload for a try reported back: it is here.
                                 absl::StatusOr<std::optional<std::string>> kept =
                                     PendingPayload(call.activity_id, call.action);
                                 if (!kept.ok()) return kept.status();
                                 if (!kept->has_value()) return step(db, call);
                                 ActionCall with = call;
                                 with.payload = **std::move(kept);
                                 return step(db, with);
                               });
      if (st.ok() && *keep && pending) return DropPending(call.activity_id, call.action);
      return st;
    });
  }

  // Asks dtsd the outcome of tries past their activity's deadline that no
  // confirm or cancel reached, and runs it here.
  void CheckBackOnce() {
    std::vector<std::pair<std::string, std::string>> due;  // (activity, action)
    {
      absl::MutexLock lock(&db_mu);
      sqlite3_stmt* s = nullptr;
      if (sqlite3_prepare_v2(db,
                             "SELECT activity_id, action FROM formica_dts_pending WHERE "
                             "deadline_ms <= ?1 ORDER BY deadline_ms LIMIT 500",
                             -1, &s, nullptr) != SQLITE_OK) {
        SPDLOG_WARN("{}: check-back: {}", options.name, sqlite3_errmsg(db));
        return;
      }
      sqlite3_bind_int64(s, 1, absl::ToUnixMillis(absl::Now()));
      while (sqlite3_step(s) == SQLITE_ROW) {
        due.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)),
                         reinterpret_cast<const char*>(sqlite3_column_text(s, 1)));
      }
      sqlite3_finalize(s);
    }
    std::map<std::string, v1::ActivityState> outcome;
    for (const auto& [id, action] : due) {
      if (outcome.count(id) > 0) continue;
      if (Stopping()) return;  // the participant is closing: the next start asks again
      v1::CoordinatorOp op;
      op.mutable_resolve()->set_activity_id(id);
      absl::StatusOr<v1::OpResult> r = calls->Run(op, options.enlist_timeout);
      if (!r.ok()) {
        if (absl::IsNotFound(r.status()) && reported_lost.insert(id).second) {
          SPDLOG_ERROR("{}: the outcome of activity {} is unknown to dtsd: {}", options.name, id,
                       r.status().ToString());
        }
        outcome[id] = v1::ACTIVE;  // asked again next time
        continue;
      }
      outcome[id] = r->state();
    }
    std::vector<Work> works;
    for (const auto& [id, action] : due) {
      v1::ActivityState state = outcome[id];
      bool confirm = state == v1::COMMITTING || state == v1::COMMITTED;
      if (!confirm && state != v1::ROLLING_BACK && state != v1::ROLLED_BACK) continue;
      absl::StatusOr<Work> w = PhaseTwoWork(confirm, ActionCall{id, action, ""});
      if (w.ok()) works.push_back(*std::move(w));
    }
    std::vector<const Work*> runnable;
    for (const Work& w : works) runnable.push_back(&w);
    std::vector<absl::Status> ran = InTransactions(runnable);
    for (size_t i = 0; i < ran.size(); ++i) {
      if (!ran[i].ok()) SPDLOG_WARN("{}: check-back: {}", options.name, ran[i].ToString());
    }
  }

  bool Stopping() {
    absl::MutexLock lock(&stop_mu);
    return stopping;
  }

  void CheckBackLoop() {
    absl::MutexLock lock(&stop_mu);
    auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu) { return stopping; };
    while (!stop_mu.AwaitWithTimeout(absl::Condition(&stop), options.check_back_interval)) {
      stop_mu.Unlock();
      CheckBackOnce();
      stop_mu.Lock();
    }
  }

  // Phase two on gRPC's callback API: the works go to the group commit and
  // the answer leaves from the thread that ran them; no gRPC thread waits.
  grpc::ServerUnaryReactor* RunPhaseTwo(grpc::CallbackServerContext* ctx,
                                        std::vector<v1::PhaseTwoItem> items,
                                        v1::PhaseTwoBatchResponse* batch, bool single) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    struct State {
      std::vector<absl::Status> results;
      std::atomic<size_t> left{0};
    };
    auto state = std::make_shared<State>();
    state->results.resize(items.size());
    auto finish = [reactor, batch, single, state] {
      if (single) {
        reactor->Finish(ToGrpcStatus(state->results[0]));
        return;
      }
      for (const absl::Status& st : state->results) {
        v1::PhaseTwoResult* r = batch->add_results();
        r->set_code(static_cast<int>(st.code()));
        r->set_message(std::string(st.message()));
      }
      reactor->Finish(grpc::Status::OK);
    };
    std::vector<std::pair<size_t, Work>> runnable;
    for (size_t i = 0; i < items.size(); ++i) {
      const v1::PhaseTwoItem& item = items[i];
      absl::StatusOr<Work> w = PhaseTwoWork(
          item.confirm(), ActionCall{item.activity_id(), item.action(), item.payload()});
      if (w.ok()) {
        runnable.emplace_back(i, *std::move(w));
      } else {
        state->results[i] = w.status();
      }
    }
    if (runnable.empty()) {
      finish();
      return reactor;
    }
    state->left = runnable.size();
    for (auto& [i, work] : runnable) {
      RunAsync(std::move(work), [state, finish, i = i](absl::Status st) {
        state->results[i] = std::move(st);
        if (state->left.fetch_sub(1) == 1) finish();
      });
    }
    return reactor;
  }

  static v1::PhaseTwoItem Item(const v1::PhaseTwoRequest& req, bool confirm) {
    v1::PhaseTwoItem item;
    item.set_activity_id(req.activity_id());
    item.set_action(req.action());
    item.set_payload(req.payload());
    item.set_confirm(confirm);
    return item;
  }

  grpc::ServerUnaryReactor* PhaseTwoBatch(grpc::CallbackServerContext* ctx,
                                          const v1::PhaseTwoBatchRequest* req,
                                          v1::PhaseTwoBatchResponse* resp) override {
    return RunPhaseTwo(ctx, {req->items().begin(), req->items().end()}, resp, false);
  }
  grpc::ServerUnaryReactor* Confirm(grpc::CallbackServerContext* ctx,
                                    const v1::PhaseTwoRequest* req,
                                    v1::PhaseTwoResponse*) override {
    return RunPhaseTwo(ctx, {Item(*req, true)}, nullptr, true);
  }
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx, const v1::PhaseTwoRequest* req,
                                   v1::PhaseTwoResponse*) override {
    return RunPhaseTwo(ctx, {Item(*req, false)}, nullptr, true);
  }
};

absl::StatusOr<std::unique_ptr<Participant>> Participant::Open(ParticipantOptions options,
                                                               rpc::Client* rpc) {
  if (rpc == nullptr) return absl::InvalidArgumentError("dts::Participant needs an rpc::Client");
  if (options.name.empty())
    return absl::InvalidArgumentError("ParticipantOptions.name is required");
  if (options.database.empty()) {
    return absl::InvalidArgumentError("ParticipantOptions.database is required");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->calls = CoordinatorCalls::Shared(rpc);
  absl::MutexLock lock(&impl->db_mu);
  if (sqlite3_open_v2(impl->options.database.c_str(), &impl->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string why = impl->db != nullptr ? sqlite3_errmsg(impl->db) : "out of memory";
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open database '", impl->options.database, "': ", why));
  }
  sqlite3_busy_timeout(impl->db, 5000);
  for (const char* sql :
       {"PRAGMA journal_mode=WAL",
        impl->options.durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", kSchema,
        kPendingSchema}) {
    if (absl::Status st = impl->Exec(sql); !st.ok()) return st;
  }
  sqlite3_set_authorizer(impl->db, &Impl::Authorize, nullptr);
  if (absl::Status st = impl->insert.Prepare(
          impl->db, "INSERT OR IGNORE INTO formica_dts_barrier VALUES (?1, ?2, ?3, ?4)");
      !st.ok()) {
    return st;
  }
  if (absl::Status st = impl->exists.Prepare(
          impl->db,
          "SELECT 1 FROM formica_dts_barrier WHERE activity_id=?1 AND action=?2 AND phase=?3");
      !st.ok()) {
    return st;
  }
  for (auto [stmt, sql] :
       {std::pair{&impl->add_pending,
                  "INSERT OR IGNORE INTO formica_dts_pending VALUES (?1, ?2, ?3, ?4)"},
        {&impl->read_pending,
         "SELECT payload FROM formica_dts_pending WHERE activity_id=?1 AND action=?2"},
        {&impl->drop_pending,
         "DELETE FROM formica_dts_pending WHERE activity_id=?1 AND action=?2"}}) {
    if (absl::Status st = stmt->Prepare(impl->db, sql); !st.ok()) return st;
  }
  Impl* raw = impl.get();
  impl->check_back = std::thread([raw] { raw->CheckBackLoop(); });
  impl->committer = std::thread([raw] { raw->CommitterLoop(); });
  return std::unique_ptr<Participant>(new Participant(std::move(impl)));
}

Participant::Participant(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Participant::~Participant() = default;

const std::string& Participant::name() const { return impl_->options.name; }
grpc::Service* Participant::service() { return impl_.get(); }

void Participant::Declare(const std::string& action, Step confirm, Step cancel) {
  impl_->steps.Declare(action, std::move(confirm), std::move(cancel));
}

absl::Status Participant::Try(absl::string_view action, absl::string_view payload,
                              const Body& body) {
  const rpc::CallContext* current = rpc::CurrentCallContext();
  return impl_->Try(current == nullptr ? absl::string_view() : current->txn_id, action, payload,
                    body);
}

absl::Status Participant::Try(absl::string_view activity_id, absl::string_view action,
                              absl::string_view payload, const Body& body) {
  return impl_->Try(activity_id, action, payload, body);
}

void Participant::TryAsync(grpc::CallbackServerContext* ctx, absl::string_view action,
                           std::string payload, Body body, std::function<void(absl::Status)> done) {
  impl_->TryAsync(ctx, action, std::move(payload), std::move(body), std::move(done));
}

absl::Status Participant::Transaction(const Body& body) {
  return impl_->InTransaction([&](bool*)
                                  ABSL_NO_THREAD_SAFETY_ANALYSIS { return body(impl_->db); });
}

}  // namespace formica::dts
