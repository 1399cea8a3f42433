// formica::dts::ShardedParticipant — a participant whose data is sharded by
// user through DDS (formica::dds::ShardedDataSource). Each action belongs to
// one user: its try, confirm and cancel run as local transactions on that
// user's shard, and the barrier row that makes them safe is written in the
// same transaction, in the sharded table formica_dts_barrier (add
// `formica_dts_barrier: shard_key` and `formica_dts_pending: shard_key` to
// the data source's sharded_tables; both are created on Open). The barrier
// gives what dts::Participant's gives:
//   - confirm and cancel are idempotent (a repeat is a no-op success);
//   - a cancel with no try before it succeeds as an empty rollback;
//   - a try that arrives after its cancel is refused (no hanging resources);
//   - confirm after cancel, or cancel after confirm, is refused.
// The unique key of the try row decides races between a late try and its
// cancel, so this holds on PostgreSQL with concurrent transactions as on
// SQLite.
//
// A try of an activity its initiator began without a round trip (the
// default) is recorded in the same local transaction as a pending row
// (formica_dts_pending, on the user's shard: the payload and the
// deadline) and reported back to the initiator through the reply (with
// the shard key, which dtsd hands back in phase two); nothing is sent to
// dtsd. A try whose report is lost is finished by the check-back: every
// check_back_interval the pending rows past their deadline, over every
// shard, are looked up and dtsd asked their outcome. A try of an activity
// begun at the coordinator is enlisted with dtsd (durably) first.
//
//   auto p = dts::ShardedParticipant::Open({.name = "fund.trade"}, rpc_client, ds).value();
//   p->Declare("buy",
//       /*confirm=*/[](dds::Transaction* tx, const dts::ActionCall& a) { ...; },
//       /*cancel=*/ [](dds::Transaction* tx, const dts::ActionCall& a) { ...; });
//   // Host p->service() under p->name() with rpc::Server. In a handler:
//   absl::Status st = p->Try(user_id, "buy", payload, [&](dds::Transaction* tx) {
//     return tx->Execute("UPDATE accounts SET frozen = frozen + $2 WHERE user_id = $1",
//                        {user_id, amount}).status();
//   });
//
// Thread-safe. Steps and bodies must use only the transaction they are given.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "formica/dds/data_source.h"
#include "formica/dts/participant.h"

namespace grpc {
class Service;
}

namespace formica::rpc {
class Client;
}

namespace formica::dts {

struct ShardedParticipantOptions {
  // The registry name its Participant service is published under (required).
  std::string name;
  absl::Duration enlist_timeout = absl::Seconds(3);  // and each check-back call to dtsd
  // How often tries past their activity's deadline and still undecided
  // here are looked for (see docs/dts.md, "Check-back").
  absl::Duration check_back_interval = absl::Seconds(1);
  // With TLS in force, Confirm and Cancel are taken only from a caller
  // whose certificate names this identity (dtsd's, e.g.
  // "spiffe://formica.local/dtsd"), others are PERMISSION_DENIED; "" reads
  // FORMICA_DTS_COORDINATOR_IDENTITY, and with neither any caller is taken
  // (docs/security.md).
  std::string coordinator_identity = {};
};

class ShardedParticipant {
 public:
  using Step = std::function<absl::Status(dds::Transaction* tx, const ActionCall& call)>;
  using Body = std::function<absl::Status(dds::Transaction* tx)>;

  // `ds` is borrowed and must outlive the participant. FAILED_PRECONDITION
  // when the data source does not shard formica_dts_barrier.
  static absl::StatusOr<std::unique_ptr<ShardedParticipant>> Open(ShardedParticipantOptions options,
                                                                  rpc::Client* rpc,
                                                                  dds::ShardedDataSource* ds);
  ~ShardedParticipant();

  const std::string& name() const;
  grpc::Service* service();  // formica.dts.v1.Participant; host it under name()

  // Declares an action's confirm and cancel steps. Before serving.
  void Declare(const std::string& action, Step confirm, Step cancel);

  // The try step of `action` for the user `shard_key`, in the activity of
  // the call being served (or `activity_id`). In one local transaction on
  // the user's shard writes the barrier and the pending row and runs
  // `body`, then reports the action back to the initiator (rpc::ReportJoined:
  // inside the initiator's Activity::Run, or a call served for it), for an
  // activity its initiator began; or enlists with dtsd first (the shard key
  // travels with the payload, so phase two finds the shard), for one begun
  // at the coordinator. A repeated try is a no-op success; a try after the
  // action's cancel is ABORTED; a second try with another payload is
  // FAILED_PRECONDITION.
  absl::Status Try(const dds::Value& shard_key, absl::string_view action, absl::string_view payload,
                   const Body& body);
  absl::Status Try(absl::string_view activity_id, const dds::Value& shard_key,
                   absl::string_view action, absl::string_view payload, const Body& body);

  // Runs the confirm of `action` for the user `shard_key` here, now, with
  // the payload its try kept: for an initiator whose own action it is, so
  // that the action's effect shows at once. dtsd's confirm then finds it
  // done (a no-op that writes nothing). REQUIRES: the activity's Commit
  // returned OK. FAILED_PRECONDITION for an activity begun at the
  // coordinator (its payload is kept there, not here).
  absl::Status ConfirmCommitted(absl::string_view activity_id, const dds::Value& shard_key,
                                absl::string_view action);

  class Impl;

 private:
  explicit ShardedParticipant(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::dts
