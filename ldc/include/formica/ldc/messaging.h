// formica::ldc messaging — a user's messages are handled in the user's
// owner zone at the time they are handled.
//
// Each zone runs its own dmsd (server.zone set), knowing nothing of users.
// ZoneProducer sends a message carrying a user id (property
// kUserProperty) to the broker of the user's owner zone. ZoneHandler wraps
// a consumer's handler: a message for a user this zone owns now is handled
// here, under a write permit (so a switch's fence covers it as it covers
// DDS writes); one for a user another zone owns now (its owner moved while
// it waited in the queue) is forwarded to that zone's broker with its
// dedup key, and acknowledged here only once the owner zone's broker has
// it: nothing is lost, and a forward retried after a lost answer is stored
// once.
//
//   auto producer = ldc::ZoneProducer::Create(router.get(), registry.get(),
//                                             {.producer_group = "fund-trade"}).value();
//   dms::OutgoingMessage m;
//   m.properties[ldc::kUserProperty] = user_id;
//   m.dedup_key = order_id;                        // required
//   producer->Send("fund.orders", m);
//   producer->SendInActivity("fund.orders", m);   // inside dts::Activity::Run
//   auto consumer = dms::Consumer::Start(options,
//       ldc::ZoneHandler(router.get(), producer.get(), handler), rpc_client).value();
//
// Thread-safe. `router` and `registry` are borrowed and must outlive it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/ldc/router.h"

namespace formica::registry {
class Client;
}

namespace formica::ldc {

// The message property that carries the user id (as x-formica-user does on a call).
inline constexpr char kUserProperty[] = "x-formica-user";
// Set on a message forwarded from another zone: that zone's name.
inline constexpr char kForwardedFromProperty[] = "x-formica-forwarded-from";

class ZoneProducer {
 public:
  static absl::StatusOr<std::unique_ptr<ZoneProducer>> Create(const Router* router,
                                                              registry::Client* registry,
                                                              dms::ProducerOptions options);
  ~ZoneProducer();

  // Sends to the brokers of the owner zone of the message's user (this
  // process's zone when it names none). INVALID_ARGUMENT without a dedup
  // key (a forward must be stored once) or for a user id that cannot be routed.
  absl::StatusOr<dms::SendReceipt> Send(const std::string& topic, dms::OutgoingMessage message);
  // Sends to the brokers of `zone`, none other.
  absl::StatusOr<dms::SendReceipt> SendToZone(const std::string& zone, const std::string& topic,
                                              dms::OutgoingMessage message);
  // dms::Producer::SendInActivity at the brokers of the owner zone of the
  // message's user (this process's zone when it names none): the half
  // message is stored there, that broker joins DTS activity `activity_id`
  // (empty: the one current on this thread) under its own participant name
  // (dmsd's transactions.participant), and the message is delivered there
  // if the activity commits, discarded if it rolls back. Returns the
  // transaction id. Needs ProducerOptions::producer_group; no dedup key
  // needed (the committed message is stored under "txn:<id>"). The zone's
  // broker must run with a participant name no other zone's broker uses.
  absl::StatusOr<std::string> SendInActivity(const std::string& topic, dms::OutgoingMessage message,
                                             std::string activity_id = "");

  class Impl;

 private:
  explicit ZoneProducer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// `handler` for the messages this zone owns now; the others forwarded
// through `forward` to their owner zone. A message whose shard is fenced
// waits up to `fence_wait`, then is retried later (kRetryLater).
dms::MessageHandler ZoneHandler(Router* router, ZoneProducer* forward, dms::MessageHandler handler,
                                absl::Duration fence_wait = absl::Seconds(5));

}  // namespace formica::ldc
