// Transactions: dmsd's transactional (half) messages. A half message is
// kept durably in the meta store and delivered to no one until its
// transaction commits (it is then produced into its topic, once, under the
// dedup key "txn:<id>") or discarded on rollback. An undecided one is
// checked back after `check_after`: with dtsd when it joined a DTS activity
// (the activity's outcome decides), else with a producer of its group
// connected over CheckBack. Checks are rate-limited, move past messages
// whose check fails, back off, and after `max_checks` park the message for
// an operator (listed, resumable), never dropping it.
//
// Also the DTS participant (formica.dts.v1.Participant) that dtsd calls
// to confirm (commit) or cancel (roll back) a message joined to an activity.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/common/clock.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "threaded_stream.h"

namespace rocksdb {
class DB;
}

namespace formica::rpc {
class Client;
}

namespace formica::dms {

using CheckBackStream = ThreadedStream<v1::CheckAnswer, v1::CheckRequest>;

// The registry name dmsd's DTS participant service is published under by
// default (transactions.participant). Brokers that do not share their half
// messages (one dmsd per LDC zone) each need a name of their own, or dtsd's
// phase two could reach a broker that never saw the action.
inline constexpr char kTransactionParticipant[] = "formica.dms.Transactions";

struct TransactionOptions {
  // The participant name this broker enlists its half messages under and
  // publishes its formica.dts.v1.Participant service as.
  std::string participant = kTransactionParticipant;
  absl::Duration check_after = absl::Seconds(6);         // undecided this long: checked back
  absl::Duration check_interval = absl::Seconds(5);      // then again after this, doubling...
  absl::Duration check_interval_max = absl::Minutes(5);  // ...up to this
  int max_checks = 15;                                   // then parked
  int checks_per_second = 200;                           // all check-backs together
  // With TLS, confirm and cancel are taken only from this identity (dtsd's);
  // "": from any caller.
  std::string coordinator_identity;
};

class Transactions {
 public:
  // Stores the message in its topic (durably, once per dedup key).
  using ProduceFn =
      std::function<absl::StatusOr<v1::Receipt>(const std::string& topic, v1::StoredMessage)>;

  // `meta`, `rpc` and `clock` are borrowed. Loads the half messages kept
  // in `meta`.
  static absl::StatusOr<std::unique_ptr<Transactions>> Open(TransactionOptions options,
                                                            rocksdb::DB* meta, rpc::Client* rpc,
                                                            Clock* clock, ProduceFn produce);
  ~Transactions();

  // `message` is validated by the caller and ready to store.
  absl::StatusOr<std::string> Prepare(const std::string& topic, v1::StoredMessage message,
                                      const std::string& activity_id);
  absl::StatusOr<v1::Receipt> End(const std::string& id, bool commit);
  // The topic of the undecided half message `id`; NOT_FOUND when none.
  absl::StatusOr<std::string> TopicOf(const std::string& id);
  // Serves one CheckBack stream until the producer ends it or Stop();
  // UNAVAILABLE when dmsd stops.
  grpc::Status CheckBack(CheckBackStream& stream);
  void List(bool parked_only, size_t limit, v1::ListHalfMessagesReply* out);
  // How many half messages are undecided, and how many of them are parked.
  void Count(uint64_t* undecided, uint64_t* parked);
  absl::StatusOr<uint64_t> Resume(const std::string& id);

  // formica.dts.v1.Participant, for messages joined to activities.
  grpc::Service* participant();

  // Ends the check loop and the CheckBack streams.
  void Stop();

  class Impl;

 private:
  explicit Transactions(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::dms
