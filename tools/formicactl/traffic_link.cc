// formicactl: what the traffic commands share (traffic.h): the registry and
// the providers as they see them, and the arithmetic of routes and shares.
#include <grpcpp/grpcpp.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/credentials.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "formica/rpc/v1/rpc.grpc.pb.h"
#include "traffic.h"

namespace formica::ctl {
namespace reg = formica::registry::v1;

bool ProviderInfo::Carries(const std::string& key, const std::string& value) const {
  auto it = tags.find(key);
  return it != tags.end() && it->second == value;
}

class TrafficLink::Impl {
 public:
  explicit Impl(const Flags& f)
      : flags(f),
        registry(reg::Registry::NewStub(
            grpc::CreateChannel(f.registry, formica::ChannelCredentials()))) {}

  std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address) {
    auto& channel = channels[address];
    if (channel == nullptr) {
      channel = grpc::CreateChannel(address, formica::ChannelCredentials());
    }
    return channel;
  }

  const Flags& flags;
  std::unique_ptr<PrometheusSource> prometheus;  // null: the providers' Stats
  std::unique_ptr<reg::Registry::Stub> registry;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels;
};

TrafficLink::TrafficLink(const Flags& flags) : impl_(std::make_unique<Impl>(flags)) {}
TrafficLink::~TrafficLink() = default;

absl::StatusOr<std::vector<ProviderInfo>> TrafficLink::Providers(const std::string& service) {
  reg::GetServiceRequest request;
  request.set_service(service);
  reg::ServiceSnapshot snapshot;
  grpc::Status st =
      impl_->registry->GetService(CallContext(impl_->flags).get(), request, &snapshot);
  if (!st.ok() && st.error_code() != grpc::StatusCode::NOT_FOUND) return FromGrpcStatus(st);
  std::vector<ProviderInfo> out;
  for (const auto& i : snapshot.instances()) {
    ProviderInfo p;
    p.address = i.address();
    p.zone = i.zone();
    p.weight = i.weight();
    p.tags.insert(i.tags().begin(), i.tags().end());
    out.push_back(std::move(p));
  }
  if (out.empty()) {
    return absl::NotFoundError(absl::StrCat("the registry lists no provider of '", service, "'"));
  }
  return out;
}

absl::StatusOr<Entry> TrafficLink::Get(const std::string& key) {
  reg::GetConfigRequest request;
  request.set_key(key);
  reg::ConfigEntry entry;
  grpc::Status st = impl_->registry->GetConfig(CallContext(impl_->flags).get(), request, &entry);
  if (st.error_code() == grpc::StatusCode::NOT_FOUND) return Entry{};
  if (!st.ok()) return FromGrpcStatus(st);
  if (!entry.exists()) return Entry{};
  return Entry{entry.value(), entry.version()};
}

absl::StatusOr<uint64_t> TrafficLink::Put(const std::string& key, const std::string& value,
                                          uint64_t expected_version) {
  reg::PutConfigRequest request;
  request.set_key(key);
  request.set_value(value);
  request.set_expected_version(expected_version);
  reg::PutConfigResponse response;
  grpc::Status st = impl_->registry->PutConfig(CallContext(impl_->flags).get(), request, &response);
  if (!st.ok()) return FromGrpcStatus(st);
  return response.entry().version();
}

absl::Status TrafficLink::Delete(const std::string& key, uint64_t expected_version) {
  reg::DeleteConfigRequest request;
  request.set_key(key);
  request.set_expected_version(expected_version);
  reg::DeleteConfigResponse response;
  grpc::Status st =
      impl_->registry->DeleteConfig(CallContext(impl_->flags).get(), request, &response);
  return st.ok() ? absl::OkStatus() : FromGrpcStatus(st);
}

absl::Status TrafficLink::UseAnalysis(const std::string& source) {
  if (absl::Status st = CheckAnalysisSource(source); !st.ok()) return st;
  impl_->prometheus = source.empty() ? nullptr
                                     : std::make_unique<PrometheusSource>(
                                           source, absl::Seconds(impl_->flags.timeout_s));
  return absl::OkStatus();
}

