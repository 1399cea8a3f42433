#include "formica/dts/sharded_participant.h"

#include <grpcpp/grpcpp.h>

#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "activity_id.h"
#include "barrier.h"
#include "check_back.h"
#include "coordinator_calls.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/internal/credentials.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"

namespace formica::dts {
namespace {

constexpr char kTable[] = "formica_dts_barrier";
constexpr char kPendingTable[] = "formica_dts_pending";

constexpr char kSchema[] =
    "CREATE TABLE IF NOT EXISTS formica_dts_barrier ("
    " shard_key text NOT NULL,"
    " participant text NOT NULL,"  // participants may share a data source
    " activity_id text NOT NULL,"
    " action text NOT NULL,"
    " phase text NOT NULL,"   // try, confirm or cancel
    " origin text NOT NULL,"  // the phase that wrote the row (a cancel writes 'try' rows too)
    " at_ms bigint NOT NULL,"
    " PRIMARY KEY (participant, activity_id, action, phase))";

constexpr char kMark[] =
    "INSERT INTO formica_dts_barrier (shard_key, activity_id, action, phase, origin, at_ms, "
    "participant) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

// Tries of activities whose initiator made their id, not confirmed or
// cancelled yet, on the user's shard beside the barrier rows: the payload
// (base64) phase two hands to the step, the shard key typed as the try had
// it (`route`, for the check-back), and when to ask dtsd for the outcome
// (check_ms: the deadline, later after a check-back that could not finish).
constexpr char kPendingSchema[] =
    "CREATE TABLE IF NOT EXISTS formica_dts_pending ("
    " shard_key text NOT NULL,"
    " participant text NOT NULL,"
    " activity_id text NOT NULL,"
    " action text NOT NULL,"
    " route text NOT NULL,"
    " payload text NOT NULL,"
    " deadline_ms bigint NOT NULL,"
    " check_ms bigint NOT NULL,"
    " PRIMARY KEY (participant, activity_id, action))";
constexpr char kPendingIndex[] =
    "CREATE INDEX IF NOT EXISTS formica_dts_pending_by_check ON formica_dts_pending "
    "(participant, check_ms)";

constexpr char kAddPending[] =
    "INSERT INTO formica_dts_pending (shard_key, participant, activity_id, action, route, "
    "payload, deadline_ms, check_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO "
    "NOTHING";
constexpr char kReadPending[] =
    "SELECT payload FROM formica_dts_pending WHERE shard_key = $1 AND participant = $2 AND "
    "activity_id = $3 AND action = $4";
constexpr char kDropPending[] =
    "DELETE FROM formica_dts_pending WHERE shard_key = $1 AND participant = $2 AND "
    "activity_id = $3 AND action = $4";
constexpr char kPostponePending[] =
    "UPDATE formica_dts_pending SET check_ms = $5 WHERE shard_key = $1 AND participant = $2 AND "
    "activity_id = $3 AND action = $4";

// FOR UPDATE: on PostgreSQL, confirm and cancel of one action wait for each
// other on its try row (SQLite serializes writers anyway).
constexpr char kOrigin[] =
    "SELECT origin FROM formica_dts_barrier WHERE shard_key = $1 AND activity_id = $2 AND "
    "action = $3 AND phase = $4 AND participant = $5 FOR UPDATE";

// The enlisted payload carries the shard key, typed, so phase two routes
// exactly as the try did: "formica.dds:i:<int>\n<payload>" or ":s:<text>".
constexpr char kEnvelope[] = "formica.dds:";

std::string Wrap(const dds::Value& key, absl::string_view payload) {
  const char* type = std::holds_alternative<int64_t>(key) ? "i:" : "s:";
  return absl::StrCat(kEnvelope, type, dds::ToString(key), "\n", payload);
}

absl::Status Unwrap(absl::string_view enlisted, dds::Value* key, std::string* payload) {
  absl::string_view rest = enlisted;
  size_t nl = rest.find('\n');
  if (!absl::ConsumePrefix(&rest, kEnvelope) || rest.size() < 2 || nl == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        "the action's payload carries no shard key; it was not enlisted by a ShardedParticipant");
  }
  char type = rest[0];
  absl::string_view text = rest.substr(2, rest.find('\n') - 2);
  *payload = std::string(enlisted.substr(nl + 1));
  if (type == 'i') {
    int64_t v;
    if (!absl::SimpleAtoi(text, &v)) return absl::InvalidArgumentError("a bad shard key");
    *key = v;
  } else {
    *key = std::string(text);
  }
  return absl::OkStatus();
}

}  // namespace

