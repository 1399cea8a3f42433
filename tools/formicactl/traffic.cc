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
#include "formica/registry/v1/registry.grpc.pb.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "traffic.h"

namespace formica::ctl {
namespace {

namespace v1 = formica::rpc::v1;

// The tag keys providers are grouped by: --by, else the route's, else color.
std::vector<std::string> GroupKeys(const Flags& flags, const std::vector<rpc::TagRoute>& routes) {
  std::vector<std::string> keys;
  for (absl::string_view k : absl::StrSplit(flags.by, ',', absl::SkipWhitespace())) {
    keys.emplace_back(k);
  }
  if (!keys.empty()) return keys;
  for (const rpc::TagRoute& r : routes) {
    if (std::find(keys.begin(), keys.end(), r.key) == keys.end()) keys.push_back(r.key);
  }
  if (keys.empty()) keys.push_back("color");
  return keys;
}

std::string GroupOf(const ProviderInfo& p, const std::vector<std::string>& keys) {
  std::vector<std::string> parts;
  for (const std::string& k : keys) {
    auto it = p.tags.find(k);
    parts.push_back(absl::StrCat(k, "=", it == p.tags.end() ? "-" : it->second));
  }
  return absl::StrJoin(parts, ",");
}

// What each provider served, kept between refreshes of --watch.
using Served = std::map<std::string, rpc::CallSeries>;

absl::StatusOr<v1::TrafficView> BuildView(const Flags& flags, TrafficLink& link,
                                          const std::string& service, Served* before) {
  absl::StatusOr<std::vector<ProviderInfo>> providers = link.Providers(service);
  if (!providers.ok()) return providers.status();
  absl::StatusOr<Entry> route = link.Get(RouteKey(service));
  if (!route.ok()) return route.status();
  absl::StatusOr<std::vector<rpc::TagRoute>> routes = rpc::ParseTagRoutes(route->value);
  if (!routes.ok()) routes = std::vector<rpc::TagRoute>{};  // callers ignore it too
  v1::TrafficView view;
  view.set_service(service);
  view.set_route(route->value);
  view.set_route_version(route->version);
  std::vector<std::string> keys = GroupKeys(flags, *routes);
  std::vector<double> shares = Shares(*providers, *routes);
  std::map<std::string, v1::TrafficGroup> groups;
  std::map<std::string, rpc::CallSeries> group_served;
  for (size_t i = 0; i < providers->size(); ++i) {
    const ProviderInfo& p = (*providers)[i];
    std::string name = GroupOf(p, keys);
    v1::TrafficGroup& g = groups[name];
    g.set_group(name);
    g.set_share_percent(g.share_percent() + shares[i]);
    g.set_instances(g.instances() + 1);
    g.add_addresses(p.address);
    if (link.Healthy(p.address)) g.set_healthy(g.healthy() + 1);
    absl::StatusOr<rpc::CallSeries> served = link.Served(p.address, service);
    if (!served.ok()) continue;
    rpc::CallSeries delta = *served;
    if (before != nullptr) {
      auto it = before->find(p.address);
      if (it != before->end()) delta = served->Minus(it->second);
      (*before)[p.address] = *served;
    }
    group_served[name].Add(delta);
  }
  for (auto& [name, g] : groups) {
    const rpc::CallSeries& s = group_served[name];
    g.set_calls(s.calls());
    g.set_failures(s.failures());
    g.set_p99_ms(rpc::LatencyQuantileMs(s, 0.99));
    *view.add_groups() = g;
  }
  absl::StatusOr<Entry> shift = link.Get(ShiftKey(service));
  if (shift.ok() && shift->version != 0) {
    (void)google::protobuf::util::JsonStringToMessage(shift->value, view.mutable_shift());
  }
  return view;
}

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
        grpc::CreateChannel(flags.registry, grpc::InsecureChannelCredentials()));
    formica::registry::v1::ListServicesResponse r;
    grpc::Status s = stub->ListServices(CallContext(flags).get(), {}, &r);
    if (!s.ok()) return Fail(s);
    for (const auto& svc : r.services()) {
      if (svc.instances() > 0) services.push_back(svc.service());
    }
  }
  std::map<std::string, Served> served;
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

// A shift under way owns the route: a hand-made change would fight it.
absl::Status CheckNoShift(TrafficLink& link, const std::string& service) {
  absl::StatusOr<Entry> shift = link.Get(ShiftKey(service));
  if (!shift.ok()) return shift.status();
  if (shift->version == 0) return absl::OkStatus();
  v1::TrafficShift record;
  if (!google::protobuf::util::JsonStringToMessage(shift->value, &record).ok()) {
    return absl::OkStatus();
  }
  if (record.state() == "running" || record.state() == "paused" || record.state() == "aborting") {
    return absl::FailedPreconditionError(absl::StrCat(
        "a shift of ", service, " to ", record.target(), " is ", record.state(), " at ",
        record.target_percent(), "%; abort it first (formicactl traffic abort ", service, ")"));
  }
  return absl::OkStatus();
}

int Set(const Flags& flags, const std::string& service, const std::string& text) {
  absl::StatusOr<std::vector<rpc::TagRoute>> routes = rpc::ParseTagRoutes(text);
  if (!routes.ok()) return FailWith(routes.status());
  if (routes->empty()) {
    return FailWith(absl::InvalidArgumentError(
        absl::StrCat("the route is empty; to remove it: formicactl traffic clear ", service)));
  }
  TrafficLink link(flags);
  absl::StatusOr<std::vector<ProviderInfo>> providers = link.Providers(service);
  if (!providers.ok()) return FailWith(providers.status());
  if (absl::Status st = CheckRoutes(service, *routes, *providers); !st.ok()) return FailWith(st);
  if (absl::Status st = CheckNoShift(link, service); !st.ok()) return FailWith(st);
  absl::StatusOr<Entry> current = link.Get(RouteKey(service));
  if (!current.ok()) return FailWith(current.status());
  uint64_t expected = flags.expect_version.value_or(current->version);
  std::string next = rpc::FormatTagRoutes(*routes);
  absl::StatusOr<uint64_t> version = link.Put(RouteKey(service), next, expected);
  if (absl::IsFailedPrecondition(version.status())) {
    absl::StatusOr<Entry> now = link.Get(RouteKey(service));
    return FailWith(absl::FailedPreconditionError(absl::StrCat(
        "the route of ", service, " is no longer at version ", expected, " (now ",
        now.ok() ? absl::StrCat("version ", now->version, ": '", now->value, "'") : "unknown",
        "); nothing changed: look (formicactl traffic view ", service, ") and set it again")));
  }
  if (!version.ok()) return FailWith(version.status());
  std::printf("%s route: %s -> %s (version %llu)\n", service.c_str(),
              current->value.empty() ? "none" : current->value.c_str(), next.c_str(),
              static_cast<unsigned long long>(*version));
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
