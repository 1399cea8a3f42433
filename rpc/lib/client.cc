#include "formica/rpc/client.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "balancer.h"
#include "call_stats.h"
#include "client_call_stats.h"
#include "formica/common/clock.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/credentials.h"
#include "formica/rpc/discovery.h"
#include "formica/rpc/routes.h"
#include "formica/rpc/zone_routing.h"
#include "serving.h"

namespace formica::rpc {
namespace {

// One provider: its balancer state, its channel and its health.
struct Endpoint {
  Provider provider;
  std::shared_ptr<EndpointState> state;
  std::shared_ptr<grpc::Channel> channel;
  // This process's calls to the provider, per method; null: not counted.
  std::unique_ptr<MethodCallStats> stats;
  std::atomic<uint64_t>* ejections = nullptr;  // formica_rpc_ejections_total; null: not counted
  std::atomic<int> consecutive_failures{0};
  std::atomic<int64_t> ejected_until_ns{0};

  ~Endpoint() {
    for (CachedStub* s = stubs.load(); s != nullptr;) delete std::exchange(s, s->next);
  }

  // The stub `make` makes for this provider's channel, made on first use.
  // Reads take no lock: the list only grows, while the endpoint lives.
  void* Stub(std::shared_ptr<void> (*make)(const std::shared_ptr<grpc::Channel>&)) {
    auto find = [this, make]() -> void* {
      for (CachedStub* s = stubs.load(std::memory_order_acquire); s != nullptr; s = s->next) {
        if (s->make == make) return s->stub.get();
      }
      return nullptr;
    };
    if (void* stub = find()) return stub;
    absl::MutexLock lock(&stubs_mu);
    if (void* stub = find()) return stub;
    auto* made = new CachedStub{make, make(channel), stubs.load(std::memory_order_relaxed)};
    stubs.store(made, std::memory_order_release);
    return made->stub.get();
  }

  struct CachedStub {
    std::shared_ptr<void> (*make)(const std::shared_ptr<grpc::Channel>&);
    std::shared_ptr<void> stub;
    CachedStub* next;
  };
  std::atomic<CachedStub*> stubs{nullptr};
  absl::Mutex stubs_mu;

  // `state` is the channel's state as read for this check (left alone
  // when the provider is ejected).
  bool Healthy(absl::Time now, grpc_connectivity_state* state) const {
    if (absl::FromUnixNanos(ejected_until_ns.load()) > now) return false;
    // A connection that failed is out of rotation at once, before its lease.
    *state = channel->GetState(false);
    return *state != GRPC_CHANNEL_TRANSIENT_FAILURE;
  }
};

// The providers one call has tried so far (at most max_attempts).
using Tried = absl::InlinedVector<const Endpoint*, 4>;

// A provider picked for an attempt, with its channel's state at the pick.
// The view it came from keeps it alive.
struct Picked {
  Endpoint* endpoint = nullptr;
  grpc_connectivity_state state = GRPC_CHANNEL_IDLE;
};

// A tag route: a share of the calls goes to providers with tag key=value.
using Route = TagRoute;

absl::StatusOr<std::vector<Route>> ParseRoutes(absl::string_view text) {
  return ParseTagRoutes(text);
}

// The candidates for one route: balancers over the local zone and over all.
struct Group {
  std::vector<std::shared_ptr<Endpoint>> all;
  std::vector<std::shared_ptr<Endpoint>> local;
  std::unique_ptr<Balancer> all_balancer;
  std::unique_ptr<Balancer> local_balancer;
  std::map<EndpointState*, std::shared_ptr<Endpoint>> by_state;
  // The members of each zone and their balancers (for zone routing).
  std::map<std::string, std::vector<std::shared_ptr<Endpoint>>> zones;
  std::map<std::string, std::unique_ptr<Balancer>> zone_balancers;
};

// Everything a call needs about one service, immutable once built and
// swapped whole when the discovery pushes or the routes change.
struct ServiceView {
  Group everyone;
  std::vector<std::pair<Route, Group>> routes;
};

}  // namespace

class Client::Impl {
 public:
  Impl(ClientOptions options, Discovery* discovery, Clock* clock,
       std::unique_ptr<Discovery> owned_discovery)
      : options_(std::move(options)),
        owned_discovery_(std::move(owned_discovery)),
        discovery_(discovery),
        clock_(clock) {}