class ShardedParticipant::Impl final : public v1::Participant::Service, public PendingTries {
 public:
  ShardedParticipantOptions options;
  std::string coordinator;                  // the identity phase two is taken from ("": any)
  std::shared_ptr<CoordinatorCalls> calls;  // shared with the process's other users of rpc
  dds::ShardedDataSource* ds = nullptr;
  DeclaredSteps<Step> steps;
  std::unique_ptr<CheckBack> check_back;  // over the pending rows of every shard (set by Open)

  ~Impl() override {
    if (check_back != nullptr) check_back->Stop();
  }

  // Writes a barrier row; false when it was there already.
  absl::StatusOr<bool> Mark(dds::Transaction* tx, const dds::Value& key, absl::string_view id,
                            absl::string_view action, const char* phase, const char* origin) {
    absl::StatusOr<dds::ResultSet> r =
        tx->Execute(kMark, {key, std::string(id), std::string(action), std::string(phase),
                            std::string(origin), absl::ToUnixMillis(absl::Now()), options.name});
    if (!r.ok()) return r.status();
    return r->rows_affected > 0;
  }

  // Who wrote the row of `phase` ("" when there is none).
  absl::StatusOr<std::string> Origin(dds::Transaction* tx, const dds::Value& key,
                                     absl::string_view id, absl::string_view action,
                                     const char* phase) {
    absl::StatusOr<dds::ResultSet> r = tx->Execute(
        kOrigin, {key, std::string(id), std::string(action), std::string(phase), options.name});
    if (!r.ok()) return r.status();
    if (r->rows.empty()) return std::string();
    return dds::ToString(r->rows[0][0]);
  }

  // The barrier rows of one action in the sharded table, for the protocol
  // in barrier.h. Each row records which phase wrote it (its origin): an
  // empty cancel writes the try row itself, so that the unique key of the
  // try row decides a race between a late try and its cancel, on
  // PostgreSQL with concurrent transactions as on SQLite.
  class Rows final : public BarrierRows {
   public:
    Rows(Impl* impl, dds::Transaction* tx, const dds::Value& key, absl::string_view id,
         absl::string_view action)
        : impl_(impl), tx_(tx), key_(key), id_(id), action_(action) {}
    absl::StatusOr<bool> Mark(BarrierPhase phase) override {
      const char* name = BarrierPhaseName(phase);
      return impl_->Mark(tx_, key_, id_, action_, name, name);
    }
    absl::StatusOr<bool> Has(BarrierPhase phase) override {
      absl::StatusOr<std::string> origin =
          impl_->Origin(tx_, key_, id_, action_, BarrierPhaseName(phase));
      if (!origin.ok()) return origin.status();
      return !origin->empty();
    }
    absl::StatusOr<TryClaim> ClaimTry() override {
      // Whoever writes the try row first wins; the other finds it.
      absl::StatusOr<bool> fresh = Mark(BarrierPhase::kTry);
      if (!fresh.ok()) return fresh.status();
      if (*fresh) return TryClaim::kFirst;
      absl::StatusOr<std::string> origin = impl_->Origin(tx_, key_, id_, action_, "try");
      if (!origin.ok()) return origin.status();
      return *origin == "cancel" ? TryClaim::kAfterCancel : TryClaim::kRepeat;
    }
    // The try row written by the cancel bars a late try; if the try is
    // writing it now, one of the two waits and finds it.
    absl::StatusOr<bool> BarLateTry() override {
      return impl_->Mark(tx_, key_, id_, action_, "try", "cancel");
    }

   private:
    Impl* const impl_;
    dds::Transaction* const tx_;
    const dds::Value& key_;
    const absl::string_view id_;
    const absl::string_view action_;
  };

