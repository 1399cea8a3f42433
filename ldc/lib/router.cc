// ldc::Router: applies the rules pushed by the registry, admits writes, and
// reports the applied version through the registry session.
#include "formica/ldc/router.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "formica/internal/address.h"
#include "formica/internal/names.h"
#include "formica/internal/process_metrics.h"
#include "formica/registry/client.h"

namespace formica::ldc {
namespace {

// The rules version this process applied and reported last (the newest over
// its routers), for the metrics (docs/metrics.md).
std::atomic<uint64_t>& AppliedVersionGauge() {
  static std::atomic<uint64_t>* version = [] {
    auto* v = new std::atomic<uint64_t>(0);
    AddProcessMetricsSource([v](PrometheusText& out) {
      out.Gauge("formica_ldc_rules_version",
                "The LDC rules version this process applied and reported (0: none yet).",
                static_cast<double>(v->load(std::memory_order_relaxed)));
    });
    return v;
  }();
  return *version;
}

}  // namespace

namespace {

std::string DefaultInstanceId() {
  static std::atomic<int> next{0};
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
  std::string clean;
  for (char c : std::string(host)) {
    clean.push_back(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ? c : '-');
  }
  if (clean.empty()) clean = "host";
  return absl::StrCat(clean, "-", getpid(), "-", next.fetch_add(1));
}

}  // namespace

class Router::Impl {
 public:
  Impl(registry::Client* registry, RouterOptions options)
      : registry_(registry), options_(std::move(options)) {}

  ~Impl() { Stop(); }

  void Stop() {
    if (watch_id_ != 0) {
      registry_->Unwatch(watch_id_);
      watch_id_ = 0;
    }
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (reporter_.joinable()) reporter_.join();
    if (registry_ != nullptr && published_) {
      (void)registry_->Unpublish(kClientsService, ReportAddress());
    }
  }

  std::string ReportAddress() const { return absl::StrCat(options_.instance_id, ":1"); }

  // A pushed (or re-read) version of the rules entry.
  void Apply(const registry::ConfigValue& value) {
    if (!value.exists) {
      SPDLOG_WARN("ldc: the rules entry '{}' is missing at version {}; keeping version {}",
                  kRulesKey, value.version, version());
      return;
    }
    absl::StatusOr<RuleSet> rules = ParseRules(value.value, kRulesKey);
    if (!rules.ok()) {
      SPDLOG_ERROR("ldc: rules version {} refused, keeping version {}: {}", value.version,
                   version(), std::string(rules.status().message()));
      return;
    }
    ApplyRules(std::make_shared<const RuleSet>(std::move(*rules)), value.version);
  }

  void ApplyRules(std::shared_ptr<const RuleSet> rules, uint64_t version) {
    // Pushes (dispatch thread) and re-reads (reporter) may both apply: the
    // callbacks run one at a time, in version order.
    absl::MutexLock callbacks_lock(&callback_mu_);
    std::map<uint64_t, ChangeCallback> callbacks;
    {
      absl::MutexLock lock(&mu_);
      if (version <= version_) return;
      if (rules->FindZone(options_.zone) == nullptr) {
        SPDLOG_WARN("ldc: rules version {} do not list this process's zone '{}'", version,
                    options_.zone);
      }
      rules_ = rules;
      version_ = version;
      callbacks = callbacks_;
    }
    for (auto& [id, cb] : callbacks) cb(version, *rules);
  }

