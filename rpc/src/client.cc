#include "formica/rpc/client.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <random>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "balancer.h"
#include "formica/common/grpc_status.h"
#include "formica/registry/client.h"

namespace formica::rpc {
namespace {

// One provider: its balancer state, its channel and its health.
struct Endpoint {
  registry::Instance instance;
  std::shared_ptr<EndpointState> state;
  std::shared_ptr<grpc::Channel> channel;
  std::atomic<int> consecutive_failures{0};
  std::atomic<int64_t> ejected_until_ns{0};

  bool Healthy(absl::Time now) const {
    if (absl::FromUnixNanos(ejected_until_ns.load()) > now) return false;
    // A connection that failed is out of rotation at once, before its lease.
    return channel->GetState(false) != GRPC_CHANNEL_TRANSIENT_FAILURE;
  }
};

// A tag route: a share of the calls goes to providers with tag key=value.
struct Route {
  std::string key;
  std::string value;
  int percent = 0;
};

// Parses "color=blue:90,color=green:10". Percents must add up to 100.
absl::StatusOr<std::vector<Route>> ParseRoutes(absl::string_view text) {
  std::vector<Route> routes;
  int total = 0;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    size_t eq = part.find('=');
    size_t colon = part.rfind(':');
    Route r;
    if (eq == absl::string_view::npos || colon == absl::string_view::npos || colon < eq ||
        !absl::SimpleAtoi(part.substr(colon + 1), &r.percent) || r.percent < 0 || r.percent > 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("route '", part, "' is not key=value:percent (e.g. color=blue:90)"));
    }
    r.key = std::string(part.substr(0, eq));
    r.value = std::string(part.substr(eq + 1, colon - eq - 1));
    total += r.percent;
    routes.push_back(std::move(r));
  }
  if (!routes.empty() && total != 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("route percents add up to ", total, ", not 100: '", text, "'"));
  }
  return routes;
}

// The candidates for one route: balancers over the local zone and over all.
struct Group {
  std::vector<std::shared_ptr<Endpoint>> all;
  std::vector<std::shared_ptr<Endpoint>> local;
  std::unique_ptr<Balancer> all_balancer;
  std::unique_ptr<Balancer> local_balancer;
  std::map<EndpointState*, std::shared_ptr<Endpoint>> by_state;
};

// Everything a call needs about one service, immutable once built and
// swapped whole when the registry pushes or the routes change.
struct ServiceView {
  Group everyone;
  std::vector<std::pair<Route, Group>> routes;
};

}  // namespace

class Client::Impl {
 public:
  Impl(ClientOptions options, registry::Client* registry)
      : options_(std::move(options)), registry_(registry) {}

  ~Impl() {
    std::map<std::string, std::shared_ptr<Service>, std::less<>> services;
    {
      absl::MutexLock lock(&mu_);
      services.swap(services_);
    }
    for (auto& [name, s] : services) {
      registry_->Unsubscribe(s->subscription);
      if (s->watch != 0) registry_->Unwatch(s->watch);
    }
  }

  absl::Status Call(absl::string_view service, const CallOptions& options, const Attempt& attempt);

 private:
  struct Service {
    std::string name;
    Policy policy = Policy::kWeightedRandom;
    uint64_t subscription = 0;
    uint64_t watch = 0;
    absl::Mutex mu;
    std::shared_ptr<const ServiceView> view ABSL_GUARDED_BY(mu);
    std::map<std::string, std::shared_ptr<Endpoint>> endpoints ABSL_GUARDED_BY(mu);
    std::vector<Route> routes ABSL_GUARDED_BY(mu);
    std::vector<registry::Instance> instances ABSL_GUARDED_BY(mu);
    bool has_snapshot ABSL_GUARDED_BY(mu) = false;
  };

  absl::StatusOr<std::shared_ptr<Service>> ServiceFor(absl::string_view name);
  void Rebuild(Service& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  Group MakeGroup(Service& s, const std::vector<std::shared_ptr<Endpoint>>& members)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);
  std::shared_ptr<Endpoint> Pick(const ServiceView& view, const PickContext& pick,
                                 const std::vector<Endpoint*>& tried);
  bool TakeRetryToken();
  void Record(Endpoint& e, const grpc::Status& status, absl::Duration latency);

