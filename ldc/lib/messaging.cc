// ldc messaging: sends to the owner zone's brokers, handles or forwards.
#include "formica/ldc/messaging.h"

#include <spdlog/spdlog.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/zone_routing.h"

namespace formica::ldc {
namespace {

// One zone's brokers: an rpc client held to that zone and a producer over it.
struct ZoneLink {
  std::unique_ptr<rpc::PinnedZoneRouting> routing;
  std::unique_ptr<rpc::Client> rpc;
  std::unique_ptr<dms::Producer> producer;
};

}  // namespace

class ZoneProducer::Impl {
 public:
  Impl(const Router* router, registry::Client* registry, dms::ProducerOptions options)
      : router_(router), registry_(registry), options_(std::move(options)) {}

  ~Impl() {
    absl::MutexLock lock(&mu_);
    for (auto& [zone, link] : links_) {
      link->producer.reset();  // before the rpc client it sends through
      link->rpc.reset();
    }
  }

  absl::StatusOr<dms::Producer*> ProducerFor(const std::string& zone) {
    absl::MutexLock lock(&mu_);
    std::unique_ptr<ZoneLink>& link = links_[zone];
    if (link == nullptr) {
      auto made = std::make_unique<ZoneLink>();
      made->routing = std::make_unique<rpc::PinnedZoneRouting>(zone);
      rpc::ClientOptions options;
      options.app_name = options_.producer_group;
      options.zone = router_->zone();
      options.zone_routing = made->routing.get();
      options.default_timeout = options_.timeout;
      absl::StatusOr<std::unique_ptr<rpc::Client>> rpc = rpc::Client::Create(options, registry_);
      if (!rpc.ok()) {
        links_.erase(zone);
        return rpc.status();
      }
      made->rpc = *std::move(rpc);
      absl::StatusOr<std::unique_ptr<dms::Producer>> producer =
          dms::Producer::Create(options_, made->rpc.get());
      if (!producer.ok()) {
        links_.erase(zone);
        return producer.status();
      }
      made->producer = *std::move(producer);
      link = std::move(made);
    }
    return link->producer.get();
  }

  const Router* const router_;
  registry::Client* const registry_;
  const dms::ProducerOptions options_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<ZoneLink>> links_ ABSL_GUARDED_BY(mu_);
};

ZoneProducer::ZoneProducer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ZoneProducer::~ZoneProducer() = default;

absl::StatusOr<std::unique_ptr<ZoneProducer>> ZoneProducer::Create(const Router* router,
                                                                   registry::Client* registry,
                                                                   dms::ProducerOptions options) {
  if (router == nullptr || registry == nullptr) {
    return absl::InvalidArgumentError("ZoneProducer needs a Router and a registry client");
  }
  return std::unique_ptr<ZoneProducer>(
      new ZoneProducer(std::make_unique<Impl>(router, registry, std::move(options))));
}

namespace {

// The owner zone of the message's user; `here` for a message without one.
absl::StatusOr<std::string> MessageZone(const Router& router, const dms::OutgoingMessage& message) {
  auto user = message.properties.find(kUserProperty);
  if (user == message.properties.end()) return router.zone();
  return router.ZoneForUser(user->second);
}

}  // namespace

absl::StatusOr<dms::SendReceipt> ZoneProducer::Send(const std::string& topic,
                                                    dms::OutgoingMessage message) {
  absl::StatusOr<std::string> zone = MessageZone(*impl_->router_, message);
  if (!zone.ok()) return zone.status();
  return SendToZone(*zone, topic, std::move(message));
}

absl::StatusOr<std::string> ZoneProducer::SendInActivity(const std::string& topic,
                                                         dms::OutgoingMessage message,
                                                         std::string activity_id) {
  absl::StatusOr<std::string> zone = MessageZone(*impl_->router_, message);
  if (!zone.ok()) return zone.status();
  absl::StatusOr<dms::Producer*> producer = impl_->ProducerFor(*zone);
  if (!producer.ok()) return producer.status();
  // The producer's rpc client reaches only that zone's brokers, and the
  // broker that stores the half message enlists it under its own name.
  return (*producer)->SendInActivity(topic, std::move(message), std::move(activity_id));
}

absl::StatusOr<dms::SendReceipt> ZoneProducer::SendToZone(const std::string& zone,
                                                          const std::string& topic,
                                                          dms::OutgoingMessage message) {
  if (message.dedup_key.empty()) {
    return absl::InvalidArgumentError(
        "a zone-routed message needs a dedup key: a message forwarded between zones must be "
        "stored once");
  }
  absl::StatusOr<dms::Producer*> producer = impl_->ProducerFor(zone);
  if (!producer.ok()) return producer.status();
  return (*producer)->Send(topic, std::move(message));
}

dms::MessageHandler ZoneHandler(Router* router, ZoneProducer* forward, dms::MessageHandler handler,
                                absl::Duration fence_wait) {
  return [router, forward, handler = std::move(handler),
          fence_wait](const dms::ReceivedMessage& m) -> dms::ConsumeResult {
    auto user = m.properties.find(kUserProperty);
    if (user == m.properties.end()) return handler(m);
    absl::StatusOr<int> shard = UserShard(user->second);
    if (!shard.ok()) {
      SPDLOG_ERROR("ldc: message {}/{}@{} has a user id that cannot be routed: {}", m.topic,
                   m.queue, m.offset, std::string(shard.status().message()));
      return handler(m);  // not a zone's message: the handler decides
    }
    absl::StatusOr<Router::WritePermit> permit =
        router->AdmitWrite(*shard, absl::Now() + fence_wait);
    if (permit.ok()) return handler(m);  // this zone owns the user now
    if (!absl::IsFailedPrecondition(permit.status())) return dms::ConsumeResult::kRetryLater;
    absl::StatusOr<Route> route = router->RouteShard(*shard);
    if (!route.ok() || route->local) return dms::ConsumeResult::kRetryLater;
    dms::OutgoingMessage out;
    out.key = m.key;
    out.tags = m.tags;
    out.properties = m.properties;
    out.properties[kForwardedFromProperty] = router->zone();
    out.body = m.body;
    // A message sent without a dedup key gets one from where it is stored,
    // the same on every redelivery.
    out.dedup_key = !m.dedup_key.empty() ? m.dedup_key
                                         : absl::StrCat("ldc:", router->zone(), ":", m.topic, ":",
                                                        m.queue, ":", m.offset);
    absl::StatusOr<dms::SendReceipt> sent = forward->SendToZone(route->owner, m.topic, out);
    if (!sent.ok()) {
      SPDLOG_WARN("ldc: forwarding {}/{}@{} to zone {} failed, retried later: {}", m.topic, m.queue,
                  m.offset, route->owner, std::string(sent.status().message()));
      return dms::ConsumeResult::kRetryLater;
    }
    return dms::ConsumeResult::kSuccess;  // the owner zone's broker has it
  };
}

}  // namespace formica::ldc