absl::StatusOr<rpc::CallSeries> TrafficLink::Served(const std::string& address,
                                                    const std::string& service) {
  if (impl_->prometheus != nullptr) return impl_->prometheus->Served(address, service);
  auto stub = formica::rpc::v1::Stats::NewStub(impl_->ChannelTo(address));
  formica::rpc::v1::GetStatsRequest request;
  request.set_service(service);
  formica::rpc::v1::StatsReply reply;
  grpc::Status st = stub->GetStats(CallContext(impl_->flags).get(), request, &reply);
  if (!st.ok()) {
    absl::Status s = FromGrpcStatus(st);
    return absl::Status(s.code(), absl::StrCat("provider ", address, ": ", s.message()));
  }
  rpc::CallSeries total;
  total.service = service;
  total.provider = address;
  for (const auto& s : reply.series()) {
    if (s.side() != "server" || s.service() != service) continue;
    rpc::CallSeries one;
    for (const auto& [code, calls] : s.calls_by_code()) {
      if (code >= 0 && code < rpc::kStatusCodes) one.calls_by_code[code] = calls;
    }
    for (int i = 0; i < s.latency_buckets_size() && i < rpc::kLatencyBuckets; ++i) {
      one.latency_buckets[i] = s.latency_buckets(i);
    }
    one.latency_sum_us = s.latency_sum_us();
    total.Add(one);
  }
  return total;
}

bool TrafficLink::Healthy(const std::string& address) {
  int code = 0;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return CheckHealth(impl_->ChannelTo(address), "", &ctx, &code).ok() && code == 1;
}

std::string RouteKey(const std::string& service) { return "rpc/routes/" + service; }
std::string ShiftKey(const std::string& service) { return "rpc/shifts/" + service; }

std::vector<double> Shares(const std::vector<ProviderInfo>& providers,
                           const std::vector<rpc::TagRoute>& routes) {
  std::vector<double> share(providers.size(), 0);
  // Spreads `percent` over `members` by weight (evenly when all weigh 0).
  auto spread = [&](const std::vector<size_t>& members, double percent) {
    double total = 0;
    for (size_t i : members) total += providers[i].weight;
    for (size_t i : members) {
      share[i] += total > 0 ? percent * providers[i].weight / total : percent / members.size();
    }
  };
  std::vector<size_t> everyone;
  for (size_t i = 0; i < providers.size(); ++i) everyone.push_back(i);
  if (routes.empty()) {
    spread(everyone, 100);
    return share;
  }
  for (const rpc::TagRoute& r : routes) {
    std::vector<size_t> members;
    for (size_t i : everyone) {
      if (providers[i].Carries(r.key, r.value)) members.push_back(i);
    }
    spread(members.empty() ? everyone : members, r.percent);
  }
  return share;
}

absl::Status CheckRoutes(const std::string& service, const std::vector<rpc::TagRoute>& routes,
                         const std::vector<ProviderInfo>& providers) {
  std::set<std::string> seen;
  for (const rpc::TagRoute& r : routes) {
    std::string tag = absl::StrCat(r.key, "=", r.value);
    if (!seen.insert(tag).second) {
      return absl::InvalidArgumentError(absl::StrCat("tag ", tag, " is given twice"));
    }
  }
  std::vector<std::string> missing;
  for (const rpc::TagRoute& r : routes) {
    bool carried = false;
    for (const ProviderInfo& p : providers) carried = carried || p.Carries(r.key, r.value);
    if (!carried && r.percent > 0) missing.push_back(absl::StrCat(r.key, "=", r.value));
  }
  if (missing.empty()) return absl::OkStatus();
  std::map<std::string, int> carried;  // "key=value" -> providers
  for (const ProviderInfo& p : providers) {
    for (const auto& [k, v] : p.tags) ++carried[absl::StrCat(k, "=", v)];
  }
  std::vector<std::string> have;
  for (const auto& [tag, n] : carried) have.push_back(absl::StrCat(tag, " (", n, ")"));
  return absl::InvalidArgumentError(
      absl::StrCat("no provider of ", service, " carries ", absl::StrJoin(missing, ", "),
                   "; their tags: ", have.empty() ? "none" : absl::StrJoin(have, ", ")));
}

// What each provider served so far, by address (providers that do not
// answer are left out).
Served ReadServed(TrafficLink& link, const std::string& service,
                  const std::vector<ProviderInfo>& providers, absl::Status* problem) {
  Served out;
  for (const ProviderInfo& p : providers) {
    absl::StatusOr<rpc::CallSeries> s = link.Served(p.address, service);
    if (s.ok()) {
      out[p.address] = *s;
    } else if (problem != nullptr && problem->ok() && !absl::IsNotFound(s.status())) {
      *problem = s.status();
    }
  }
  return out;
}

