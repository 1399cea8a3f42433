#include "formica/rpc/server.h"

#include <google/protobuf/descriptor.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>
#include <spdlog/spdlog.h>
#include <map>

#include <atomic>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "balancer.h"
#include "call_stats.h"
#include "formica/internal/credentials.h"
#include "formica/internal/metrics_endpoint.h"
#include "formica/internal/process_metrics.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/discovery.h"
#include "formica/rpc/metrics.h"
#include "formica/rpc/zone_routing.h"
#include "server_metrics.h"
#include "serving.h"

namespace formica::rpc {
namespace {

// One method's concurrency limit and zone check on one Server.
struct MethodSlot {
  MethodSlot(std::string m, int l, const ZoneRouting* r)
      : method(std::move(m)), limit(l), routing(r) {}
  const std::string method;  // "/pkg.Service/Method"
  const int limit;           // 0: none
  const ZoneRouting* const routing;
  std::atomic<int> in_flight{0};

  // Counts a call refused before it ran (formica_rpc_rejected_total).
  void CountRejected(absl::string_view reason) {
    absl::string_view full = absl::StripPrefix(method, "/");
    size_t slash = full.find('/');
    EventCounters::Global()
        .Get("formica_rpc_rejected_total", {{"service", std::string(full.substr(0, slash))},
                                            {"method", std::string(full.substr(slash + 1))},
                                            {"reason", std::string(reason)}})
        ->fetch_add(1, std::memory_order_relaxed);
  }
};

// The limited calls being served in this process, by their server context:
// rpc::Serve finds its call's slot here. A call is in the table from the
// moment gRPC creates its interceptors until the call is destroyed.
class CallTable {
 public:
  void Add(const grpc::ServerContextBase* ctx, MethodSlot* slot) {
    absl::MutexLock lock(&mu_);
    calls_[ctx] = slot;
  }
  void Remove(const grpc::ServerContextBase* ctx) {
    absl::MutexLock lock(&mu_);
    calls_.erase(ctx);
  }
  MethodSlot* Find(const grpc::ServerContextBase* ctx) {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(ctx);
    return it == calls_.end() ? nullptr : it->second;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<const grpc::ServerContextBase*, MethodSlot*> calls_ ABSL_GUARDED_BY(mu_);
};

CallTable& Calls() {
  static CallTable* table = new CallTable();
  return *table;
}

// A server's limits and zone check, one slot per method that has either,
// made on first use.
class Limits {
 public:
  Limits(int default_limit, std::map<std::string, int> per_method, const ZoneRouting* routing)
      : default_limit_(default_limit), per_method_(std::move(per_method)), routing_(routing) {}

  bool any() const {
    if (default_limit_ > 0 || routing_ != nullptr) return true;
    for (const auto& [method, limit] : per_method_) {
      if (limit > 0) return true;
    }
    return false;
  }

  // nullptr when `method` ("/pkg.Service/Method") has no limit.
  MethodSlot* For(const char* method) {
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = slots_.find(method);
      if (it != slots_.end()) return it->second.get();
    }
    absl::string_view name = absl::StripPrefix(method, "/");
    auto configured = per_method_.find(std::string(name));
    int limit = configured != per_method_.end() ? configured->second : default_limit_;
    absl::MutexLock lock(&mu_);
    auto& slot = slots_[method];
    if (slot == nullptr && (limit > 0 || routing_ != nullptr)) {
      slot = std::make_unique<MethodSlot>(method, limit, routing_);
    }
    return slot.get();
  }

 private:
  const int default_limit_;
  const std::map<std::string, int> per_method_;  // "pkg.Service/Method" -> limit
  const ZoneRouting* const routing_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<MethodSlot>> slots_ ABSL_GUARDED_BY(mu_);
};

// Puts each call of a limited method in the call table for its lifetime.
class LimitInterceptor : public grpc::experimental::Interceptor {
 public:
  LimitInterceptor(const grpc::ServerContextBase* ctx, MethodSlot* slot) : ctx_(ctx) {
    Calls().Add(ctx_, slot);
  }
  ~LimitInterceptor() override { Calls().Remove(ctx_); }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    methods->Proceed();
  }

 private:
  const grpc::ServerContextBase* ctx_;
};

class LimitInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit LimitInterceptorFactory(std::shared_ptr<Limits> limits) : limits_(std::move(limits)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    MethodSlot* slot = info->method() == nullptr ? nullptr : limits_->For(info->method());
    if (slot == nullptr) return nullptr;  // gRPC skips a null interceptor
    return new LimitInterceptor(info->server_context(), slot);
  }

