// formicactl: the traffic commands view, set, clear and stats (shift and its
// controls are in traffic_shift.cc). See docs/release.md.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "formica/internal/credentials.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "traffic.h"

namespace formica::ctl {
namespace {

namespace v1 = formica::rpc::v1;

void PrintView(const v1::TrafficView& view) {
  std::printf("%s  route %s", view.service().c_str(),
              view.route().empty() ? "none (by weight)" : view.route().c_str());
  if (view.route_version() != 0) {
    std::printf(" (version %llu)", static_cast<unsigned long long>(view.route_version()));
  }
  std::printf("\n%-32s %7s %9s %7s %10s %8s %8s\n", "GROUP", "SHARE", "INSTANCES", "HEALTHY",
              "CALLS", "FAILED%", "P99_MS");
  for (const v1::TrafficGroup& g : view.groups()) {
    double failed = g.calls() == 0 ? 0 : 100.0 * g.failures() / g.calls();
    std::printf("%-32s %6.1f%% %9d %7d %10llu %8.2f %8.2f\n", g.group().c_str(), g.share_percent(),
                g.instances(), g.healthy(), static_cast<unsigned long long>(g.calls()), failed,
                g.p99_ms());
  }
  if (view.has_shift()) {
    const v1::TrafficShift& s = view.shift();
    std::printf("shift to %s: %d%%, %s (step %d%% every %s)%s%s\n", s.target().c_str(),
                s.target_percent(), s.state().c_str(), s.step_percent(),
                absl::FormatDuration(absl::Milliseconds(s.every_ms())).c_str(),
                s.message().empty() ? "" : ": ", s.message().c_str());
  }
}

int View(const Flags& flags, const std::vector<std::string>& args) {
  TrafficLink link(flags);
  std::vector<std::string> services;
  if (args.size() == 3) {
    services.push_back(args[2]);
  } else {
    auto stub = formica::registry::v1::Registry::NewStub(
        grpc::CreateChannel(flags.registry, formica::ChannelCredentials()));
    formica::registry::v1::ListServicesResponse r;
    grpc::Status s = stub->ListServices(CallContext(flags).get(), {}, &r);
    if (!s.ok()) return Fail(s);
    for (const auto& svc : r.services()) {
      if (svc.instances() > 0) services.push_back(svc.service());
    }
  }
  std::map<std::string, std::map<std::string, rpc::CallSeries>> served;
  const absl::Duration every =
      flags.every_given ? absl::Milliseconds(flags.every_ms) : absl::Seconds(2);
  for (int round = 0;; ++round) {
    std::vector<v1::TrafficView> views;
    for (const std::string& service : services) {
      absl::StatusOr<v1::TrafficView> view =
          BuildView(flags, link, service, flags.watch ? &served[service] : nullptr);
      if (!view.ok()) return FailWith(view.status());
      views.push_back(*std::move(view));
    }
    if (flags.watch && isatty(STDOUT_FILENO)) std::printf("\033[H\033[2J");
    if (flags.watch) {
      std::printf("%s  calls over the last %s\n\n",
                  absl::FormatTime("%H:%M:%S", absl::Now(), absl::UTCTimeZone()).c_str(),
                  round == 0 ? "life of each provider" : absl::FormatDuration(every).c_str());
    }
    for (const v1::TrafficView& v : views) {
      if (flags.output == Output::kJson) {
        PrintJson(v);
      } else {
        PrintView(v);
        std::printf("\n");
      }
    }
    std::fflush(stdout);
    if (!flags.watch) return 0;
    absl::SleepFor(every);
  }
}

int Set(const Flags& flags, const std::string& service, const std::string& text) {
  TrafficLink link(flags);
  absl::StatusOr<RouteChange> change = SetRoute(link, service, text, flags.expect_version);
  if (!change.ok()) return FailWith(change.status());
  std::printf("%s route: %s -> %s (version %llu)\n", service.c_str(),
              change->before.empty() ? "none" : change->before.c_str(), change->after.c_str(),
              static_cast<unsigned long long>(change->version));
  return 0;
}

int Clear(const Flags& flags, const std::string& service) {
  TrafficLink link(flags);
  if (absl::Status st = CheckNoShift(link, service); !st.ok()) return FailWith(st);
  absl::StatusOr<Entry> current = link.Get(RouteKey(service));
  if (!current.ok()) return FailWith(current.status());
  if (current->version == 0) {
    std::printf("%s has no route\n", service.c_str());
    return 0;
  }
  absl::Status st = link.Delete(RouteKey(service), flags.expect_version.value_or(current->version));
  if (!st.ok()) return FailWith(st);
  std::printf("%s route: %s -> none (calls go by weight)\n", service.c_str(),
              current->value.c_str());
  return 0;
}

int Stats(const Flags& flags, const std::string& service) {
  TrafficLink link(flags);
  absl::StatusOr<std::vector<ProviderInfo>> providers = link.Providers(service);
  if (!providers.ok()) return FailWith(providers.status());
  std::printf("%-24s %-28s %10s %9s %8s %8s %8s\n", "PROVIDER", "TAGS", "CALLS", "FAILURES",
              "FAILED%", "P50_MS", "P99_MS");
  for (const ProviderInfo& p : *providers) {
    std::vector<std::string> tags;
    for (const auto& [k, v] : p.tags) tags.push_back(absl::StrCat(k, "=", v));
    absl::StatusOr<rpc::CallSeries> s = link.Served(p.address, service);
    if (!s.ok()) {
      std::printf("%-24s %-28s %s\n", p.address.c_str(), absl::StrJoin(tags, ",").c_str(),
                  std::string(s.status().message()).c_str());
      continue;
    }
    double failed = s->calls() == 0 ? 0 : 100.0 * s->failures() / s->calls();
    std::printf("%-24s %-28s %10llu %9llu %8.2f %8.2f %8.2f\n", p.address.c_str(),
                absl::StrJoin(tags, ",").c_str(), static_cast<unsigned long long>(s->calls()),
                static_cast<unsigned long long>(s->failures()), failed,
                rpc::LatencyQuantileMs(*s, 0.5), rpc::LatencyQuantileMs(*s, 0.99));
  }
  return 0;
}

}  // namespace

int Traffic(const Flags& flags, const std::vector<std::string>& args) {
  const std::string& cmd = args[1];
  if (cmd == "view" && args.size() <= 3) return View(flags, args);
  if (cmd == "set" && args.size() == 4) return Set(flags, args[2], args[3]);
  if (cmd == "clear" && args.size() == 3) return Clear(flags, args[2]);
  if (cmd == "stats" && args.size() == 3) return Stats(flags, args[2]);
  if (cmd == "shift" || cmd == "pause" || cmd == "resume" || cmd == "abort" || cmd == "status") {
    return TrafficShift(flags, args);
  }
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

}  // namespace formica::ctl
