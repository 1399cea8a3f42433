// formica::dts::Participant — a service's side of business activities:
// TCC actions (try, confirm, cancel) over the service's own SQLite database,
// guarded by a barrier table written in the same local transaction as the
// business change, so that
//   - confirm and cancel are idempotent (a repeat is a no-op success);
//   - a cancel with no try before it succeeds as an empty rollback;
//   - a try that arrives after its cancel is refused (no hanging resources).
//
//   auto p = dts::Participant::Open({.name = "bank.account-a",
//                                    .database = "/var/lib/account/a.db"}, rpc_client).value();
//   p->Declare("debit",
//       /*confirm=*/[](sqlite3* db, const dts::ActionCall& a) { ...; return absl::OkStatus(); },
//       /*cancel=*/ [](sqlite3* db, const dts::ActionCall& a) { ...; return absl::OkStatus(); });
//   // Host p->service() under p->name() with rpc::Server, next to the
//   // business service. In a business handler (inside rpc::Serve):
//   absl::Status st = p->Try("debit", payload, [&](sqlite3* db) { ...freeze...; });
//
// Try records the action in its local transaction and reports it back to
// the initiator (an activity begun by its initiator), or enlists it with
// the coordinator (durably) first (one begun at the coordinator); dtsd
// later calls Confirm or Cancel, and the step gets the same payload.
// Thread-safe. Local transactions that arrive together are committed
// together, each in its own savepoint, with one sync (group commit): a
// body or step may therefore run on another thread of this participant,
// and must only use the `sqlite3*` it is given.
#pragma once

#include <sqlite3.h>  // steps and bodies get the participant's sqlite3*

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc {
class CallbackServerContext;
class Service;
}  // namespace grpc

namespace formica::rpc {
class Client;
}

namespace formica::dts {

struct ParticipantOptions {
  // The registry name this participant's Participant service is published
  // under; dtsd calls confirm and cancel there (required).
  std::string name;
  std::string database;  // SQLite file, created if missing (required)
  // Each local transaction is on disk when it commits (SQLite WAL,
  // synchronous=FULL). Off: synchronous=NORMAL, which may lose the last
  // transactions on power loss (never corrupts).
  bool durable = true;
  absl::Duration enlist_timeout = absl::Seconds(3);
  // How often tries of activities past their deadline and still undecided
  // here are looked for; for each, dtsd is asked the outcome and the
  // confirm or cancel is run here (see docs/dts.md, "Check-back").
  absl::Duration check_back_interval = absl::Seconds(1);
  // With TLS in force, Confirm and Cancel are taken only from a caller
  // whose certificate names this identity (dtsd's, e.g.
  // "spiffe://formica.local/dtsd"), others are PERMISSION_DENIED; "" reads
  // FORMICA_DTS_COORDINATOR_IDENTITY, and with neither any caller is taken
  // (docs/security.md).
  std::string coordinator_identity = {};
};

// What confirm and cancel steps are handed.
struct ActionCall {
  std::string activity_id;
  std::string action;
  std::string payload;  // as given to Try
};
// (dts::ShardedParticipant, the same over a DDS data source, is in
// sharded_participant.h.)

// For a participant of its own making, whose tries run neither through
// Participant nor ShardedParticipant (dmsd's messages joined to activities):
// whether a try of `activity_id` joins the activity through its reply (its
// initiator made the id, which carries the deadline) rather than being
// enlisted with dtsd before its local work (an activity begun at dtsd).
bool JoinsThroughReply(absl::string_view activity_id);
// Reports a try, once it is durable, to the initiator through the reply of
// the call being served on this thread (inside rpc::Serve): the commit
// carries it to dtsd, and dtsd's confirm and cancel hand `route` back as
// their payload. False when there is no call to carry it: then, as for a
// report lost on its way, the participant must ask dtsd for the outcome
// once the deadline has passed (the coordinator's `resolve`).
bool ReportJoinedTry(absl::string_view activity_id, absl::string_view participant,
                     absl::string_view action, absl::string_view route = {});

class Participant {
 public:
  // A step's local work, run inside the barrier's transaction: an error
  // rolls back the whole local transaction.
  using Step = std::function<absl::Status(sqlite3* db, const ActionCall& call)>;
  using Body = std::function<absl::Status(sqlite3* db)>;

  static absl::StatusOr<std::unique_ptr<Participant>> Open(ParticipantOptions options,
                                                           rpc::Client* rpc);
  ~Participant();

  const std::string& name() const;
  // The formica.dts.v1.Participant service; host it under name().
  grpc::Service* service();

  // Declares an action's confirm and cancel steps. Before serving.
  void Declare(const std::string& action, Step confirm, Step cancel);

  // The try step of `action` in the activity of the call being served (the
  // txn id in rpc::CurrentCallContext()), or in `activity_id` given
  // explicitly. In one local transaction writes the barrier and runs
  // `body`; the action joins the activity through the reply (for an
  // activity its initiator began without a round trip) or is enlisted
  // with dtsd first (begun at the coordinator). A repeated try is a no-op success; a try after the
  // action's cancel is ABORTED; an undeclared action is INVALID_ARGUMENT.
  absl::Status Try(absl::string_view action, absl::string_view payload, const Body& body);
  absl::Status Try(absl::string_view activity_id, absl::string_view action,
                   absl::string_view payload, const Body& body);

  // The same try for a handler on gRPC's callback API, serving `ctx`: it
  // joins the next group commit without waiting, and `done` gets the
  // outcome on the participant's thread that ran it (the report to the
  // initiator is already in ctx's trailing metadata then), so no gRPC
  // thread waits for a sync. `body` runs on that thread too. For an
  // activity begun at the coordinator the enlist and the transaction run
  // here, before `done`.
  //   grpc::ServerUnaryReactor* Debit(grpc::CallbackServerContext* ctx,
  //                                   const Move* m, Moved*) override {
  //     auto* reactor = ctx->DefaultReactor();
  //     participant->TryAsync(ctx, "debit", m->SerializeAsString(),
  //         [m](sqlite3* db) { return Freeze(db, *m); },
  //         [reactor](absl::Status st) { reactor->Finish(formica::ToGrpcStatus(st)); });
  //     return reactor;
  //   }
  void TryAsync(grpc::CallbackServerContext* ctx, absl::string_view action, std::string payload,
                Body body, std::function<void(absl::Status)> done);

  // Runs `body` in a local transaction of its own (not part of an
  // activity), serialized with the participant's.
  absl::Status Transaction(const Body& body);

  class Impl;

 private:
  explicit Participant(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::dts