 private:
  std::shared_ptr<Limits> limits_;
};

// Checks a "pkg.Service/Method" limit key against the hosted services.
absl::Status CheckLimitedMethod(const std::string& key,
                                const std::vector<HostedService>& services) {
  size_t slash = key.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == key.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("method_limits key '", key, "' is not pkg.Service/Method"));
  }
  std::string service = key.substr(0, slash);
  bool hosted = false;
  for (const HostedService& h : services) hosted = hosted || h.name == service;
  if (!hosted) {
    return absl::InvalidArgumentError(absl::StrCat("method_limits key '", key, "': service '",
                                                   service, "' is not hosted by this server"));
  }
  const google::protobuf::ServiceDescriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
  if (descriptor != nullptr && descriptor->FindMethodByName(key.substr(slash + 1)) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("method_limits key '", key, "': service '", service, "' has no such method"));
  }
  return absl::OkStatus();
}

// The provider's double check: a call for a user this zone does not serve
// is refused, naming the zone that does (rpc::Client retries it there).
grpc::Status CheckZone(const MethodSlot& slot, grpc::ServerContextBase* context) {
  const CallContext caller = ReadCallContext(*context);
  absl::string_view method = absl::StripPrefix(slot.method, "/");
  absl::string_view service = method.substr(0, method.find('/'));
  absl::StatusOr<std::string> zone = slot.routing->ServingZone(service, caller.user_id);
  if (!zone.ok()) {
    return grpc::Status(static_cast<grpc::StatusCode>(zone.status().code()),
                        std::string(zone.status().message()));
  }
  if (zone->empty()) return grpc::Status::OK;
  context->AddTrailingMetadata(kServingZoneKey, *zone);
  return grpc::Status(
      grpc::StatusCode::FAILED_PRECONDITION,
      absl::StrCat("user ", caller.user_id, " is served in zone ", *zone, ", not here; not run"));
}

}  // namespace

namespace {

grpc::Status ServeLimited(grpc::ServerContextBase* context,
                          absl::FunctionRef<grpc::Status()> body) {
  MethodSlot* slot = context == nullptr ? nullptr : Calls().Find(context);
  if (slot != nullptr && slot->routing != nullptr) {
    if (grpc::Status refused = CheckZone(*slot, context); !refused.ok()) {
      if (refused.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        slot->CountRejected("other_zone");
      }
      return refused;
    }
  }
  if (slot != nullptr && slot->in_flight.fetch_add(1) >= slot->limit && slot->limit > 0) {
    slot->in_flight.fetch_sub(1);
    slot->CountRejected("concurrency_limit");
    context->AddTrailingMetadata(kRejectedKey, "concurrency-limit");
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat(slot->method, " has ", slot->limit,
                                     " calls in flight on this provider, its limit; not run"));
  }
  struct Release {
    MethodSlot* slot;
    ~Release() {
      if (slot != nullptr) slot->in_flight.fetch_sub(1);
    }
  } release{slot};
  if (context == nullptr) return body();
  CallContextScope scope(ReadCallContext(*context), absl::FromChrono(context->deadline()));
  grpc::Status status = body();
  // What the handler and the calls it made joined goes back to the caller,
  // up to kMaxJoinedBytes (gRPC refuses a reply whose metadata passes its
  // limit, 8 KiB by default); what does not fit is left out, for the joined
  // party's own recovery (DTS: its check-back).
  size_t bytes = 0;
  for (const std::string& entry : TakeJoined()) {
    bytes += entry.size() + sizeof(kJoinedKey);
    if (bytes > kMaxJoinedBytes) {
      static std::atomic<bool> said{false};
      if (!said.exchange(true)) {
        SPDLOG_WARN(
            "a reply carries at most {} bytes of x-formica-joined entries; the rest are "
            "left out (reported once)",
            kMaxJoinedBytes);
      }
      break;
    }
    context->AddTrailingMetadata(kJoinedKey, entry);
  }
  return status;
}

}  // namespace

grpc::Status Serve(grpc::ServerContextBase* context, absl::FunctionRef<grpc::Status()> body) {
  grpc::Status status = ServeLimited(context, body);
  ReportServedStatus(status);  // to the method's counters (server_metrics.h)
  return status;
}

