// What formicactl's traffic commands and the console share to change a
// route (traffic.h): the view of a service's traffic, the checks before a write, the route a
// shift's step sets, and the compare-and-set write itself.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "traffic.h"

namespace formica::ctl {

namespace v1 = formica::rpc::v1;

namespace {

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

}  // namespace

absl::StatusOr<v1::TrafficView> BuildView(const Flags& flags, TrafficLink& link,
                                          const std::string& service,
                                          std::map<std::string, rpc::CallSeries>* before) {
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

// The route with `percent` of the calls on target (key=value) and the rest
// on the key's other values, in proportion to their shares under `original`.
std::string StepRoute(const std::vector<ProviderInfo>& providers,
                      const std::vector<rpc::TagRoute>& original, const std::string& key,
                      const std::string& value, int percent) {
  std::vector<double> shares = Shares(providers, original);
  std::map<std::string, double> source;  // other value -> share under the original route
  for (size_t i = 0; i < providers.size(); ++i) {
    auto it = providers[i].tags.find(key);
    if (it == providers[i].tags.end() || it->second == value) continue;
    source[it->second] += shares[i];
  }
  double total = 0;
  for (const auto& [v, s] : source) total += s;
  std::vector<rpc::TagRoute> routes = {{key, value, percent}};
  int left = 100 - percent;
  if (source.empty() || left == 0) {
    routes[0].percent = 100;
    return rpc::FormatTagRoutes(routes);
  }
  // Largest remainder, so the percents add up to 100.
  std::vector<std::pair<double, std::string>> remainders;
  int given = 0;
  for (const auto& [v, s] : source) {
    double exact = total > 0 ? left * s / total : static_cast<double>(left) / source.size();
    int whole = static_cast<int>(std::floor(exact));
    routes.push_back({key, v, whole});
    given += whole;
    remainders.emplace_back(exact - whole, v);
  }
  std::sort(remainders.rbegin(), remainders.rend());
  for (size_t i = 0; given < left; ++i, ++given) {
    for (auto& r : routes) {
      if (r.value == remainders[i % remainders.size()].second && &r != &routes[0]) ++r.percent;
    }
  }
  routes.erase(std::remove_if(routes.begin() + 1, routes.end(),
                              [](const rpc::TagRoute& r) { return r.percent == 0; }),
               routes.end());
  return rpc::FormatTagRoutes(routes);
}

absl::StatusOr<RouteChange> SetRoute(TrafficLink& link, const std::string& service,
                                     const std::string& text,
                                     std::optional<uint64_t> expected_version) {
  absl::StatusOr<std::vector<rpc::TagRoute>> routes = rpc::ParseTagRoutes(text);
  if (!routes.ok()) return routes.status();
  if (routes->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the route is empty; to remove it: formicactl traffic clear ", service));
  }
  absl::StatusOr<std::vector<ProviderInfo>> providers = link.Providers(service);
  if (!providers.ok()) return providers.status();
  if (absl::Status st = CheckRoutes(service, *routes, *providers); !st.ok()) return st;
  if (absl::Status st = CheckNoShift(link, service); !st.ok()) return st;
  absl::StatusOr<Entry> current = link.Get(RouteKey(service));
  if (!current.ok()) return current.status();
  uint64_t expected = expected_version.value_or(current->version);
  std::string next = rpc::FormatTagRoutes(*routes);
  absl::StatusOr<uint64_t> version = link.Put(RouteKey(service), next, expected);
  if (absl::IsFailedPrecondition(version.status())) {
    absl::StatusOr<Entry> now = link.Get(RouteKey(service));
    return absl::FailedPreconditionError(absl::StrCat(
        "the route of ", service, " is no longer at version ", expected, " (now ",
        now.ok() ? absl::StrCat("version ", now->version, ": '", now->value, "'") : "unknown",
        "); nothing changed: look (formicactl traffic view ", service, ") and set it again"));
  }
  if (!version.ok()) return version.status();
  return RouteChange{current->value, next, *version};
}

absl::StatusOr<RouteChange> ShiftRoute(TrafficLink& link, const std::string& service,
                                       const std::string& target, int percent) {
  size_t eq = target.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == target.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the target '", target, "' is not key=value (e.g. color=green)"));
  }
  if (percent < 0 || percent > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("the percent ", percent, " is not between 0 and 100"));
  }
  std::string key = target.substr(0, eq);
  std::string value = target.substr(eq + 1);
  absl::StatusOr<std::vector<ProviderInfo>> providers = link.Providers(service);
  if (!providers.ok()) return providers.status();
  absl::StatusOr<Entry> current = link.Get(RouteKey(service));
  if (!current.ok()) return current.status();
  absl::StatusOr<std::vector<rpc::TagRoute>> original = rpc::ParseTagRoutes(current->value);
  if (!original.ok()) original = std::vector<rpc::TagRoute>{};
  return SetRoute(link, service, StepRoute(*providers, *original, key, value, percent),
                  current->version);
}

}  // namespace formica::ctl