  // The reporter: publishes the applied version once older writes drained,
  // then re-reads the entry so a version put meanwhile is never missed.
  void Report() {
    while (true) {
      uint64_t target = 0;
      {
        absl::MutexLock lock(&mu_);
        auto need = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || (version_ != 0 && (reported_ != version_ || recheck_));
        };
        mu_.Await(absl::Condition(&need));
        if (stopping_) return;
        target = version_;
        recheck_ = false;
        auto drained = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || permits_.empty() || permits_.begin()->first >= target;
        };
        mu_.Await(absl::Condition(&drained));
        if (stopping_) return;
      }
      registry::Instance report;
      report.service = kClientsService;
      report.address = ReportAddress();
      report.zone = options_.zone;
      report.weight = 0;
      report.metadata["applied_version"] = absl::StrCat(target);
      report.metadata["client"] = options_.client_name;
      absl::Status st = registry_->Publish(report);
      uint64_t session = registry_->session_id();
      absl::StatusOr<registry::ConfigValue> current =
          st.ok() ? registry_->GetConfig(kRulesKey) : absl::StatusOr<registry::ConfigValue>(st);
      if (!current.ok()) {
        SPDLOG_WARN("ldc: cannot report rules version {} yet: {}", target,
                    std::string(current.status().message()));
        absl::MutexLock lock(&mu_);
        recheck_ = true;
        mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(200));
        continue;
      }
      published_ = true;
      if (current->exists && current->version > target) {
        Apply(*current);  // newer than what was reported: apply, report again
        continue;
      }
      absl::MutexLock lock(&mu_);
      if (version_ == target) {
        reported_ = target;
        reported_session_ = session;
        AppliedVersionGauge().store(target, std::memory_order_relaxed);
      }
    }
  }

  // Whether this process's rules are confirmed on its live registry session.
  bool ConfirmedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (registry_ == nullptr) return version_ != 0;
    if (reported_ != version_ || version_ == 0) return false;
    // One reading of the session: connected, its id and its lease agree.
    registry::Client::SessionView session = registry_->session();
    if (!session.connected || session.id != reported_session_) {
      recheck_ = true;  // a new session: report again before writing
      return false;
    }
    // Past the session's lease (this process was paused, or the registry
    // went silent): a switch may have gone on without this process, whose
    // session it saw lapse. Nothing is admitted until a session is back.
    // The monotonic clock: a step of the wall clock extends no lease.
    return std::chrono::steady_clock::now() < session.lease_valid_until;
  }

  absl::StatusOr<Router::WritePermit> Admit(Router* router, int shard, absl::Time deadline) {
    if (shard < 0 || shard >= kUserShards) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", shard, " is not within 00-99"));
    }
    absl::MutexLock lock(&mu_);
    std::string waiting;
    while (true) {
      if (version_ == 0) {
        waiting = "no LDC rules applied yet";
      } else if (!ConfirmedLocked()) {
        waiting = absl::StrCat("rules version ", version_,
                               " not yet confirmed by the registry on this process's session");
      } else {
        const std::string& owner = rules_->owner[shard];
        if (owner != options_.zone) {
          if (rules_->fenced.count(shard) == 0) {
            return absl::FailedPreconditionError(absl::StrFormat(
                "shard %02d is owned by zone %s (rules version %d); this process is in zone %s",
                shard, owner, version_, options_.zone));
          }
        }
        if (rules_->fenced.count(shard) == 0) {
          ++permits_[version_];
          return Router::WritePermit(router, version_);
        }
        waiting = absl::StrFormat("shard %02d is fenced while it moves (rules version %d)", shard,
                                  version_);
      }
      absl::Time now = absl::Now();
      if (now >= deadline) {
        return absl::UnavailableError(absl::StrCat(waiting, "; retry"));
      }
      // Registry connectivity is polled; rule changes wake the wait at once.
      uint64_t seen = version_;
      uint64_t seen_reported = reported_;
      auto moved = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return version_ != seen || reported_ != seen_reported;
      };
      mu_.AwaitWithDeadline(absl::Condition(&moved),
                            std::min(deadline, now + absl::Milliseconds(20)));
    }
  }

  void Release(uint64_t version) {
    absl::MutexLock lock(&mu_);
    auto it = permits_.find(version);
    if (it != permits_.end() && --it->second == 0) permits_.erase(it);
  }

  registry::Client* const registry_;
  const RouterOptions options_;
  uint64_t watch_id_ = 0;
  std::thread reporter_;
  bool published_ = false;  // touched by the reporter thread and Stop after its join

  absl::Mutex callback_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // held while callbacks run
  mutable absl::Mutex mu_;
  std::shared_ptr<const RuleSet> rules_ ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reported_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t reported_session_ ABSL_GUARDED_BY(mu_) = 0;
  bool recheck_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, int> permits_ ABSL_GUARDED_BY(mu_);  // version -> writes running
  std::map<uint64_t, ChangeCallback> callbacks_ ABSL_GUARDED_BY(mu_);
  uint64_t next_callback_ ABSL_GUARDED_BY(mu_) = 1;

  uint64_t version() const {
    absl::MutexLock lock(&mu_);
    return version_;
  }
};

Router::WritePermit::WritePermit(WritePermit&& other) noexcept
    : router_(other.router_), version_(other.version_) {
  other.router_ = nullptr;
}

Router::WritePermit& Router::WritePermit::operator=(WritePermit&& other) noexcept {
  if (this != &other) {
    if (router_ != nullptr) router_->Release(version_);
    router_ = other.router_;
    version_ = other.version_;
    other.router_ = nullptr;
  }
  return *this;
}

Router::WritePermit::~WritePermit() {
  if (router_ != nullptr) router_->Release(version_);
}

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Router::~Router() { impl_->Stop(); }

