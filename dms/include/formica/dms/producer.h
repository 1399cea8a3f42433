// formica::dms::Producer — sends messages to dmsd, found through DSR.
//
//   auto producer = dms::Producer::Create({.producer_group = "fund-trade"}, rpc_client).value();
//   dms::OutgoingMessage m;
//   m.key = user_id;                  // one user's messages stay in order
//   m.tags = {"purchase"};
//   m.body = order.SerializeAsString();
//   m.dedup_key = order_id;           // a retried send is stored once
//   absl::StatusOr<dms::SendReceipt> r = producer->Send("fund.orders", m);
//
// Send returns once the broker has the message on disk. SendAsync returns
// at once and calls `done` later; concurrent sends to one topic travel
// together in one call (at most `max_batch` messages, `max_outstanding`
// calls per topic at once), so throughput grows with concurrency. Messages
// of one key sent one after another (each Send returning first) keep their
// order; async sends of one key in flight together may be reordered unless
// max_outstanding is 1. A send
// whose messages all carry dedup keys is retried on failure, and while no
// broker is reachable for up to `unavailable_retry` (a broker group's
// failover); others are not (a lost answer could mean the message was
// stored).
//
// Transactional messages: a half message is stored but delivered to no one
// until committed.
//
//   options.checker = [&](const dms::CheckedMessage& m) {  // the broker asks
//     return OrderExists(m.key) ? dms::TransactionState::kCommit
//                               : dms::TransactionState::kRollback;
//   };
//   auto outcome = producer->SendInTransaction("fund.orders", m, [&] {
//     return db.Commit(order) ? dms::TransactionState::kCommit
//                             : dms::TransactionState::kRollback;
//   });
//
// A half message left undecided (the producer died between its local
// transaction and the end) is checked back with a producer of the same
// group that registered a checker. Inside a DTS activity,
// SendInActivity(topic, m) joins the activity as one of its actions: the
// message is delivered if the activity commits and discarded if it rolls
// back, and dmsd asks dtsd (not the producer) when in doubt. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace formica::rpc {
class Client;
}

namespace formica::dms {

// The broker's service name in the registry.
inline constexpr char kBrokerService[] = "formica.dms.v1.Broker";

struct OutgoingMessage {
  std::string key;  // optional: same key, same queue, delivered in order
  std::vector<std::string> tags;
  std::map<std::string, std::string> properties;
  std::string body;
  std::string dedup_key;  // optional: a resend with it within the broker's window is not stored
  absl::Duration delay = absl::ZeroDuration();  // not delivered before now + delay
};

struct SendReceipt {
  int queue = 0;
  uint64_t offset = 0;
  bool duplicate = false;  // the dedup key was seen: this is the first send's receipt
};

enum class TransactionState { kCommit, kRollback, kUnknown };

// A half message the broker asks about.
struct CheckedMessage {
  std::string transaction_id;
  std::string topic;
  std::string key;
  std::vector<std::string> tags;
  std::map<std::string, std::string> properties;
  std::string body;
  int check = 1;  // 1 for the first check
};
using TransactionChecker = std::function<TransactionState(const CheckedMessage&)>;

struct TransactionOutcome {
  std::string transaction_id;
  TransactionState state = TransactionState::kUnknown;  // what the local transaction said
  SendReceipt receipt;                                  // where the message is, when committed
};

struct ProducerOptions {
  std::string producer_group;
  absl::Duration timeout = absl::Seconds(5);  // one call to the broker
  int max_batch = 256;                        // messages per call
  int max_outstanding = 4;                    // calls per topic at once
  // A call whose messages all carry dedup keys that fails UNAVAILABLE or
  // DEADLINE_EXCEEDED (no broker reachable, e.g. a replicated broker group
  // electing a new leader, docs/ha.md) is made again, every 100 ms, for up
  // to this long after its first attempt; the dedup keys keep a message
  // stored once. 0: only rpc::Client's own retries.
  absl::Duration unavailable_retry = absl::Seconds(10);
  // Answers the broker's checks of this group's undecided half messages
  // (needed for SendInTransaction to recover from a producer crash).
  TransactionChecker checker;
};

class Producer {
 public:
  // `rpc` is borrowed and must outlive the Producer.
  static absl::StatusOr<std::unique_ptr<Producer>> Create(ProducerOptions options,
                                                          rpc::Client* rpc);
  // Waits for every send still out.
  ~Producer();

  absl::StatusOr<SendReceipt> Send(const std::string& topic, OutgoingMessage message);
  void SendAsync(const std::string& topic, OutgoingMessage message,
                 std::function<void(absl::StatusOr<SendReceipt>)> done);
  // Returns once every send made so far is answered.
  void Flush();

  // Stores `message` as a half message, runs `local` (the local
  // transaction), then commits or rolls the message back as it says;
  // kUnknown leaves it to the broker's check-back. An error before `local`
  // runs means nothing was stored and `local` did not run.
  absl::StatusOr<TransactionOutcome> SendInTransaction(
      const std::string& topic, OutgoingMessage message,
      const std::function<TransactionState()>& local);

  // Joins DTS activity `activity_id` (empty: the activity current on this
  // thread, as inside dts::Activity::Run) with `message` as an action:
  // delivered if the activity commits, discarded if it rolls back. Returns
  // the transaction id. Must be called before the activity is decided.
  absl::StatusOr<std::string> SendInActivity(const std::string& topic, OutgoingMessage message,
                                             std::string activity_id = "");

  class Impl;

 private:
  explicit Producer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace formica::dms
