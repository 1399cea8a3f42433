// formica::rpc::Server — hosts gRPC services and publishes them through a
// Discovery (DSR's, by default: formica/rpc/discovery.h).
//
//   rpc::ServerOptions options;
//   options.listen = "0.0.0.0:9000";
//   options.advertise_host = "10.0.0.5";
//   options.zone = "gz00a";
//   options.tags = {{"version", "1.4.2"}, {"color", "blue"}};
//   options.warmup = absl::Seconds(60);
//   MyServiceImpl impl;
//   auto server = rpc::Server::Start(options, {{MyService::service_full_name(), &impl}},
//                                    registry_client).value();
//   ...
//   server->Shutdown();  // unpublish, let callers notice, drain, stop
//
// Each hosted service is published as one instance (advertise_host:port,
// zone, weight, tags). During warm-up the published weight ramps from 1 to
// `weight`. The gRPC health service and server reflection are served.
//
// Handlers that run their body inside rpc::Serve get the per-method
// concurrency limit and the caller's context without further ado:
//
//   grpc::Status Buy(grpc::ServerContext* ctx, const BuyRequest* req,
//                    BuyReply* reply) override {
//     return rpc::Serve(ctx, [&] {
//       const rpc::CallContext& caller = *rpc::CurrentCallContext();
//       ...  // rpc::Client calls made here carry the caller's context on
//       return grpc::Status::OK;
//     });
//   }
#pragma once

#include <grpcpp/support/status.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Service;
class ServerContextBase;
}  // namespace grpc

namespace formica {
class Config;
}

namespace formica::registry {
class Client;
}

namespace formica::rpc {

class Discovery;
class ZoneRouting;

struct ServerOptions {
  std::string listen = "127.0.0.1:0";        // host:port; port 0 picks a free one
  std::string advertise_host = "127.0.0.1";  // the host callers reach this server at
  std::string zone;
  int32_t weight = 100;
  std::map<std::string, std::string> tags;
  absl::Duration warmup = absl::ZeroDuration();   // weight ramp after start
  absl::Duration warmup_step = absl::Seconds(1);  // how often the ramp is republished
  // Shutdown: after unpublishing, keep serving this long so callers drop
  // this provider before it stops taking calls.
  absl::Duration unpublish_grace = absl::Seconds(2);
  // Then in-flight calls get this long to finish.
  absl::Duration drain_timeout = absl::Seconds(10);
  // Calls of one method running at once inside rpc::Serve beyond which a new
  // one is refused with RESOURCE_EXHAUSTED before its body runs (callers'
  // rpc::Client then tries another provider). 0: no limit.
  int max_concurrent_calls = 0;
  // Idle handler threads kept for the next calls (gRPC's own default is 2,
  // which makes a busy server start and end a thread per call).
  int max_idle_threads = 32;
  // The largest request message taken (gRPC's default: 4 MiB); 0 keeps it.
  int max_receive_message_bytes = 0;
  // Count every call of the hosted services (status code, latency) in the
  // process's call metrics (formica/rpc/metrics.h), which the Stats service
  // serves. The counting costs a few atomic additions per call.
  bool count_calls = true;
  // Where to serve the process's call metrics over HTTP in the Prometheus
  // text format (GET /metrics, docs/metrics.md): "host:port", port 0 picks a
  // free one. Empty (the default): not served. Config key `metrics.listen`.
  std::string metrics_listen;
  // Per-method limits, overriding the above: "pkg.Service/Method" -> limit
  // (0: no limit).
  std::map<std::string, int> method_limits;
  // Unit routing (formica/rpc/zone_routing.h), borrowed; must outlive the
  // Server. Set: rpc::Serve refuses a call for a user this zone does not
  // serve, before the body runs (FAILED_PRECONDITION; rpc::Client retries
  // it in the zone named). Null: every call is served.
  const ZoneRouting* zone_routing = nullptr;
};

// Reads ServerOptions from the `rpc.server` section of a config file (see
// docs/rpc.md). INVALID_ARGUMENT names the file, line, key and reason.
absl::StatusOr<ServerOptions> LoadServerOptions(const Config& config);

struct HostedService {
  std::string name;                  // the name callers use, normally Service::service_full_name()
  grpc::Service* service = nullptr;  // borrowed; must outlive the Server
};

// Runs a handler's body as the call `context` is served: counts it against
// its method's concurrency limit (RESOURCE_EXHAUSTED, naming the method and
// the limit, without running `body` when over it) and makes the caller's
// context current on this thread while `body` runs (CurrentCallContext()).
// Outside an rpc::Server (a plain grpc::Server) `body` runs with the context
// and no limit.
grpc::Status Serve(grpc::ServerContextBase* context, absl::FunctionRef<grpc::Status()> body);

class Server {
 public:
  // Starts serving and publishes every service through `discovery`
  // (borrowed; must outlive the Server).
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options,
                                                       std::vector<HostedService> services,
                                                       Discovery* discovery);
  // As above, publishing to DSR (a RegistryDiscovery the Server owns).
  // `registry` is borrowed and must outlive the Server.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options,
                                                       std::vector<HostedService> services,
                                                       registry::Client* registry);
  ~Server();

  int port() const;
  // The metrics endpoint's port; 0 when `metrics_listen` is empty.
  int metrics_port() const;
  // advertise_host:port, as published.
  std::string address() const;

  // Unpublishes, waits `unpublish_grace`, drains in-flight calls for up to
  // `drain_timeout`, then stops. Idempotent.
  void Shutdown();

  class Impl;

 private:
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options,
                                                       std::vector<HostedService> services,
                                                       Discovery* discovery,
                                                       std::unique_ptr<Discovery> owned_discovery);
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::rpc
