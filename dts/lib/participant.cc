#include "formica/dts/participant.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_id.h"
#include "barrier.h"
#include "check_back.h"
#include "coordinator_calls.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/activity.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/internal/credentials.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "local_group_commit.h"
#include "participant_sql.h"

namespace formica::dts {
namespace {

// Set while this thread runs a body or step inside a local transaction.
thread_local bool in_local_transaction = false;
thread_local bool in_body = false;

}  // namespace

class Participant::Impl final : public v1::Participant::CallbackService, public PendingTries {
 public:
  ParticipantOptions options;
  std::string coordinator;                  // the identity phase two is taken from ("": any)
  std::shared_ptr<CoordinatorCalls> calls;  // shared with the process's other users of rpc
  absl::Mutex db_mu;                        // one local transaction at a time on the connection
  sqlite3* db ABSL_GUARDED_BY(db_mu) = nullptr;
  Statement insert ABSL_GUARDED_BY(db_mu);
  Statement exists ABSL_GUARDED_BY(db_mu);
  Statement add_pending ABSL_GUARDED_BY(db_mu);
  Statement read_pending ABSL_GUARDED_BY(db_mu);
  Statement drop_pending ABSL_GUARDED_BY(db_mu);
  DeclaredSteps<Step> steps;

  // Asks dtsd about tries past their deadline (set by Open).
  std::unique_ptr<CheckBack> check_back;

  ~Impl() override {
    if (check_back != nullptr) check_back->Stop();
    commit.Close();
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

  // The pending row of one action in formica_dts_pending, for barrier.h.
  class PendingTryRow final : public PendingRow {
   public:
    PendingTryRow(Impl* impl, absl::string_view id, absl::string_view action)
        : impl_(impl), id_(id), action_(action) {}
    absl::StatusOr<std::optional<std::string>> Payload() override ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return impl_->PendingPayload(id_, action_);
    }
    absl::Status Add(absl::string_view payload,
                     absl::Time deadline) override ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return impl_->AddPending(id_, action_, payload, deadline);
    }
    absl::Status Drop() override ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return impl_->DropPending(id_, action_);
    }