absl::StatusOr<std::unique_ptr<Router>> Router::Start(registry::Client* registry,
                                                      RouterOptions options) {
  constexpr NameRule kZoneName{"zone name", 64, IsPlainNameChar, kPlainNameChars};
  if (absl::Status st = CheckName(kZoneName, options.zone); !st.ok()) return st;
  if (registry == nullptr) return absl::InvalidArgumentError("the registry client is null");
  if (options.instance_id.empty()) options.instance_id = DefaultInstanceId();
  if (absl::Status st = ValidateAddress(absl::StrCat(options.instance_id, ":1")); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("instance_id '", options.instance_id,
                     "' is not usable as a registry address: letters, digits, '.', '-' and '_'"));
  }
  std::unique_ptr<Router> router(new Router(std::make_unique<Impl>(registry, std::move(options))));
  Impl* impl = router->impl_.get();
  impl->reporter_ = std::thread([impl] { impl->Report(); });
  absl::StatusOr<uint64_t> watch =
      registry->WatchConfig(kRulesKey, [impl](const registry::ConfigValue& v) { impl->Apply(v); });
  if (!watch.ok()) return watch.status();
  impl->watch_id_ = *watch;
  return router;
}

absl::StatusOr<std::unique_ptr<Router>> Router::ForRules(RuleSet rules, uint64_t version,
                                                         std::string zone) {
  if (absl::Status st = Validate(rules); !st.ok()) return st;
  if (version == 0) return absl::InvalidArgumentError("the rules version must be positive");
  RouterOptions options;
  options.zone = std::move(zone);
  std::unique_ptr<Router> router(new Router(std::make_unique<Impl>(nullptr, std::move(options))));
  router->impl_->ApplyRules(std::make_shared<const RuleSet>(std::move(rules)), version);
  return router;
}

const std::string& Router::zone() const { return impl_->options_.zone; }

uint64_t Router::version() const { return impl_->version(); }

uint64_t Router::reported_version() const {
  absl::MutexLock lock(&impl_->mu_);
  return impl_->registry_ == nullptr ? impl_->version_ : impl_->reported_;
}

std::shared_ptr<const RuleSet> Router::rules() const {
  absl::MutexLock lock(&impl_->mu_);
  return impl_->rules_;
}

absl::Status Router::AwaitRules(absl::Duration timeout) const { return AwaitVersion(1, timeout); }

absl::Status Router::AwaitVersion(uint64_t version, absl::Duration timeout) const {
  absl::MutexLock lock(&impl_->mu_);
  auto ready = [this, version]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(impl_->mu_) { return impl_->version_ >= version; };
  if (!impl_->mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("LDC rules version ", version, " not applied within ",
                     absl::FormatDuration(timeout), " (have ", impl_->version_, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Route> Router::RouteShard(int shard) const {
  if (shard < 0 || shard >= kUserShards) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", shard, " is not within 00-99"));
  }
  absl::MutexLock lock(&impl_->mu_);
  if (impl_->rules_ == nullptr) return absl::UnavailableError("no LDC rules applied yet");
  Route route;
  route.shard = shard;
  route.owner = impl_->rules_->owner[shard];
  route.fenced = impl_->rules_->fenced.count(shard) > 0;
  route.local = route.owner == impl_->options_.zone;
  route.version = impl_->version_;
  return route;
}

absl::StatusOr<Route> Router::RouteUser(absl::string_view user_id) const {
  absl::StatusOr<int> shard = UserShard(user_id);
  if (!shard.ok()) return shard.status();
  return RouteShard(*shard);
}

absl::StatusOr<std::string> Router::ZoneForUser(absl::string_view user_id) const {
  if (user_id.empty()) return zone();
  absl::StatusOr<Route> route = RouteUser(user_id);
  if (!route.ok()) return route.status();
  return route->owner;
}

absl::StatusOr<Router::WritePermit> Router::AdmitWrite(int shard, absl::Time deadline) {
  return impl_->Admit(this, shard, deadline);
}

absl::StatusOr<Router::WritePermit> Router::AdmitUserWrite(absl::string_view user_id,
                                                           absl::Time deadline) {
  absl::StatusOr<int> shard = UserShard(user_id);
  if (!shard.ok()) return shard.status();
  return AdmitWrite(*shard, deadline);
}

uint64_t Router::OnChange(ChangeCallback callback) {
  absl::MutexLock callbacks_lock(&impl_->callback_mu_);
  std::shared_ptr<const RuleSet> rules;
  uint64_t version = 0;
  uint64_t id = 0;
  {
    absl::MutexLock lock(&impl_->mu_);
    id = impl_->next_callback_++;
    impl_->callbacks_[id] = callback;
    rules = impl_->rules_;
    version = impl_->version_;
  }
  if (rules != nullptr) callback(version, *rules);
  return id;
}

void Router::RemoveCallback(uint64_t id) {
  absl::MutexLock callbacks_lock(&impl_->callback_mu_);
  absl::MutexLock lock(&impl_->mu_);
  impl_->callbacks_.erase(id);
}

void Router::Release(uint64_t version) { impl_->Release(version); }

}  // namespace formica::ldc