  const ClientOptions options_;
  registry::Client* const registry_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Service>, std::less<>> services_ ABSL_GUARDED_BY(mu_);

  // Retry budget over one-second windows; lock-free on the call path.
  std::atomic<int64_t> budget_window_{0};
  std::atomic<int> calls_{0};
  std::atomic<int> retries_{0};
  void CountCall();
};

absl::StatusOr<std::shared_ptr<Client::Impl::Service>> Client::Impl::ServiceFor(
    absl::string_view name) {
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
  }
  Service* raw = s.get();
  absl::StatusOr<uint64_t> sub =
      registry_->Subscribe(name, [raw, this](const registry::ServiceSnapshot& snapshot) {
        absl::MutexLock lock(&raw->mu);
        raw->instances = snapshot.instances;
        raw->has_snapshot = true;
        Rebuild(*raw);
      });
  if (!sub.ok()) {
    absl::MutexLock lock(&mu_);
    services_.erase(std::string(name));
    return sub.status();
  }
  s->subscription = *sub;
  absl::StatusOr<uint64_t> watch = registry_->WatchConfig(
      absl::StrCat("rpc/routes/", name), [raw, this](const registry::ConfigValue& value) {
        absl::StatusOr<std::vector<Route>> routes =
            value.exists ? ParseRoutes(value.value) : std::vector<Route>{};
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
    if (!options_.zone.empty() && e->instance.zone == options_.zone) g.local.push_back(e);
  }
  auto states = [](const std::vector<std::shared_ptr<Endpoint>>& v) {
    std::vector<std::shared_ptr<EndpointState>> out;
    for (const auto& e : v) out.push_back(e->state);
    return out;
  };
  g.all_balancer = NewBalancer(s.policy, states(g.all));
  g.local_balancer = NewBalancer(s.policy, states(g.local));
  return g;
}

void Client::Impl::Rebuild(Service& s) {
  std::map<std::string, std::shared_ptr<Endpoint>> next;
  std::vector<std::shared_ptr<Endpoint>> members;
  for (const registry::Instance& inst : s.instances) {
    auto it = s.endpoints.find(inst.address);
    std::shared_ptr<Endpoint> e;
    if (it != s.endpoints.end()) {
      e = it->second;  // keep its channel, counters and health
      e->instance = inst;
      e->state->set_weight(inst.weight);
    } else {
      e = std::make_shared<Endpoint>();
      e->instance = inst;
      e->state = std::make_shared<EndpointState>(inst.address, inst.weight);
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
      e->channel =
          grpc::CreateCustomChannel(inst.address, grpc::InsecureChannelCredentials(), args);
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
      auto tag = e->instance.tags.find(r.key);
      if (tag != e->instance.tags.end() && tag->second == r.value) tagged.push_back(e);
    }
    view->routes.emplace_back(r, MakeGroup(s, tagged));
  }
  s.view = std::move(view);
}