class Server::Impl {
 public:
  ServerOptions options;
  std::vector<HostedService> services;
  std::unique_ptr<Discovery> owned_discovery;  // when made over a registry::Client
  Discovery* discovery = nullptr;
  ServerMetrics metrics;  // before `server`: its Stats service outlives it
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;
  int port = 0;
  absl::Time started;
  std::thread warmup_thread;
  std::thread drain_thread;
  std::vector<uint64_t> drain_watches;
  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  // Listed in a hosted service's drain list (rpc/drain/<service>): published
  // at weight 0, so callers send no new call; `drain_seen` is what the
  // drain thread last published.
  std::map<std::string, bool> drain_asked ABSL_GUARDED_BY(mu);  // by service
  bool drain_seen ABSL_GUARDED_BY(mu) = false;
  std::atomic<int32_t> weight_now{0};  // the warm-up's weight
  bool stopped = false;

  std::string Address() const { return absl::StrCat(options.advertise_host, ":", port); }

  bool DrainedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (const auto& [service, asked] : drain_asked) {
      if (asked) return true;
    }
    return false;
  }

  // Watches each hosted service's drain list; republishes on a thread of
  // its own (a registry callback must not wait for the registry).
  void WatchDrains() {
    for (const HostedService& h : services) {
      std::string service = h.name;
      absl::StatusOr<uint64_t> id =
          discovery->WatchDrain(service, [this, service](const std::optional<std::string>& list) {
            bool listed = false;
            for (absl::string_view a : absl::StrSplit(list.value_or(""), ',')) {
              listed = listed || absl::StripAsciiWhitespace(a) == Address();
            }
            absl::MutexLock lock(&mu);
            drain_asked[service] = listed;
          });
      if (id.ok()) drain_watches.push_back(*id);
    }
    if (drain_watches.empty()) return;
    drain_thread = std::thread([this] {
      while (true) {
        bool drained = false;
        {
          absl::MutexLock lock(&mu);
          auto changed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
            return stopping || DrainedLocked() != drain_seen;
          };
          mu.Await(absl::Condition(&changed));
          if (stopping) return;
          drained = drain_seen = DrainedLocked();
        }
        SPDLOG_INFO("{} rotation at the registry's drain list", drained ? "leaving" : "back in");
        if (absl::Status st = PublishAll(weight_now.load()); !st.ok()) {
          SPDLOG_WARN("drain republish failed: {}", st.ToString());
        }
      }
    });
  }

  absl::Status PublishAll(int32_t weight) {
    weight_now.store(weight);
    bool drained = false;
    {
      absl::MutexLock lock(&mu);
      drained = DrainedLocked();
    }
    for (const HostedService& h : services) {
      Provider provider;
      provider.address = Address();
      provider.zone = options.zone;
      provider.weight = drained ? 0 : weight;
      provider.tags = options.tags;
      if (absl::Status st = discovery->Publish(h.name, provider); !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }

  // Republishes the ramping weight until it is full.
  void WarmUp() {
    while (true) {
      absl::Duration uptime = absl::Now() - started;
      int32_t weight = WarmedWeight(options.weight, uptime, options.warmup);
      absl::Status st = PublishAll(weight);
      if (!st.ok()) {
        SPDLOG_WARN("warm-up republish failed: {}", st.ToString());
      }
      if (weight >= options.weight) return;
      absl::MutexLock lock(&mu);
      if (mu.AwaitWithTimeout(absl::Condition(&stopping), options.warmup_step)) return;
    }
  }
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options,
                                                      std::vector<HostedService> services,
                                                      registry::Client* registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("rpc::Server needs a registry::Client");
  }
  auto discovery = std::make_unique<RegistryDiscovery>(registry);
  Discovery* raw = discovery.get();
  return Start(std::move(options), std::move(services), raw, std::move(discovery));
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options,
                                                      std::vector<HostedService> services,
                                                      Discovery* discovery) {
  if (discovery == nullptr) {
    return absl::InvalidArgumentError("rpc::Server needs a Discovery");
  }
  return Start(std::move(options), std::move(services), discovery, nullptr);
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options,
                                                      std::vector<HostedService> services,
                                                      Discovery* discovery,
                                                      std::unique_ptr<Discovery> owned_discovery) {
  if (services.empty()) {
    return absl::InvalidArgumentError("rpc::Server needs at least one service to host");
  }
  for (const HostedService& h : services) {
    if (h.service == nullptr || h.name.empty()) {
      return absl::InvalidArgumentError("every HostedService needs a name and a service");
    }
  }
  if (options.max_concurrent_calls < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ServerOptions.max_concurrent_calls ",
                                                   options.max_concurrent_calls, " is negative"));
  }
  for (const auto& [method, limit] : options.method_limits) {
    if (limit < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("ServerOptions.method_limits[", method, "] ", limit, " is negative"));
    }
    if (absl::Status st = CheckLimitedMethod(method, services); !st.ok()) return st;
  }
  if (options.weight < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ServerOptions.weight ", options.weight, " is negative"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->services = std::move(services);
  impl->discovery = discovery;
  impl->owned_discovery = std::move(owned_discovery);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(impl->options.listen, formica::ServerCredentials(), &impl->port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (impl->options.max_receive_message_bytes > 0) {
    builder.SetMaxReceiveMessageSize(impl->options.max_receive_message_bytes);
  }
  // gRPC's sync server lets at most 2 idle threads poll and ends the others,
  // so under concurrent blocking handlers it creates and ends a thread for
  // nearly every call. Keep more of them.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                              impl->options.max_idle_threads);
  auto limits = std::make_shared<Limits>(impl->options.max_concurrent_calls,
                                         impl->options.method_limits, impl->options.zone_routing);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  if (limits->any()) creators.push_back(std::make_unique<LimitInterceptorFactory>(limits));
  if (impl->options.count_calls) {
    impl->metrics.CountMethods(impl->services);
    if (auto counting = impl->metrics.CallbackCounting()) creators.push_back(std::move(counting));
  }
  if (!creators.empty()) builder.experimental().SetInterceptorCreators(std::move(creators));
  for (const HostedService& h : impl->services) {
    builder.RegisterService(h.service);
  }
  builder.RegisterService(impl->metrics.stats_service());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", impl->options.listen, "': malformed or in use"));
  }
  impl->started = absl::Now();
  impl->metrics.Start(impl->Address());
  if (!impl->options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint = MetricsEndpoint::Start(
        impl->options.metrics_listen,
        {[](PrometheusText& out) { out.Append(CallMetricsPrometheusText()); },
         [](PrometheusText& out) { WriteProcessMetrics(out); }});
    if (!endpoint.ok()) {
      impl->server->Shutdown();
      return endpoint.status();
    }
    impl->metrics_endpoint = *std::move(endpoint);
  }
  int32_t first = WarmedWeight(impl->options.weight, absl::ZeroDuration(), impl->options.warmup);
  if (absl::Status st = impl->PublishAll(first); !st.ok()) {
    impl->server->Shutdown();
    return absl::UnavailableError(absl::StrCat("cannot publish to the registry: ", st.message()));
  }
  if (first < impl->options.weight) {
    Impl* raw = impl.get();
    impl->warmup_thread = std::thread([raw] { raw->WarmUp(); });
  }
  impl->WatchDrains();
  SPDLOG_INFO("rpc server on {} ({} service(s), zone '{}', weight {})", impl->Address(),
              impl->services.size(), impl->options.zone, impl->options.weight);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { Shutdown(); }

int Server::port() const { return impl_->port; }
int Server::metrics_port() const {
  return impl_->metrics_endpoint == nullptr ? 0 : impl_->metrics_endpoint->port();
}
std::string Server::address() const { return impl_->Address(); }

void Server::Shutdown() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->warmup_thread.joinable()) impl_->warmup_thread.join();
  for (uint64_t id : impl_->drain_watches) impl_->discovery->UnwatchDrain(id);
  if (impl_->drain_thread.joinable()) impl_->drain_thread.join();
  // 1. Withdraw from the discovery (the registry): callers stop picking this
  // provider.
  for (const HostedService& h : impl_->services) {
    absl::Status st = impl_->discovery->Unpublish(h.name, impl_->Address());
    if (!st.ok() && !absl::IsNotFound(st)) {
      SPDLOG_WARN("unpublish of {} failed: {}", h.name, st.ToString());
    }
  }
  // 2. Keep serving while the removal reaches every caller.
  absl::SleepFor(impl_->options.unpublish_grace);
  // 3. Refuse new calls, let in-flight ones finish, then stop.
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + impl_->options.drain_timeout));
  impl_->server->Wait();
  if (impl_->metrics_endpoint != nullptr) impl_->metrics_endpoint->Stop();
  SPDLOG_INFO("rpc server on {} stopped", impl_->Address());
}

}  // namespace formica::rpc