  ~Impl() {
    std::map<std::string, std::shared_ptr<Service>, std::less<>> services;
    {
      absl::MutexLock lock(&mu_);
      services.swap(services_);
    }
    for (auto& [name, s] : services) {
      discovery_->Unsubscribe(s->subscription);
      if (s->watch != 0) discovery_->UnwatchRoutes(s->watch);
    }
  }

  // Calls `attempt` for each attempt with the picked provider.
  absl::Status Call(
      absl::string_view service, const CallOptions& options,
      absl::FunctionRef<grpc::Status(Endpoint& endpoint, grpc::ClientContext* context)> attempt);
  void CallAsync(absl::string_view service, const CallOptions& options, AsyncAttempt attempt,
                 std::function<void(absl::Status)> done);

 private:
  struct Service;
  // One call's settled inputs and progress, shared by Call and CallAsync.
  struct Prepared {
    std::shared_ptr<Service> service;
    absl::Duration timeout;
    absl::Time deadline;
    CallContext context;
    PickContext pick;
    std::string zone;       // with zone routing: only providers of this zone, if set
    bool rerouted = false;  // sent once to the zone a provider named
    bool idempotent = false;
    int attempts = 0;
    Tried tried;
    absl::Status last;  // the last attempt's outcome, once one was made

    // The call's outcome so far: the last attempt's, or UNAVAILABLE naming
    // the service when no attempt could be made.
    absl::Status Outcome() const;
  };
  class AsyncCall;
  struct Service {
    std::string name;
    std::atomic<std::atomic<uint64_t>*> retries{nullptr};  // made on the first retry
    Policy policy = Policy::kWeightedRandom;
    uint64_t subscription = 0;
    uint64_t watch = 0;
    absl::Mutex mu;
    std::shared_ptr<const ServiceView> view ABSL_GUARDED_BY(mu);
    // `view` once a snapshot with providers arrived, else null: what calls
    // read, without taking `mu` (std::atomic_load/atomic_store; stored
    // under `mu`).
    std::shared_ptr<const ServiceView> ready_view;
    std::map<std::string, std::shared_ptr<Endpoint>> endpoints ABSL_GUARDED_BY(mu);
    std::vector<Route> routes ABSL_GUARDED_BY(mu);
    std::vector<Provider> providers ABSL_GUARDED_BY(mu);
    bool has_snapshot ABSL_GUARDED_BY(mu) = false;
  };