  // The pending row of one action on its user's shard, for barrier.h.
  class PendingTryRow final : public PendingRow {
   public:
    PendingTryRow(Impl* impl, dds::Transaction* tx, const dds::Value& key, absl::string_view id,
                  absl::string_view action)
        : impl_(impl), tx_(tx), key_(key), id_(id), action_(action) {}
    absl::StatusOr<std::optional<std::string>> Payload() override {
      absl::StatusOr<dds::ResultSet> r = tx_->Execute(kReadPending, Keys());
      if (!r.ok()) return r.status();
      if (r->rows.empty()) return std::nullopt;
      std::string payload;
      if (!absl::Base64Unescape(dds::ToString(r->rows[0][0]), &payload)) {
        return absl::DataLossError(absl::StrCat("the pending try of ", action_, " in activity ",
                                                id_, " has a payload that is not base64"));
      }
      return payload;
    }
    absl::Status Add(absl::string_view payload, absl::Time deadline) override {
      int64_t ms = absl::ToUnixMillis(deadline);
      return tx_
          ->Execute(kAddPending, {key_, impl_->options.name, std::string(id_), std::string(action_),
                                  Wrap(key_, ""), absl::Base64Escape(payload), ms, ms})
          .status();
    }
    absl::Status Drop() override { return tx_->Execute(kDropPending, Keys()).status(); }

   private:
    std::vector<dds::Value> Keys() const {
      return {key_, impl_->options.name, std::string(id_), std::string(action_)};
    }
    Impl* const impl_;
    dds::Transaction* const tx_;
    const dds::Value& key_;
    const absl::string_view id_;
    const absl::string_view action_;
  };

  // Runs `work` in a local transaction on `key`'s shard; commits when it
  // returns OK and asks to keep its changes.
  absl::Status InTransaction(const dds::Value& key,
                             const std::function<absl::Status(dds::Transaction*, bool*)>& work) {
    absl::StatusOr<std::unique_ptr<dds::Transaction>> tx = ds->Begin(key);
    if (!tx.ok()) return tx.status();
    bool keep = true;
    absl::Status st = work(tx->get(), &keep);
    if (!st.ok() || !keep) {
      absl::Status undo = (*tx)->Rollback();
      return st.ok() ? undo : st;
    }
    return (*tx)->Commit();
  }

