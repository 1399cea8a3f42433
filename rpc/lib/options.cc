// rpc.client and rpc.server sections of a service's YAML config.
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "balancer.h"
#include "formica/common/config.h"
#include "formica/internal/address.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"

namespace formica::rpc {

absl::StatusOr<ClientOptions> LoadClientOptions(const Config& config) {
  ClientOptions o;
  ConfigReader r(config, "rpc.client");
  o.app_name = r.String("rpc.client.app_name", o.app_name);
  o.zone = r.String("rpc.client.zone", o.zone);
  o.default_timeout = r.Duration("rpc.client.default_timeout", o.default_timeout,
                                 absl::Milliseconds(1), absl::Hours(1));
  o.max_attempts = static_cast<int>(r.Int("rpc.client.max_attempts", o.max_attempts, 1, 10));
  o.retry_budget_ratio = r.Int("rpc.client.retry_budget_percent",
                               static_cast<int64_t>(o.retry_budget_ratio * 100), 0, 100) /
                         100.0;
  o.min_retries_per_second = static_cast<int>(
      r.Int("rpc.client.min_retries_per_second", o.min_retries_per_second, 0, 1000000));
  o.eject_after_failures =
      static_cast<int>(r.Int("rpc.client.eject_after_failures", o.eject_after_failures, 1, 1000));
  o.ejection_time = r.Duration("rpc.client.ejection_time", o.ejection_time, absl::Milliseconds(10),
                               absl::Hours(1));
  o.count_calls = r.Bool("rpc.client.count_calls", o.count_calls);
  // "service=policy" entries: service names contain dots, so not a map.
  for (const std::string& entry : r.StringList("rpc.client.policies", {})) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      r.Fail("rpc.client.policies",
             absl::StrCat("entry '", entry,
                          "' is not service=policy (e.g. account.Balance=p2c_ewma)"));
      break;
    }
    std::string policy = entry.substr(eq + 1);
    absl::StatusOr<Policy> parsed = ParsePolicy(policy);
    if (!parsed.ok()) {
      r.Fail("rpc.client.policies", parsed.status().message());
      break;
    }
    o.policies[entry.substr(0, eq)] = policy;
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  return o;
}

absl::StatusOr<ServerOptions> LoadServerOptions(const Config& config) {
  ServerOptions o;
  ConfigReader r(config, "rpc.server");
  o.listen = r.String("rpc.server.listen", o.listen);
  o.advertise_host = r.String("rpc.server.advertise_host", o.advertise_host);
  o.zone = r.String("rpc.server.zone", o.zone);
  o.weight = static_cast<int32_t>(r.Int("rpc.server.weight", o.weight, 0, 10000));
  o.tags = r.StringMap("rpc.server.tags");
  o.warmup = r.Duration("rpc.server.warmup", o.warmup, absl::ZeroDuration(), absl::Hours(1));
  o.warmup_step = r.Duration("rpc.server.warmup_step", o.warmup_step, absl::Milliseconds(10),
                             absl::Minutes(10));
  o.unpublish_grace = r.Duration("rpc.server.unpublish_grace", o.unpublish_grace,
                                 absl::ZeroDuration(), absl::Minutes(10));
  o.drain_timeout = r.Duration("rpc.server.drain_timeout", o.drain_timeout, absl::ZeroDuration(),
                               absl::Minutes(10));
  o.max_concurrent_calls = static_cast<int>(
      r.Int("rpc.server.max_concurrent_calls", o.max_concurrent_calls, 0, 1000000));
  o.count_calls = r.Bool("rpc.server.count_calls", o.count_calls);
  o.metrics_listen = r.String("metrics.listen", o.metrics_listen);
  // "pkg.Service/Method=limit" entries.
  for (const std::string& entry : r.StringList("rpc.server.method_limits", {})) {
    size_t eq = entry.rfind('=');
    int64_t limit = -1;
    if (eq == std::string::npos || eq == 0 || entry.find('/') > eq ||
        !absl::SimpleAtoi(entry.substr(eq + 1), &limit) || limit < 0 || limit > 1000000) {
      r.Fail("rpc.server.method_limits",
             absl::StrCat("entry '", entry,
                          "' is not pkg.Service/Method=limit (e.g. fund.Trade/Buy=200)"));
      break;
    }
    o.method_limits[entry.substr(0, eq)] = static_cast<int>(limit);
  }
  // Port 0 asks the system for a free port.
  std::string listen = o.listen;
  if (listen.size() > 2 && listen.compare(listen.size() - 2, 2, ":0") == 0) {
    listen.back() = '1';
  }
  if (absl::Status st = ValidateAddress(listen); !st.ok()) {
    r.Fail("rpc.server.listen", st.message());
  }
  if (absl::Status st = ValidateAddress(absl::StrCat(o.advertise_host, ":1")); !st.ok()) {
    r.Fail("rpc.server.advertise_host", absl::StrCat("'", o.advertise_host, "' is not a host"));
  }
  if (absl::Status st = r.Finish(); !st.ok()) return st;
  return o;
}

}  // namespace formica::rpc