  absl::StatusOr<std::shared_ptr<Service>> ServiceFor(absl::string_view name);
  // The known service named `name`, or null; takes no lock.
  std::shared_ptr<Service> KnownService(absl::string_view name) const;
  absl::StatusOr<Prepared> Prepare(absl::string_view name, const CallOptions& options);
  // The service's current view; with `wait_until`, waits for the first one.
  std::shared_ptr<const ServiceView> View(Service& s, std::optional<absl::Time> wait_until);
  // Picks a provider and readies `ctx`; null when no attempt is left. The
  // provider lives as long as `view`.
  Endpoint* StartAttempt(Prepared& p, const ServiceView& view, grpc::ClientContext* ctx,
                         bool* connected);
  // Records the outcome; true when another attempt should follow.
  bool FinishAttempt(Prepared& p, Endpoint& e, bool connected, const grpc::ClientContext& ctx,
                     absl::Duration latency, const grpc::Status& status);
  void Rebuild(Service& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  Group MakeGroup(Service& s, const std::vector<std::shared_ptr<Endpoint>>& members)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  Picked Pick(const ServiceView& view, const PickContext& pick, const std::string& zone,
              const Tried& tried, absl::Time now);
  bool TakeRetryToken();
  void CountRetry(Service& s);
  void Record(Endpoint& e, const grpc::ClientContext& ctx, const grpc::Status& status,
              absl::Duration latency);

  const ClientOptions options_;
  // Set when the Client made its own (over a registry::Client).
  const std::unique_ptr<Discovery> owned_discovery_;
  Discovery* const discovery_;
  Clock* const clock_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Service>, std::less<>> services_ ABSL_GUARDED_BY(mu_);
  // A copy of `services_` that calls read without taking `mu_`
  // (std::atomic_load; replaced whole under `mu_` when a service is added
  // or dropped, which is rare).
  using ServiceIndex = std::map<std::string, std::shared_ptr<Service>, std::less<>>;
  std::shared_ptr<const ServiceIndex> known_services_ = std::make_shared<const ServiceIndex>();
  void PublishServices() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Retry budget over one-second windows; lock-free on the call path.
  std::atomic<int64_t> budget_window_{0};
  std::atomic<int> calls_{0};
  std::atomic<int> retries_{0};
  void CountCall(absl::Time now);
};

std::shared_ptr<Client::Impl::Service> Client::Impl::KnownService(absl::string_view name) const {
  std::shared_ptr<const ServiceIndex> known = std::atomic_load(&known_services_);
  auto it = known->find(name);
  return it == known->end() ? nullptr : it->second;
}

void Client::Impl::PublishServices() {
  std::atomic_store(&known_services_, std::make_shared<const ServiceIndex>(services_));
}

absl::StatusOr<std::shared_ptr<Client::Impl::Service>> Client::Impl::ServiceFor(
    absl::string_view name) {
  if (std::shared_ptr<Service> known = KnownService(name)) return known;
  std::shared_ptr<Service> s;
  {
    absl::MutexLock lock(&mu_);
    auto it = services_.find(name);
    if (it != services_.end()) return it->second;
    s = std::make_shared<Service>();
    s->name = std::string(name);
    auto policy = options_.policies.find(s->name);
    if (policy != options_.policies.end()) {
      s->policy = *ParsePolicy(policy->second);  // checked in Create
    }
    services_[s->name] = s;
    PublishServices();
  }
  Service* raw = s.get();
  absl::StatusOr<uint64_t> sub =
      discovery_->Subscribe(name, [raw, this](const ProviderSet& providers) {
        absl::MutexLock lock(&raw->mu);
        raw->providers = providers.providers;
        raw->has_snapshot = true;
        Rebuild(*raw);
      });
  if (!sub.ok()) {
    absl::MutexLock lock(&mu_);
    services_.erase(std::string(name));
    PublishServices();
    return sub.status();
  }
  s->subscription = *sub;
  absl::StatusOr<uint64_t> watch =
      discovery_->WatchRoutes(name, [raw, this](const std::optional<std::string>& text) {
        absl::StatusOr<std::vector<Route>> routes =
            text.has_value() ? ParseRoutes(*text) : std::vector<Route>{};
        if (!routes.ok()) {
          SPDLOG_ERROR("ignoring routes for '{}': {}", raw->name,
                       std::string(routes.status().message()));
          return;
        }
        absl::MutexLock lock(&raw->mu);
        raw->routes = *std::move(routes);
        Rebuild(*raw);
      });
  s->watch = watch.ok() ? *watch : 0;
  return s;
}

Group Client::Impl::MakeGroup(Service& s, const std::vector<std::shared_ptr<Endpoint>>& members) {
  Group g;
  g.all = members;
  for (const auto& e : members) {
    g.by_state[e->state.get()] = e;
    if (!options_.zone.empty() && e->provider.zone == options_.zone) g.local.push_back(e);
    g.zones[e->provider.zone].push_back(e);
  }
  auto states = [](const std::vector<std::shared_ptr<Endpoint>>& v) {
    std::vector<std::shared_ptr<EndpointState>> out;
    for (const auto& e : v) out.push_back(e->state);
    return out;
  };
  g.all_balancer = NewBalancer(s.policy, states(g.all));
  g.local_balancer = NewBalancer(s.policy, states(g.local));
  for (const auto& [zone, members] : g.zones) {
    g.zone_balancers[zone] = NewBalancer(s.policy, states(members));
  }
  return g;
}

void Client::Impl::Rebuild(Service& s) {
  std::map<std::string, std::shared_ptr<Endpoint>> next;
  std::vector<std::shared_ptr<Endpoint>> members;
  for (const Provider& inst : s.providers) {
    auto it = s.endpoints.find(inst.address);
    std::shared_ptr<Endpoint> e;
    if (it != s.endpoints.end()) {
      e = it->second;  // keep its channel, counters and health
      e->provider = inst;
      e->state->set_weight(inst.weight);
    } else {
      e = std::make_shared<Endpoint>();
      e->provider = inst;
      e->state = std::make_shared<EndpointState>(inst.address, inst.weight);
      if (options_.count_calls) {
        e->stats = std::make_unique<MethodCallStats>(s.name, inst.address);
        e->ejections = EventCounters::Global().Get(
            "formica_rpc_ejections_total", {{"service", s.name}, {"provider", inst.address}});
      }
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
      // A restarted provider is back in rotation within a second, not after
      // gRPC's default backoff of up to two minutes.
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      // Replies are sized by the providers (gRPC's default cap is 4 MiB).
      args.SetMaxReceiveMessageSize(-1);
      e->channel = grpc::CreateCustomChannel(inst.address, formica::ChannelCredentials(), args);
      e->channel->GetState(true);  // connect now, not on the first call
    }
    next[inst.address] = e;
    members.push_back(e);
  }
  s.endpoints = std::move(next);
  auto view = std::make_shared<ServiceView>();
  view->everyone = MakeGroup(s, members);
  for (const Route& r : s.routes) {
    std::vector<std::shared_ptr<Endpoint>> tagged;
    for (const auto& e : members) {
      auto tag = e->provider.tags.find(r.key);
      if (tag != e->provider.tags.end() && tag->second == r.value) tagged.push_back(e);
    }
    view->routes.emplace_back(r, MakeGroup(s, tagged));
  }
  s.view = std::move(view);
  std::atomic_store(&s.ready_view, s.has_snapshot && !s.providers.empty()
                                       ? s.view
                                       : std::shared_ptr<const ServiceView>());
}

Picked Client::Impl::Pick(const ServiceView& view, const PickContext& pick, const std::string& zone,
                          const Tried& tried, absl::Time now) {
  auto was_tried = [&tried](const Endpoint* e) {
    return std::find(tried.begin(), tried.end(), e) != tried.end();
  };
  thread_local std::mt19937 rng(std::random_device{}());
  const Group* group = &view.everyone;
  if (!view.routes.empty()) {
    int roll = std::uniform_int_distribution<int>(0, 99)(rng);
    for (const auto& [route, g] : view.routes) {
      roll -= route.percent;
      if (roll < 0) {
        // No provider carries the tag: fall back to everyone.
        if (!g.all.empty()) group = &g;
        break;
      }
    }
  }
  auto try_balancer = [&](Balancer* b,
                          const std::vector<std::shared_ptr<Endpoint>>& members) -> Picked {
    Picked picked;
    if (members.empty()) return picked;
    // A few picks to step over unhealthy or already-tried providers.
    for (size_t i = 0; i < std::min<size_t>(members.size() * 2, 8); ++i) {
      EndpointState* s = b->Pick(pick);
      if (s == nullptr) return picked;
      Endpoint* e = group->by_state.at(s).get();
      if (!was_tried(e) && e->Healthy(now, &picked.state)) {
        picked.endpoint = e;
        return picked;
      }
    }
    for (const auto& e : members) {
      if (!was_tried(e.get()) && e->Healthy(now, &picked.state)) {
        picked.endpoint = e.get();
        return picked;
      }
    }
    return picked;
  };
  if (!zone.empty()) {  // zone routing: that zone's providers or none
    auto members = group->zones.find(zone);
    if (members == group->zones.end()) return Picked{};
    if (Picked p = try_balancer(group->zone_balancers.at(zone).get(), members->second);
        p.endpoint != nullptr) {
      return p;
    }
    for (const auto& e : members->second) {
      if (!was_tried(e.get())) return Picked{e.get(), e->channel->GetState(false)};
    }
    return Picked{};
  }
  if (Picked p = try_balancer(group->local_balancer.get(), group->local); p.endpoint != nullptr) {
    return p;
  }
  if (Picked p = try_balancer(group->all_balancer.get(), group->all); p.endpoint != nullptr) {
    return p;
  }
  // Nobody healthy: probe one not tried yet rather than fail without trying.
  for (const auto& e : group->all) {
    if (!was_tried(e.get())) return Picked{e.get(), e->channel->GetState(false)};
  }
  return Picked{};
}

void Client::Impl::CountCall(absl::Time now) {
  int64_t window = absl::ToUnixSeconds(now);
  int64_t seen = budget_window_.load(std::memory_order_relaxed);
  if (seen != window && budget_window_.compare_exchange_strong(seen, window)) {
    calls_.store(0, std::memory_order_relaxed);
    retries_.store(0, std::memory_order_relaxed);
  }
  calls_.fetch_add(1, std::memory_order_relaxed);
}

bool Client::Impl::TakeRetryToken() {
  int allowed = std::max(options_.min_retries_per_second,
                         static_cast<int>(calls_.load() * options_.retry_budget_ratio));
  if (retries_.fetch_add(1) >= allowed) {
    retries_.fetch_sub(1);
    return false;
  }
  return true;
}

void Client::Impl::Record(Endpoint& e, const grpc::ClientContext& ctx, const grpc::Status& status,
                          absl::Duration latency) {
  e.state->CallFinished(latency);
  if (e.stats != nullptr) {
    e.stats->For(CalledMethod(ctx))->Record(static_cast<int>(status.error_code()), latency);
  }
  bool provider_fault = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                        status.error_code() == grpc::StatusCode::INTERNAL ||
                        status.error_code() == grpc::StatusCode::UNKNOWN;
  if (!provider_fault) {
    e.consecutive_failures.store(0);
    return;
  }
  if (e.consecutive_failures.fetch_add(1) + 1 >= options_.eject_after_failures) {
    // Ejected; once the time is up, the next call is the probe: a failure
    // ejects it again at once, a success resets the count.
    absl::Time now = clock_->Now();
    // Counted when it leaves the rotation (first, or after a failed probe),
    // not for each failure of calls already under way.
    if (e.ejected_until_ns.exchange(absl::ToUnixNanos(now + options_.ejection_time)) <=
            absl::ToUnixNanos(now) &&
        e.ejections != nullptr) {
      e.ejections->fetch_add(1, std::memory_order_relaxed);
    }
  }
}

absl::Status Client::Impl::Prepared::Outcome() const {
  if (attempts > 0) return last;
  return absl::UnavailableError(absl::StrCat("no provider of '", service->name, "'",
                                             zone.empty() ? "" : absl::StrCat(" in zone ", zone),
                                             " is known after ", absl::FormatDuration(timeout)));
}

absl::StatusOr<Client::Impl::Prepared> Client::Impl::Prepare(absl::string_view name,
                                                             const CallOptions& options) {
  Prepared p;
  absl::Time now = clock_->Now();
  p.idempotent = options.idempotent;
  p.timeout = options.timeout > absl::ZeroDuration() ? options.timeout : options_.default_timeout;
  p.deadline = now + p.timeout;
  p.context = options.context;
  // The parent call: named, or else the one this thread is serving.
  std::optional<CallContext> inherited;
  if (options.parent != nullptr) {
    p.deadline = std::min(p.deadline, absl::FromChrono(options.parent->deadline()));
    inherited = ReadCallContext(*options.parent);
  } else if (const ServingCall* serving = options.inherit_current ? CurrentServingCall() : nullptr;
             serving != nullptr) {
    p.deadline = std::min(p.deadline, serving->deadline);
    inherited = serving->context;
  }
  if (inherited.has_value()) {
    if (p.context.user_id.empty()) p.context.user_id = inherited->user_id;
    if (p.context.txn_id.empty()) p.context.txn_id = inherited->txn_id;
    if (p.context.traceparent.empty()) p.context.traceparent = inherited->traceparent;
  }
  p.context.traceparent = ChildTraceparent(p.context.traceparent);
  if (p.context.caller_app.empty()) p.context.caller_app = options_.app_name;
  if (p.context.zone.empty()) p.context.zone = options_.zone;
  if (!options.hash_key.empty()) p.pick.hash_key = HashKey(options.hash_key);
  if (options_.zone_routing != nullptr) {
    absl::StatusOr<std::string> zone =
        options_.zone_routing->CallZone(name, p.context.user_id, options.read_only);
    if (!zone.ok()) return zone.status();
    p.zone = *std::move(zone);
  }
  absl::StatusOr<std::shared_ptr<Service>> service = ServiceFor(name);
  if (!service.ok()) return service.status();
  p.service = *std::move(service);
  CountCall(now);
  return p;
}

std::shared_ptr<const ServiceView> Client::Impl::View(Service& s,
                                                      std::optional<absl::Time> wait_until) {
  if (std::shared_ptr<const ServiceView> ready = std::atomic_load(&s.ready_view)) return ready;
  if (!wait_until.has_value()) return nullptr;
  // The first call waits for the discovery's first provider set.
  absl::MutexLock lock(&s.mu);
  auto ready = [&s]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    return s.has_snapshot && !s.providers.empty();
  };
  s.mu.AwaitWithDeadline(absl::Condition(&ready), *wait_until);
  return s.view;
}

Endpoint* Client::Impl::StartAttempt(Prepared& p, const ServiceView& view, grpc::ClientContext* ctx,
                                     bool* connected) {
  absl::Time now = clock_->Now();
  if (now >= p.deadline ||
      p.attempts >= std::max(1, options_.max_attempts) + (p.rerouted ? 1 : 0)) {
    return nullptr;
  }
  Picked picked = Pick(view, p.pick, p.zone, p.tried, now);
  Endpoint* e = picked.endpoint;
  if (e == nullptr) return nullptr;
  ++p.attempts;
  p.tried.push_back(e);
  *connected = picked.state == GRPC_CHANNEL_READY;
  ctx->set_deadline(absl::ToChronoTime(p.deadline));
  WriteCallContext(p.context, ctx);
  e->state->CallStarted();
  return e;
}

bool Client::Impl::FinishAttempt(Prepared& p, Endpoint& e, bool connected,
                                 const grpc::ClientContext& ctx, absl::Duration latency,
                                 const grpc::Status& status) {
  Record(e, ctx, status, latency);
  if (status.ok()) {
    p.last = absl::OkStatus();
    return false;
  }
  p.last = absl::Status(
      FromGrpcStatus(status).code(),
      absl::StrCat(p.service->name, " at ", e.provider.address, ": ", status.error_message()));
  // A provider's zone check refused it before running it: once, in the zone it names.
  auto serving = ctx.GetServerTrailingMetadata().find(kServingZoneKey);
  if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
      serving != ctx.GetServerTrailingMetadata().end() && !p.rerouted) {
    p.rerouted = true;
    p.zone = std::string(serving->second.data(), serving->second.size());
    if (clock_->Now() >= p.deadline) return false;
    CountRetry(*p.service);
    return true;
  }
  bool unavailable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                     status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
  // Retry when the request surely never reached the provider (no
  // connection), or when the call is idempotent and the provider failed.
  // A provider over its concurrency limit refused the call before running it.
  bool never_left = (status.error_code() == grpc::StatusCode::UNAVAILABLE && !connected) ||
                    (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
                     ctx.GetServerTrailingMetadata().count(kRejectedKey) > 0);
  if (!(never_left || (p.idempotent && unavailable))) return false;
  if (p.attempts >= options_.max_attempts || clock_->Now() >= p.deadline) return false;
  if (!TakeRetryToken()) {
    p.last =
        absl::Status(p.last.code(), absl::StrCat(p.last.message(), " (retry budget exhausted)"));
    return false;
  }
  CountRetry(*p.service);
  return true;
}

