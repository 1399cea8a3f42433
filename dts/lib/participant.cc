#include "formica/dts/participant.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "barrier.h"
#include "coordinator_calls.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/activity.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"

namespace formica::dts {
namespace {

// Set while this thread runs a body or step inside a local transaction.
thread_local bool in_local_transaction = false;
thread_local bool in_body = false;

constexpr char kSchema[] =
    "CREATE TABLE IF NOT EXISTS formica_dts_barrier ("
    " activity_id TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " phase TEXT NOT NULL,"  // try, confirm or cancel
    " at_ms INTEGER NOT NULL,"
    " PRIMARY KEY (activity_id, action, phase)) WITHOUT ROWID";

// One prepared statement, reset after each use.
class Statement {
 public:
  Statement() = default;
  ~Statement() { Finalize(); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  void Finalize() {
    sqlite3_finalize(stmt_);
    stmt_ = nullptr;
  }
  absl::Status Prepare(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      return absl::InternalError(absl::StrCat("barrier table: ", sqlite3_errmsg(db)));
    }
    return absl::OkStatus();
  }
  sqlite3_stmt* get() { return stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

}  // namespace

class Participant::Impl final : public v1::Participant::Service {
 public:
  ParticipantOptions options;
  std::shared_ptr<CoordinatorCalls> calls;  // shared with the process's other users of rpc
  absl::Mutex db_mu;                        // one local transaction at a time on the connection
  sqlite3* db ABSL_GUARDED_BY(db_mu) = nullptr;
  Statement insert ABSL_GUARDED_BY(db_mu);
  Statement exists ABSL_GUARDED_BY(db_mu);
  DeclaredSteps<Step> steps;

  ~Impl() override {
    absl::MutexLock lock(&db_mu);
    insert.Finalize();
    exists.Finalize();
    if (db != nullptr) sqlite3_close(db);
  }

  absl::Status SqlError(absl::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    return absl::InternalError(
        absl::StrCat(options.database, ": ", what, ": ", sqlite3_errmsg(db)));
  }

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu) {
    if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return SqlError(sql);
    return absl::OkStatus();
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
  struct Pending {
    const Work* work;
    absl::Status result;
    bool done = false;
  };
  absl::Mutex queue_mu;
  std::vector<Pending*> queue ABSL_GUARDED_BY(queue_mu);
  bool leading ABSL_GUARDED_BY(queue_mu) = false;

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
    std::vector<Pending> mine;
    mine.reserve(works.size());
    for (const Work* w : works) mine.push_back(Pending{w, absl::OkStatus(), false});
    auto all_done = [&mine]() {
      for (const Pending& p : mine) {
        if (!p.done) return false;
      }
      return true;
    };
    auto done_or_free = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return all_done() || !leading; };
    absl::MutexLock lock(&queue_mu);
    for (Pending& p : mine) queue.push_back(&p);
    while (!all_done()) {
      if (leading) {
        queue_mu.Await(absl::Condition(&done_or_free));
        continue;
      }
      // Lead until our own works are done, then let a waiter take over.
      leading = true;
      while (!all_done() && !queue.empty()) {
        std::vector<Pending*> batch;
        batch.swap(queue);
        queue_mu.Unlock();
        RunBatch(batch);
        queue_mu.Lock();
        for (Pending* p : batch) p->done = true;
      }
      leading = false;
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
        if (absl::Status st = Exec("BEGIN IMMEDIATE"); !st.ok()) {
          p->result = st;
          continue;
        }
        open = true;
      }
      if (absl::Status st = Exec("SAVEPOINT formica_step"); !st.ok()) {
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
      if (!p->result.ok() || !keep) undo = Exec("ROLLBACK TO formica_step");
      absl::Status release = Exec("RELEASE formica_step");
      if (!undo.ok() || !release.ok()) {
        absl::Status why = !undo.ok() ? undo : release;
        if (p->result.ok()) p->result = why;
        // Cannot tell what of this step stays: give up the transaction.
        Exec("ROLLBACK").IgnoreError();
        lost(why);
        continue;
      }
      if (p->result.ok() && keep) kept.push_back(p);
    }
    if (!open) return;
    absl::Status end = Exec(kept.empty() ? "ROLLBACK" : "COMMIT");
    if (!end.ok()) {
      Exec("ROLLBACK").IgnoreError();
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

  absl::Status Try(absl::string_view id, absl::string_view action, absl::string_view payload,
                   const Body& body) {
    BarrierAction what{options.name, id, action};
    if (absl::Status st = CheckTry(what, steps.Declared(action)); !st.ok()) return st;
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
    return Work([this, confirm, call = std::move(call), step = *std::move(step)](
                    bool* keep) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
      Rows rows(this, call.activity_id, call.action);
      return PhaseTwoUnderBarrier(rows, BarrierAction{options.name, call.activity_id, call.action},
                                  confirm, keep, [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                    return step ? step(db, call) : absl::OkStatus();
                                  });
    });
  }

  absl::Status PhaseTwo(bool confirm, const v1::PhaseTwoRequest& req) {
    absl::StatusOr<Work> work =
        PhaseTwoWork(confirm, ActionCall{req.activity_id(), req.action(), req.payload()});
    if (!work.ok()) return work.status();
    return InTransaction(*work);
  }

  grpc::Status PhaseTwoBatch(grpc::ServerContext* ctx, const v1::PhaseTwoBatchRequest* req,
                             v1::PhaseTwoBatchResponse* resp) override {
    return rpc::Serve(ctx, [&] {
      std::vector<absl::StatusOr<Work>> works;
      std::vector<const Work*> runnable;
      for (const v1::PhaseTwoItem& item : req->items()) {
        works.push_back(PhaseTwoWork(
            item.confirm(), ActionCall{item.activity_id(), item.action(), item.payload()}));
      }
      for (auto& w : works) {
        if (w.ok()) runnable.push_back(&*w);
      }
      std::vector<absl::Status> ran = InTransactions(runnable);
      size_t next = 0;
      for (auto& w : works) {
        absl::Status st = w.ok() ? ran[next++] : w.status();
        v1::PhaseTwoResult* r = resp->add_results();
        r->set_code(static_cast<int>(st.code()));
        r->set_message(std::string(st.message()));
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status Confirm(grpc::ServerContext* ctx, const v1::PhaseTwoRequest* req,
                       v1::PhaseTwoResponse*) override {
    return rpc::Serve(ctx, [&] { return ToGrpcStatus(PhaseTwo(true, *req)); });
  }
  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::PhaseTwoRequest* req,
                      v1::PhaseTwoResponse*) override {
    return rpc::Serve(ctx, [&] { return ToGrpcStatus(PhaseTwo(false, *req)); });
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
        impl->options.durable ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", kSchema}) {
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

absl::Status Participant::Transaction(const Body& body) {
  return impl_->InTransaction([&](bool*)
                                  ABSL_NO_THREAD_SAFETY_ANALYSIS { return body(impl_->db); });
}

}  // namespace formica::dts
