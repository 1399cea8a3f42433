// formica::rpc::Client — calls a service's providers, found through a
// Discovery (DSR's, by default: formica/rpc/discovery.h), with client-side
// load balancing, routing, retries and outlier ejection.
//
//   rpc::ClientOptions options;
//   options.app_name = "fund-trade";
//   options.zone = "gz00a";
//   options.policies["account.Balance"] = "p2c_ewma";
//   auto client = rpc::Client::Create(options, registry_client).value();
//
//   rpc::CallOptions call;
//   call.timeout = absl::Milliseconds(300);
//   call.idempotent = true;
//   call.context.user_id = "20881234";
//   absl::Status st = client->CallWithStub<account::Balance>("account.Balance", call,
//       [&](account::Balance::Stub& stub, grpc::ClientContext* ctx) {
//         return stub.Get(ctx, request, &response);
//       });
//
// For each call: the providers of the service (the discovery's latest
// provider set; with DSR, the registry's latest snapshot) are narrowed by the
// tag route (with DSR, a registry config entry "rpc/routes/<service>", e.g.
// "color=blue:90,color=green:10"), then to the
// caller's zone when a provider there is healthy, then one is picked by the
// service's balancing policy. Providers whose connection failed or that
// failed too often in a row are out of rotation until a probe succeeds.
// A call is retried on another provider when it is marked idempotent, or
// when it never reached a provider, within the deadline, `max_attempts`
// and a retry budget. Thread-safe.
#pragma once

#include <grpcpp/support/status.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "formica/rpc/call_context.h"

namespace grpc {
class Channel;
class ClientContext;
class ServerContextBase;
}  // namespace grpc

namespace formica {
class Clock;
class Config;
}  // namespace formica

namespace formica::registry {
class Client;
}

namespace formica::rpc {

class Discovery;
class ZoneRouting;

struct ClientOptions {
  std::string app_name;  // sent as the caller app
  std::string zone;      // the caller's zone: providers there are preferred
  absl::Duration default_timeout = absl::Seconds(2);
  int max_attempts = 3;                              // first try included
  double retry_budget_ratio = 0.2;                   // retries per call, over the last second...
  int min_retries_per_second = 10;                   // ...but always at least this many
  int eject_after_failures = 5;                      // consecutive failures that eject a provider
  absl::Duration ejection_time = absl::Seconds(10);  // then one probe call re-admits it
  // Count every attempt (status code, latency) per service and provider in
  // the process's call metrics (formica/rpc/metrics.h).
  bool count_calls = true;
  // Balancing policy per service: weighted_random (default), round_robin,
  // least_active, consistent_hash, p2c_ewma.
  std::map<std::string, std::string> policies;
  // Unit routing (formica/rpc/zone_routing.h), borrowed; must outlive the
  // Client. Set: a call goes only to providers of the zone it names (the
  // user's owner zone, a global service's zone). Null: as above.
  const ZoneRouting* zone_routing = nullptr;
};

struct CallOptions {
  absl::Duration timeout = absl::ZeroDuration();  // zero: ClientOptions::default_timeout
  bool idempotent = false;  // may be retried on another provider after any failure
  std::string hash_key;     // for consistent_hash (e.g. the user id)
  bool read_only = false;   // the call only reads (zone routing may send it to a read copy)
  CallContext context;      // user id, transaction id...; caller app and zone are filled in
  // When called while handling a call: its deadline bounds this one, and its
  // context (trace, user, transaction) is carried on.
  const grpc::ServerContextBase* parent = nullptr;
  // Without a parent, the call inherits the context and deadline current on
  // this thread (a handler's call inside rpc::Serve, an activity's Run);
  // false: it does not.
  bool inherit_current = true;
};

// Reads ClientOptions from the `rpc.client` section of a config file (see
// docs/rpc.md). INVALID_ARGUMENT names the file, line, key and reason.
absl::StatusOr<ClientOptions> LoadClientOptions(const Config& config);

class Client {
 public:
  // Makes one attempt on `channel`; `context` carries the deadline and the
  // call context. Typically: return Stub(channel)->Method(context, req, &resp).
  using Attempt = std::function<grpc::Status(const std::shared_ptr<grpc::Channel>& channel,
                                             grpc::ClientContext* context)>;

  // Starts one attempt with gRPC's callback API and calls `done` when it
  // ends, e.g. stub->async()->Method(context, &req, &resp, std::move(done)).
  using AsyncAttempt =
      std::function<void(const std::shared_ptr<grpc::Channel>& channel,
                         grpc::ClientContext* context, std::function<void(grpc::Status)> done)>;

  // Finds providers through `discovery`, which is borrowed and must outlive
  // the Client. `clock` (borrowed; null: the wall clock) times deadlines,
  // latencies, outlier ejection and the retry budget's windows.
  // INVALID_ARGUMENT names a bad option (e.g. an unknown policy).
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options, Discovery* discovery,
                                                        Clock* clock = nullptr);
  // As above, finding providers through DSR (a RegistryDiscovery the Client
  // owns). `registry` is borrowed and must outlive the Client.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options,
                                                        registry::Client* registry);
  ~Client();

  // Calls a provider of `service`. The first call waits, up to its
  // deadline, for the discovery's first provider set. UNAVAILABLE when no
  // provider could be reached in time, naming the service.
  absl::Status Call(absl::string_view service, const CallOptions& options, const Attempt& attempt);

  // As Call, handing each attempt the generated stub of `Service` (e.g.
  // account::Balance) for the picked provider. The stub is made once per
  // provider and kept as long as the provider is: Service::NewStub(channel)
  // in every attempt costs gRPC a method registration (a lock and a map
  // lookup) for each method of the service.
  //   client->CallWithStub<account::Balance>("account.Balance", call,
  //       [&](account::Balance::Stub& stub, grpc::ClientContext* ctx) {
  //         return stub.Get(ctx, request, &response);
  //       });
  template <typename Service>
  absl::Status CallWithStub(
      absl::string_view service, const CallOptions& options,
      const std::function<grpc::Status(typename Service::Stub& stub, grpc::ClientContext* context)>&
          attempt) {
    return CallOnStub(service, options, &MakeStub<Service>,
                      [&attempt](void* stub, grpc::ClientContext* context) {
                        return attempt(*static_cast<typename Service::Stub*>(stub), context);
                      });
  }

  // As Call, without blocking: `done` runs exactly once with the outcome, on
  // a gRPC thread (or the caller's, for an immediate error). Routing,
  // balancing, retries and deadlines are those of Call. The Client must
  // outlive the call; `options.parent` is read before CallAsync returns.
  void CallAsync(absl::string_view service, const CallOptions& options, AsyncAttempt attempt,
                 std::function<void(absl::Status)> done);

  // The registry this client finds providers through, when it was created
  // over one (else null). Borrowed.
  registry::Client* registry() const { return registry_; }

  class Impl;

 private:
  // Makes a provider's stub; its address also tells one stub type from another.
  using StubMaker = std::shared_ptr<void> (*)(const std::shared_ptr<grpc::Channel>& channel);
  template <typename Service>
  static std::shared_ptr<void> MakeStub(const std::shared_ptr<grpc::Channel>& channel) {
    return std::shared_ptr<typename Service::Stub>(Service::NewStub(channel));
  }
  absl::Status CallOnStub(
      absl::string_view service, const CallOptions& options, StubMaker make,
      const std::function<grpc::Status(void* stub, grpc::ClientContext* context)>& attempt);

  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  registry::Client* registry_ = nullptr;
};

}  // namespace formica::rpc