std::shared_ptr<Endpoint> Client::Impl::Pick(const ServiceView& view, const PickContext& pick,
                                             const std::vector<Endpoint*>& tried) {
  auto was_tried = [&tried](Endpoint* e) {
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
  absl::Time now = absl::Now();
  auto try_balancer =
      [&](Balancer* b,
          const std::vector<std::shared_ptr<Endpoint>>& members) -> std::shared_ptr<Endpoint> {
    if (members.empty()) return nullptr;
    // A few picks to step over unhealthy or already-tried providers.
    for (size_t i = 0; i < std::min<size_t>(members.size() * 2, 8); ++i) {
      EndpointState* s = b->Pick(pick);
      if (s == nullptr) return nullptr;
      const auto& e = group->by_state.at(s);
      if (!was_tried(e.get()) && e->Healthy(now)) return e;
    }
    for (const auto& e : members) {
      if (!was_tried(e.get()) && e->Healthy(now)) return e;
    }
    return nullptr;
  };
  if (auto e = try_balancer(group->local_balancer.get(), group->local)) return e;
  if (auto e = try_balancer(group->all_balancer.get(), group->all)) return e;
  // Nobody healthy: probe one not tried yet rather than fail without trying.
  for (const auto& e : group->all) {
    if (!was_tried(e.get())) return e;
  }
  return nullptr;
}

void Client::Impl::CountCall() {
  int64_t window = absl::ToUnixSeconds(absl::Now());
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

void Client::Impl::Record(Endpoint& e, const grpc::Status& status, absl::Duration latency) {
  e.state->CallFinished(latency);
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
    e.ejected_until_ns.store(absl::ToUnixNanos(absl::Now() + options_.ejection_time));
  }
}

absl::Status Client::Impl::Call(absl::string_view name, const CallOptions& options,
                                const Attempt& attempt) {
  absl::Time start = absl::Now();
  absl::Duration timeout =
      options.timeout > absl::ZeroDuration() ? options.timeout : options_.default_timeout;
  absl::Time deadline = start + timeout;
  CallContext context = options.context;
  if (options.parent != nullptr) {
    deadline = std::min(deadline, absl::FromChrono(options.parent->deadline()));
    CallContext inherited = ReadCallContext(*options.parent);
    if (context.user_id.empty()) context.user_id = inherited.user_id;
    if (context.txn_id.empty()) context.txn_id = inherited.txn_id;
    if (context.traceparent.empty()) context.traceparent = inherited.traceparent;
  }
  context.traceparent = ChildTraceparent(context.traceparent);
  if (context.caller_app.empty()) context.caller_app = options_.app_name;
  if (context.zone.empty()) context.zone = options_.zone;

  absl::StatusOr<std::shared_ptr<Service>> service = ServiceFor(name);
  if (!service.ok()) return service.status();
  CountCall();
  // The first call waits for the registry's first snapshot.
  std::shared_ptr<const ServiceView> view;
  {
    Service& s = **service;
    absl::ReaderMutexLock read(&s.mu);
    if (s.has_snapshot && !s.instances.empty()) view = s.view;
  }
  if (view == nullptr) {
    Service& s = **service;
    absl::MutexLock lock(&s.mu);
    auto ready = [&s]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
      return s.has_snapshot && !s.instances.empty();
    };
    s.mu.AwaitWithDeadline(absl::Condition(&ready), deadline);
    view = s.view;
  }
  PickContext pick;
  if (!options.hash_key.empty()) pick.hash_key = HashKey(options.hash_key);

  std::vector<Endpoint*> tried;
  absl::Status last = absl::UnavailableError(
      absl::StrCat("no provider of '", name, "' is known after ", absl::FormatDuration(timeout)));
  for (int attempt_no = 0; attempt_no < std::max(1, options_.max_attempts); ++attempt_no) {
    if (view == nullptr || absl::Now() >= deadline) break;
    std::shared_ptr<Endpoint> e = Pick(*view, pick, tried);
    if (e == nullptr) break;
    tried.push_back(e.get());
    bool connected = e->channel->GetState(false) == GRPC_CHANNEL_READY;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    WriteCallContext(context, &ctx);
    e->state->CallStarted();
    absl::Time t0 = absl::Now();
    grpc::Status status = attempt(e->channel, &ctx);
    Record(*e, status, absl::Now() - t0);
    if (status.ok()) return absl::OkStatus();
    last =
        absl::Status(FromGrpcStatus(status).code(),
                     absl::StrCat(name, " at ", e->instance.address, ": ", status.error_message()));
    bool unavailable = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                       status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    // Retry when the request surely never reached the provider (no
    // connection), or when the call is idempotent and the provider failed.
    bool never_left = status.error_code() == grpc::StatusCode::UNAVAILABLE && !connected;
    if (!(never_left || (options.idempotent && unavailable))) break;
    if (attempt_no + 1 < options_.max_attempts && !TakeRetryToken()) {
      last = absl::Status(last.code(), absl::StrCat(last.message(), " (retry budget exhausted)"));
      break;
    }
  }
  return last;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options,
                                                       registry::Client* registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("rpc::Client needs a registry::Client");
  }
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
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(std::move(options), registry)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

absl::Status Client::Call(absl::string_view service, const CallOptions& options,
                          const Attempt& attempt) {
  return impl_->Call(service, options, attempt);
}

}  // namespace formica::rpc