  absl::Status Try(absl::string_view id, const dds::Value& key, absl::string_view action,
                   absl::string_view payload, const Body& body) {
    BarrierAction what{options.name, id, action};
    if (absl::Status st = CheckTry(what, steps.Declared(action)); !st.ok()) return st;
    if (absl::StatusOr<int> shard = ds->ShardOf(key); !shard.ok()) return shard.status();
    if (dds::ToString(key).find('\n') != std::string::npos) {
      return absl::InvalidArgumentError("a shard key may not hold a line break");
    }
    if (std::optional<absl::Time> deadline = DeadlineOfId(id); deadline.has_value()) {
      // The initiator made the id: the try is recorded on the user's shard
      // (barrier, pending row, body: one local transaction) and reported
      // back to the initiator with its shard key, which dtsd hands back in
      // phase two. If the report is lost, the check-back finds the pending
      // row past its deadline.
      if (absl::Status st = CheckTryDeadline(id, *deadline); !st.ok()) return st;
      absl::Status st = InTransaction(key, [&](dds::Transaction* tx, bool* keep) {
        Rows rows(this, tx, key, id, action);
        PendingTryRow pending(this, tx, key, id, action);
        return RecordedTryUnderBarrier(rows, pending, what, payload, *deadline, keep,
                                       [&] { return body(tx); });
      });
      if (st.ok()) rpc::ReportJoined(JoinedEntry(id, options.name, action, Wrap(key, "")));
      return st;
    }
    // Enlisted first, durably: whatever the local transaction then does,
    // dtsd will come back with confirm or cancel.
    v1::CoordinatorOp op;
    v1::EnlistRequest* request = op.mutable_enlist();
    request->set_activity_id(std::string(id));
    request->set_participant(options.name);
    request->set_action(std::string(action));
    request->set_payload(Wrap(key, payload));
    if (absl::Status st = calls->Run(op, options.enlist_timeout).status(); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("enlisting ", action, " in activity ",
                                                  std::string(id), ": ", st.message()));
    }
    return InTransaction(key, [&](dds::Transaction* tx, bool* keep) -> absl::Status {
      Rows rows(this, tx, key, id, action);
      return TryUnderBarrier(rows, what, keep, [&] { return body(tx); });
    });
  }

  absl::Status PhaseTwo(bool confirm, const std::string& id, const std::string& action,
                        const std::string& enlisted) {
    if (absl::Status st = CheckPhaseTwo(id, action); !st.ok()) return st;
    absl::StatusOr<Step> step = steps.For(action, confirm, options.name);
    if (!step.ok()) return step.status();
    ActionCall call{id, action, ""};
    dds::Value key;
    if (absl::Status st = Unwrap(enlisted, &key, &call.payload); !st.ok()) return st;
    const bool pending = DeadlineOfId(id).has_value();
    return InTransaction(key, [&](dds::Transaction* tx, bool* keep) -> absl::Status {
      Rows rows(this, tx, key, id, action);
      BarrierAction what{options.name, id, action};
      if (!pending) {
        return PhaseTwoUnderBarrier(rows, what, confirm, keep,
                                    [&] { return *step ? (*step)(tx, call) : absl::OkStatus(); });
      }
      PendingTryRow row(this, tx, key, id, action);
      return RecordedPhaseTwoUnderBarrier(rows, row, what, confirm, keep, call.payload,
                                          [&](const std::string& payload) -> absl::Status {
                                            if (!*step) return absl::OkStatus();
                                            ActionCall with = call;
                                            with.payload = payload;
                                            return (*step)(tx, with);
                                          });
    });
  }

  // The check-back's view of the pending rows (check_back.h): a read over
  // every shard; each try is then finished on its own.
  absl::StatusOr<std::vector<PendingTry>> Due(absl::Time now, int limit) override {
    absl::StatusOr<dds::ResultSet> r =
        ds->Execute(absl::StrCat("SELECT route, activity_id, action FROM formica_dts_pending WHERE "
                                 "participant = $1 AND check_ms <= $2 ORDER BY check_ms LIMIT ",
                                 limit),
                    {options.name, absl::ToUnixMillis(now)}, {.primary = true});
    if (!r.ok()) return r.status();
    std::vector<PendingTry> due;
    for (const std::vector<dds::Value>& row : r->rows) {
      due.push_back(
          PendingTry{dds::ToString(row[1]), dds::ToString(row[2]), dds::ToString(row[0])});
    }
    return due;
  }

  absl::Status Postpone(const PendingTry& t, absl::Time when) override {
    dds::Value key;
    std::string rest;
    if (absl::Status st = Unwrap(t.route, &key, &rest); !st.ok()) return st;
    return ds
        ->Execute(kPostponePending,
                  {key, options.name, t.activity_id, t.action, absl::ToUnixMillis(when)})
        .status();
  }

  absl::Status Drop(const PendingTry& t) override {
    dds::Value key;
    std::string rest;
    if (absl::Status st = Unwrap(t.route, &key, &rest); !st.ok()) return st;
    return ds->Execute(kDropPending, {key, options.name, t.activity_id, t.action}).status();
  }

  std::vector<absl::Status> Finish(
      const std::vector<std::pair<const PendingTry*, bool>>& outcomes) override {
    std::vector<absl::Status> results;
    for (const auto& [t, confirm] : outcomes) {
      results.push_back(PhaseTwo(confirm, t->activity_id, t->action, t->route));
    }
    return results;
  }

  // Phase two comes only from dtsd's identity, when one is configured.
  absl::Status CheckCoordinator(grpc::ServerContext* ctx, absl::string_view act) {
    return CheckPeerIs(ctx, coordinator,
                       absl::StrCat(act, " actions of participant '", options.name, "'"));
  }

  grpc::Status Confirm(grpc::ServerContext* ctx, const v1::PhaseTwoRequest* req,
                       v1::PhaseTwoResponse*) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCoordinator(ctx, "confirm"); !st.ok()) return ToGrpcStatus(st);
      return ToGrpcStatus(PhaseTwo(true, req->activity_id(), req->action(), req->payload()));
    });
  }
  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::PhaseTwoRequest* req,
                      v1::PhaseTwoResponse*) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCoordinator(ctx, "cancel"); !st.ok()) return ToGrpcStatus(st);
      return ToGrpcStatus(PhaseTwo(false, req->activity_id(), req->action(), req->payload()));
    });
  }
  grpc::Status PhaseTwoBatch(grpc::ServerContext* ctx, const v1::PhaseTwoBatchRequest* req,
                             v1::PhaseTwoBatchResponse* resp) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCoordinator(ctx, "confirm or cancel"); !st.ok()) {
        return ToGrpcStatus(st);
      }
      for (const v1::PhaseTwoItem& item : req->items()) {
        absl::Status st =
            PhaseTwo(item.confirm(), item.activity_id(), item.action(), item.payload());
        v1::PhaseTwoResult* r = resp->add_results();
        r->set_code(static_cast<int>(st.code()));
        r->set_message(std::string(st.message()));
      }
      return grpc::Status::OK;
    });
  }
};