   private:
    Impl* const impl_;
    const absl::string_view id_;
    const absl::string_view action_;
  };

  using Work = LocalGroupCommit::Work;
  using Pending = LocalGroupCommit::Pending;
  // Local transactions of concurrent callers share one SQLite transaction
  // and so one sync; RunBatch below runs each batch.
  LocalGroupCommit commit{[this](const std::vector<Pending*>& batch) { RunBatch(batch); }};

  void RunAsync(Work work, std::function<void(absl::Status)> done) {
    commit.RunAsync(std::move(work), std::move(done));
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
    return commit.Run(works);
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

  std::string JoinedEntryOf(absl::string_view id, absl::string_view action) const {
    return JoinedEntry(id, options.name, action);
  }

  // The local work of a try of an activity whose id carries its deadline:
  // the barrier, the pending row (payload and deadline), and the body.
  Work RecordedTryWork(std::string id, std::string action, std::string payload, absl::Time deadline,
                       Body body) {
    return [this, id = std::move(id), action = std::move(action), payload = std::move(payload),
            deadline,
            body = std::move(body)](bool* keep) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
      Rows rows(this, id, action);
      PendingTryRow pending(this, id, action);
      return RecordedTryUnderBarrier(rows, pending, BarrierAction{options.name, id, action},
                                     payload, deadline, keep,
                                     [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return body(db); });
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
    if (absl::Status st = CheckTryDeadline(id, *deadline); !st.ok()) {
      done(st);
      return;
    }
    std::string entry = JoinedEntryOf(id, action);
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
      if (absl::Status st = CheckTryDeadline(id, *deadline); !st.ok()) return st;
      absl::Status st =
          InTransaction(RecordedTryWork(std::string(id), std::string(action), std::string(payload),
                                        *deadline, [&body](sqlite3* db) { return body(db); }));
      if (st.ok()) rpc::ReportJoined(JoinedEntryOf(id, action));
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
      BarrierAction what{options.name, call.activity_id, call.action};
      if (!pending) {
        return PhaseTwoUnderBarrier(rows, what, confirm, keep,
                                    [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
                                      return step ? step(db, call) : absl::OkStatus();
                                    });
      }
      PendingTryRow row(this, call.activity_id, call.action);
      return RecordedPhaseTwoUnderBarrier(rows, row, what, confirm, keep, call.payload,
                                          [&](const std::string& payload)
                                              ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
                                                if (!step) return absl::OkStatus();
                                                ActionCall with = call;
                                                with.payload = payload;
                                                return step(db, with);
                                              });
    });
  }

  // The check-back's view of formica_dts_pending (check_back.h).
  absl::StatusOr<std::vector<PendingTry>> Due(absl::Time now, int limit) override {
    std::vector<PendingTry> due;
    absl::MutexLock lock(&db_mu);
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db,
                           "SELECT activity_id, action FROM formica_dts_pending WHERE "
                           "check_ms <= ?1 ORDER BY check_ms LIMIT ?2",
                           -1, &s, nullptr) != SQLITE_OK) {
      return SqlError("finding tries past their deadline");
    }
    sqlite3_bind_int64(s, 1, absl::ToUnixMillis(now));
    sqlite3_bind_int(s, 2, limit);
    while (sqlite3_step(s) == SQLITE_ROW) {
      due.push_back(PendingTry{reinterpret_cast<const char*>(sqlite3_column_text(s, 0)),
                               reinterpret_cast<const char*>(sqlite3_column_text(s, 1)), ""});
    }
    sqlite3_finalize(s);
    return due;
  }

  absl::Status Postpone(const PendingTry& t, absl::Time when) override {
    return InTransaction([&](bool*) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
      sqlite3_stmt* s = nullptr;
      if (sqlite3_prepare_v2(db,
                             "UPDATE formica_dts_pending SET check_ms = ?3 WHERE activity_id = ?1 "
                             "AND action = ?2",
                             -1, &s, nullptr) != SQLITE_OK) {
        return SqlError("postponing a check-back");
      }
      BindText(s, 1, t.activity_id);
      BindText(s, 2, t.action);
      sqlite3_bind_int64(s, 3, absl::ToUnixMillis(when));
      int rc = sqlite3_step(s);
      sqlite3_finalize(s);
      return rc == SQLITE_DONE ? absl::OkStatus() : SqlError("postponing a check-back");
    });
  }

  absl::Status Drop(const PendingTry& t) override {
    return InTransaction(
        [&](bool*) ABSL_NO_THREAD_SAFETY_ANALYSIS { return DropPending(t.activity_id, t.action); });
  }

  // The confirms and cancels of one pass, in group commits.
  std::vector<absl::Status> Finish(
      const std::vector<std::pair<const PendingTry*, bool>>& outcomes) override {
    std::vector<absl::Status> results(outcomes.size());
    std::vector<Work> works;
    std::vector<size_t> at;  // index into outcomes of each work
    for (size_t i = 0; i < outcomes.size(); ++i) {
      const auto& [t, confirm] = outcomes[i];
      absl::StatusOr<Work> w = PhaseTwoWork(confirm, ActionCall{t->activity_id, t->action, ""});
      if (!w.ok()) {
        results[i] = w.status();
        continue;
      }
      works.push_back(*std::move(w));
      at.push_back(i);
    }
    std::vector<const Work*> runnable;
    for (const Work& w : works) runnable.push_back(&w);
    std::vector<absl::Status> ran = InTransactions(runnable);
    for (size_t k = 0; k < ran.size(); ++k) results[at[k]] = ran[k];
    return results;
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

  // Phase two comes only from dtsd's identity, when one is configured.
  grpc::ServerUnaryReactor* Refused(grpc::CallbackServerContext* ctx, absl::string_view act) {
    absl::Status st = CheckPeerIs(
        ctx, coordinator, absl::StrCat(act, " actions of participant '", options.name, "'"));
    if (st.ok()) return nullptr;
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }

  grpc::ServerUnaryReactor* PhaseTwoBatch(grpc::CallbackServerContext* ctx,
                                          const v1::PhaseTwoBatchRequest* req,
                                          v1::PhaseTwoBatchResponse* resp) override {
    if (auto* refused = Refused(ctx, "confirm or cancel")) return refused;
    return RunPhaseTwo(ctx, {req->items().begin(), req->items().end()}, resp, false);
  }
  grpc::ServerUnaryReactor* Confirm(grpc::CallbackServerContext* ctx,
                                    const v1::PhaseTwoRequest* req,
                                    v1::PhaseTwoResponse*) override {
    if (auto* refused = Refused(ctx, "confirm")) return refused;
    return RunPhaseTwo(ctx, {Item(*req, true)}, nullptr, true);
  }
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx, const v1::PhaseTwoRequest* req,
                                   v1::PhaseTwoResponse*) override {
    if (auto* refused = Refused(ctx, "cancel")) return refused;
    return RunPhaseTwo(ctx, {Item(*req, false)}, nullptr, true);
  }
};

bool JoinsThroughReply(absl::string_view activity_id) {
  return DeadlineOfId(activity_id).has_value();
}

bool ReportJoinedTry(absl::string_view activity_id, absl::string_view participant,
                     absl::string_view action, absl::string_view route) {
  return rpc::ReportJoined(JoinedEntry(activity_id, participant, action, route));
}

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
  impl->coordinator = CoordinatorIdentity(impl->options.coordinator_identity);
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
                  "INSERT OR IGNORE INTO formica_dts_pending VALUES (?1, ?2, ?3, ?4, ?4)"},
        {&impl->read_pending,
         "SELECT payload FROM formica_dts_pending WHERE activity_id=?1 AND action=?2"},
        {&impl->drop_pending,
         "DELETE FROM formica_dts_pending WHERE activity_id=?1 AND action=?2"}}) {
    if (absl::Status st = stmt->Prepare(impl->db, sql); !st.ok()) return st;
  }
  impl->check_back = std::make_unique<CheckBack>(
      CheckBack::Options{impl->options.name, impl->options.check_back_interval,
                         impl->options.enlist_timeout},
      impl->calls, impl.get());
  impl->commit.Start();
  impl->check_back->Start();
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