void Client::Impl::CountRetry(Service& s) {
  if (!options_.count_calls) return;
  std::atomic<uint64_t>* retries = s.retries.load(std::memory_order_acquire);
  if (retries == nullptr) {
    retries = EventCounters::Global().Get("formica_rpc_retries_total", {{"service", s.name}});
    s.retries.store(retries, std::memory_order_release);
  }
  retries->fetch_add(1, std::memory_order_relaxed);
}

absl::Status Client::Impl::Call(
    absl::string_view name, const CallOptions& options,
    absl::FunctionRef<grpc::Status(Endpoint& endpoint, grpc::ClientContext* context)> attempt) {
  absl::StatusOr<Prepared> prepared = Prepare(name, options);
  if (!prepared.ok()) return prepared.status();
  Prepared& p = *prepared;
  std::shared_ptr<const ServiceView> view = View(*p.service, p.deadline);
  if (view == nullptr) return p.Outcome();
  while (true) {
    grpc::ClientContext ctx;
    bool connected = false;
    Endpoint* e = StartAttempt(p, *view, &ctx, &connected);
    if (e == nullptr) return p.Outcome();
    absl::Time t0 = clock_->Now();
    grpc::Status status = attempt(*e, &ctx);
    AddJoined(ctx.GetServerTrailingMetadata());  // only calls made on this thread join its scope
    if (!FinishAttempt(p, *e, connected, ctx, clock_->Now() - t0, status)) return p.Outcome();
  }
}

