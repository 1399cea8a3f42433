// formica::dms::Consumer — takes a topic's messages for a consumer group
// from dmsd (found through DSR) and runs a handler on each.
//
//   dms::ConsumerOptions o;
//   o.group = "fund-clearing";
//   o.topic = "fund.orders";
//   o.tags = {"purchase"};             // optional filter
//   auto consumer = dms::Consumer::Start(o, [](const dms::ReceivedMessage& m) {
//     if (!Apply(m.body)) return dms::ConsumeResult::kRetryLater;
//     return dms::ConsumeResult::kSuccess;
//   }, rpc_client).value();
//   ...
//   consumer->Stop();
//
// kSuccess acks the message; kRetryLater has it delivered again after a
// growing delay, and after the group's maximum attempts it goes to the
// group's dead-letter queue. A message not acked within the ack timeout
// (a handler that hangs, a consumer that died) is delivered again, so a
// handler must tolerate seeing a message twice. In a clustering group each
// message goes to one member; with `broadcast` every member (named by a
// stable consumer_id) gets every message. By default (`ordered`) a queue's
// messages go one at a time, so messages with one key are handled in the
// order they were produced; with `ordered = false` they go out up to
// max_in_flight at once, in no particular order, for throughput. The
// consumer reconnects by itself (to another broker if its own went away).
// Thread-safe.
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

struct ReceivedMessage {
  std::string topic;
  int queue = 0;
  uint64_t offset = 0;
  int attempt = 1;      // 1 for the first delivery
  bool replay = false;  // a dead letter delivered again by `formicactl dms dlq --replay`
  std::string key;
  std::vector<std::string> tags;
  std::map<std::string, std::string> properties;
  std::string body;
  std::string dedup_key;
  std::string producer_group;
  absl::Time born;        // when the broker took it
  absl::Time deliver_at;  // delayed messages: not before this (else born)
};

enum class ConsumeResult { kSuccess, kRetryLater };
using MessageHandler = std::function<ConsumeResult(const ReceivedMessage&)>;

struct ConsumerOptions {
  std::string group;              // required
  std::string topic;              // required
  std::vector<std::string> tags;  // only messages with one of these tags; empty: all
  bool broadcast = false;
  std::string consumer_id;  // required with broadcast: the member's stable name
  int max_in_flight = 64;   // unacked messages held at once (flow control)
  bool ordered = true;      // false: concurrent, no per-key order
  int max_attempts = 0;     // 0: the broker's default
  absl::Duration ack_timeout = absl::ZeroDuration();  // 0: the broker's default
  int threads = 4;                                    // handler threads
  absl::Duration reconnect_delay = absl::Milliseconds(200);
  // Start waits this long for a broker to take the subscription, trying
  // again (every reconnect_delay) while none is reachable or the one reached
  // answers UNAVAILABLE (a broker group's follower, a dead leader still
  // listed); then DEADLINE_EXCEEDED naming the last error.
  absl::Duration start_timeout = absl::Seconds(5);
  // Called once the broker has made an ack durable (the message will not
  // come again), on a consumer thread. Optional.
  std::function<void(const ReceivedMessage&)> on_acked;
};

class Consumer {
 public:
  // Subscribes and starts handling. Errors of the subscription itself
  // (unknown topic, a group subscribed otherwise, bad options) are returned
  // here; later broker failures are retried by reconnecting.
  static absl::StatusOr<std::unique_ptr<Consumer>> Start(ConsumerOptions options,
                                                         MessageHandler handler, rpc::Client* rpc);
  ~Consumer();

  // Finishes the handlers running now, sends their acks, waits briefly for
  // them to be confirmed, and leaves the group. Idempotent.
  void Stop();

  class Impl;

 private:
  explicit Consumer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace formica::dms