absl::StatusOr<std::unique_ptr<ShardedParticipant>> ShardedParticipant::Open(
    ShardedParticipantOptions options, rpc::Client* rpc, dds::ShardedDataSource* ds) {
  if (rpc == nullptr || ds == nullptr) {
    return absl::InvalidArgumentError(
        "dts::ShardedParticipant needs an rpc::Client and a data source");
  }
  if (options.name.empty()) {
    return absl::InvalidArgumentError("ShardedParticipantOptions.name is required");
  }
  for (const char* sql : {kSchema, kPendingSchema, kPendingIndex}) {
    absl::StatusOr<dds::ResultSet> made = ds->Execute(sql);
    if (!made.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create the participant's tables ", kTable, " and ", kPendingTable, " (add `",
          kTable, ": shard_key` and `", kPendingTable,
          ": shard_key` to the data source's sharded_tables): ", made.status().message()));
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->coordinator = CoordinatorIdentity(impl->options.coordinator_identity);
  impl->calls = CoordinatorCalls::Shared(rpc);
  impl->ds = ds;
  impl->check_back = std::make_unique<CheckBack>(
      CheckBack::Options{impl->options.name, impl->options.check_back_interval,
                         impl->options.enlist_timeout},
      impl->calls, impl.get());
  impl->check_back->Start();
  return std::unique_ptr<ShardedParticipant>(new ShardedParticipant(std::move(impl)));
}

ShardedParticipant::ShardedParticipant(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShardedParticipant::~ShardedParticipant() = default;

const std::string& ShardedParticipant::name() const { return impl_->options.name; }
grpc::Service* ShardedParticipant::service() { return impl_.get(); }

void ShardedParticipant::Declare(const std::string& action, Step confirm, Step cancel) {
  impl_->steps.Declare(action, std::move(confirm), std::move(cancel));
}

absl::Status ShardedParticipant::Try(const dds::Value& shard_key, absl::string_view action,
                                     absl::string_view payload, const Body& body) {
  const rpc::CallContext* current = rpc::CurrentCallContext();
  return impl_->Try(current == nullptr ? absl::string_view() : current->txn_id, shard_key, action,
                    payload, body);
}

absl::Status ShardedParticipant::ConfirmCommitted(absl::string_view activity_id,
                                                  const dds::Value& shard_key,
                                                  absl::string_view action) {
  if (!DeadlineOfId(activity_id).has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("activity ", activity_id,
                     " was begun at the coordinator: its confirm comes from dtsd, with the payload "
                     "kept there"));
  }
  return impl_->PhaseTwo(true, std::string(activity_id), std::string(action), Wrap(shard_key, ""));
}

absl::Status ShardedParticipant::Try(absl::string_view activity_id, const dds::Value& shard_key,
                                     absl::string_view action, absl::string_view payload,
                                     const Body& body) {
  return impl_->Try(activity_id, shard_key, action, payload, body);
}

}  // namespace formica::dts