// One asynchronous call: attempts chain from gRPC's completion callbacks.
class Client::Impl::AsyncCall : public std::enable_shared_from_this<AsyncCall> {
 public:
  AsyncCall(Impl* impl, Prepared p, AsyncAttempt attempt, std::function<void(absl::Status)> done)
      : impl_(impl), p_(std::move(p)), attempt_(std::move(attempt)), done_(std::move(done)) {}

  void Start() {
    view_ = impl_->View(*p_.service, std::nullopt);
    if (view_ != nullptr) {
      Next();
      return;
    }
    // Only a service's first calls get here: wait for the first snapshot
    // off the caller's thread.
    auto self = shared_from_this();
    std::thread([self] {
      self->view_ = self->impl_->View(*self->p_.service, self->p_.deadline);
      if (self->view_ == nullptr) {
        self->done_(self->p_.Outcome());
        return;
      }
      self->Next();
    }).detach();
  }

 private:
  void Next() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    bool connected = false;
    // view_ keeps the provider alive for the whole call.
    Endpoint* e = impl_->StartAttempt(p_, *view_, ctx.get(), &connected);
    if (e == nullptr) {
      done_(p_.Outcome());
      return;
    }
    grpc::ClientContext* raw = ctx.get();
    contexts_.push_back(std::move(ctx));  // alive until the whole call ends
    absl::Time t0 = impl_->clock_->Now();
    auto self = shared_from_this();
    attempt_(e->channel, raw, [self, e, raw, connected, t0](grpc::Status status) {
      absl::Duration latency = self->impl_->clock_->Now() - t0;
      if (self->impl_->FinishAttempt(self->p_, *e, connected, *raw, latency, status)) {
        self->Next();
      } else {
        self->done_(self->p_.Outcome());
      }
    });
  }

  Impl* const impl_;
  Prepared p_;
  AsyncAttempt attempt_;
  std::function<void(absl::Status)> done_;
  std::shared_ptr<const ServiceView> view_;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts_;
};