Analysis Analyse(const Thresholds& limits, const std::string& key, const std::string& value,
                 const std::vector<ProviderInfo>& providers, const std::vector<Served>& readings,
                 const Served& after) {
  static const Served kNone;
  // What each side served since `reading`.
  auto since = [&](const Served& reading, bool target_side) {
    rpc::CallSeries out;
    for (const ProviderInfo& p : providers) {
      if (p.Carries(key, value) != target_side) continue;
      auto a = after.find(p.address);
      if (a == after.end()) continue;
      auto b = reading.find(p.address);
      out.Add(b == reading.end() ? a->second : a->second.Minus(b->second));
    }
    return out;
  };
  const Served& start = readings.empty() ? kNone : readings.back();
  rpc::CallSeries target = since(start, true);
  rpc::CallSeries source = since(start, false);
  // The others' p99 over at least as many calls as the target's: the
  // window, widened back over earlier readings while it has fewer. A p99
  // of a small sample is close to its slowest call, so comparing a thin
  // baseline with a full window would blame the target for the load the
  // machine had, not for being slower.
  rpc::CallSeries baseline = source;
  for (size_t k = readings.size(); k-- > 1 && baseline.calls() < target.calls();) {
    baseline = since(readings[k - 1], false);
  }
  auto rate = [](const rpc::CallSeries& s) {
    return s.calls() == 0 ? 0.0 : 100.0 * s.failures() / s.calls();
  };
  double tp99 = rpc::LatencyQuantileMs(target, 0.99);
  double sp99 = rpc::LatencyQuantileMs(baseline, 0.99);
  Analysis a;
  a.summary = absl::StrFormat(
      "target %llu calls, %.2f%% failed, p99 %.2f ms; others %llu calls, %.2f%% failed, p99 "
      "%.2f ms",
      static_cast<unsigned long long>(target.calls()), rate(target), tp99,
      static_cast<unsigned long long>(source.calls()), rate(source), sp99);
  if (baseline.calls() != source.calls()) {
    a.summary += absl::StrFormat(" (over their last %llu calls)",
                                 static_cast<unsigned long long>(baseline.calls()));
  }
  if (target.calls() < static_cast<uint64_t>(limits.min_calls)) {
    a.verdict = Verdict::kNoData;
    a.summary =
        absl::StrCat("not judged, fewer than ", limits.min_calls, " target calls: ", a.summary);
    return a;
  }
  if (rate(target) - rate(source) > limits.max_failure_rate_increase) {
    a.verdict = Verdict::kFail;
    a.summary = absl::StrFormat(
        "target failed %.2f%% of calls, %.2f points over the others (limit %g): %s", rate(target),
        rate(target) - rate(source), limits.max_failure_rate_increase, a.summary);
    return a;
  }
  if (baseline.calls() >= static_cast<uint64_t>(limits.min_calls) &&
      tp99 > sp99 * limits.max_p99_ratio && tp99 - sp99 > limits.p99_slack_ms) {
    a.verdict = Verdict::kFail;
    a.summary = absl::StrFormat("target p99 %.2f ms is over %gx the others' %.2f ms: %s", tp99,
                                limits.max_p99_ratio, sp99, a.summary);
    return a;
  }
  a.verdict = Verdict::kPass;
  return a;
}

Analysis AnalysePerRoom(const Thresholds& limits, const std::string& room_key,
                        const std::string& key, const std::string& value,
                        const std::vector<ProviderInfo>& providers,
                        const std::vector<Served>& readings, const Served& after) {
  if (room_key.empty()) return Analyse(limits, key, value, providers, readings, after);
  auto room_of = [&](const ProviderInfo& p) {
    auto it = p.tags.find(room_key);
    if (it != p.tags.end()) return it->second;
    return room_key == "zone" && !p.zone.empty() ? p.zone : std::string("-");
  };
  std::map<std::string, std::vector<ProviderInfo>> rooms;
  std::map<std::string, bool> has_target;
  for (const ProviderInfo& p : providers) {
    rooms[room_of(p)].push_back(p);
    has_target[room_of(p)] = has_target[room_of(p)] || p.Carries(key, value);
  }
  Analysis out;
  out.verdict = Verdict::kPass;
  std::vector<std::string> parts;
  for (auto& [room, members] : rooms) {
    if (!has_target[room]) continue;
    bool has_others = false;
    for (const ProviderInfo& p : members) has_others = has_others || !p.Carries(key, value);
    if (!has_others) {  // judged against every other provider
      for (const ProviderInfo& p : providers) {
        if (room_of(p) != room && !p.Carries(key, value)) members.push_back(p);
      }
    }
    Analysis a = Analyse(limits, key, value, members, readings, after);
    std::string part = absl::StrCat(room_key, "=", room, ": ", a.summary);
    if (a.verdict == Verdict::kFail && out.verdict != Verdict::kFail) {
      out.verdict = Verdict::kFail;
      parts.insert(parts.begin(), part);
      continue;
    }
    if (a.verdict == Verdict::kNoData && out.verdict == Verdict::kPass) {
      out.verdict = Verdict::kNoData;
    }
    parts.push_back(part);
  }
  if (parts.empty()) {
    out.verdict = Verdict::kNoData;
    parts.push_back(absl::StrCat("no provider carries ", key, "=", value));
  }
  out.summary = absl::StrJoin(parts, " | ");
  return out;
}

int FailWith(const absl::Status& status) {
  std::fprintf(stderr, "formicactl: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace formica::ctl