void Client::Impl::CallAsync(absl::string_view name, const CallOptions& options,
                             AsyncAttempt attempt, std::function<void(absl::Status)> done) {
  absl::StatusOr<Prepared> prepared = Prepare(name, options);
  if (!prepared.ok()) {
    done(prepared.status());
    return;
  }
  std::make_shared<AsyncCall>(this, *std::move(prepared), std::move(attempt), std::move(done))
      ->Start();
}

namespace {

absl::Status CheckOptions(const ClientOptions& options) {
  for (const auto& [service, policy] : options.policies) {
    absl::StatusOr<Policy> parsed = ParsePolicy(policy);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ClientOptions.policies[", service, "]: ", parsed.status().message()));
    }
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("ClientOptions.max_attempts must be at least 1");
  }
  if (options.default_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.default_timeout must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options, Discovery* discovery,
                                                       Clock* clock) {
  if (discovery == nullptr) {
    return absl::InvalidArgumentError("rpc::Client needs a Discovery");
  }
  if (absl::Status st = CheckOptions(options); !st.ok()) return st;
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(
      std::move(options), discovery, clock != nullptr ? clock : Clock::Real(), nullptr)));
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options,
                                                       registry::Client* registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("rpc::Client needs a registry::Client");
  }
  if (absl::Status st = CheckOptions(options); !st.ok()) return st;
  auto discovery = std::make_unique<RegistryDiscovery>(registry);
  Discovery* raw = discovery.get();
  std::unique_ptr<Client> client(new Client(
      std::make_unique<Impl>(std::move(options), raw, Clock::Real(), std::move(discovery))));
  client->registry_ = registry;
  return client;
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::Status Client::Call(absl::string_view service, const CallOptions& options,
                          const Attempt& attempt) {
  return impl_->Call(service, options, [&attempt](Endpoint& e, grpc::ClientContext* context) {
    return attempt(e.channel, context);
  });
}

absl::Status Client::CallOnStub(
    absl::string_view service, const CallOptions& options, StubMaker make,
    const std::function<grpc::Status(void* stub, grpc::ClientContext* context)>& attempt) {
  return impl_->Call(service, options, [&](Endpoint& e, grpc::ClientContext* context) {
    return attempt(e.Stub(make), context);
  });
}

void Client::CallAsync(absl::string_view service, const CallOptions& options, AsyncAttempt attempt,
                       std::function<void(absl::Status)> done) {
  impl_->CallAsync(service, options, std::move(attempt), std::move(done));
}

}  // namespace formica::rpc
