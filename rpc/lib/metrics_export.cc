// The process's call metrics in the Prometheus text format.
#include <grpcpp/support/status_code_enum.h>

#include "absl/strings/str_cat.h"
#include "call_stats.h"
#include "formica/internal/metrics_endpoint.h"
#include "formica/rpc/metrics.h"

namespace formica::rpc {
namespace {

const char* CodeName(int code) {
  static const char* const kNames[kStatusCodes] = {"OK",
                                                   "CANCELLED",
                                                   "UNKNOWN",
                                                   "INVALID_ARGUMENT",
                                                   "DEADLINE_EXCEEDED",
                                                   "NOT_FOUND",
                                                   "ALREADY_EXISTS",
                                                   "PERMISSION_DENIED",
                                                   "RESOURCE_EXHAUSTED",
                                                   "FAILED_PRECONDITION",
                                                   "ABORTED",
                                                   "OUT_OF_RANGE",
                                                   "UNIMPLEMENTED",
                                                   "INTERNAL",
                                                   "UNAVAILABLE",
                                                   "DATA_LOSS",
                                                   "UNAUTHENTICATED"};
  return kNames[code];
}

PrometheusText::Labels SeriesLabels(const CallSeries& s) {
  return {{"side", s.side == CallSeries::Side::kServer ? "server" : "client"},
          {"service", s.service},
          {"method", s.method},
          {"provider", s.provider}};
}

}  // namespace

std::string CallMetricsPrometheusText() {
  std::vector<CallSeries> all = CallMetricsSnapshot();
  PrometheusText out;
  out.Family("formica_rpc_calls_total", "counter",
             "Calls ended, by side (server: hosted methods; client: calls made, per service), "
             "service, method, provider and gRPC status code.");
  for (const CallSeries& s : all) {
    for (int code = 0; code < kStatusCodes; ++code) {
      if (s.calls_by_code[code] == 0) continue;
      PrometheusText::Labels labels = SeriesLabels(s);
      labels.emplace_back("code", CodeName(code));
      out.Sample("formica_rpc_calls_total", labels, static_cast<double>(s.calls_by_code[code]));
    }
  }
  out.Family("formica_rpc_call_duration_seconds", "histogram",
             "Call latency, by side, service, method and provider.");
  for (const CallSeries& s : all) {
    PrometheusText::Labels labels = SeriesLabels(s);
    uint64_t cumulative = 0;
    for (int i = 0; i < kLatencyBuckets; ++i) {
      cumulative += s.latency_buckets[i];
      int64_t bound = LatencyBucketBoundUs(i);
      PrometheusText::Labels with_le = labels;
      with_le.emplace_back("le", bound < 0 ? "+Inf" : absl::StrCat(bound / 1e6));
      out.Sample("formica_rpc_call_duration_seconds_bucket", with_le,
                 static_cast<double>(cumulative));
    }
    out.Sample("formica_rpc_call_duration_seconds_sum", labels, s.latency_sum_us / 1e6);
    out.Sample("formica_rpc_call_duration_seconds_count", labels, static_cast<double>(s.calls()));
  }
  // The rarer events, each family declared even before its first event.
  struct Family {
    const char* name;
    const char* help;
  };
  const Family families[] = {
      {"formica_rpc_retries_total",
       "Attempts rpc::Client made again after a failed one (another provider, or the zone "
       "a provider named), by service."},
      {"formica_rpc_ejections_total",
       "Providers rpc::Client took out of its balancing after consecutive failures, by "
       "service and provider."},
      {"formica_rpc_rejected_total",
       "Calls an rpc::Server refused before running them, by service, method and reason "
       "(concurrency_limit: the method's calls in flight were at its limit; other_zone: the "
       "user is served in another zone)."},
  };
  std::vector<EventCounters::Series> events = EventCounters::Global().Snapshot();
  for (const Family& f : families) {
    out.Family(f.name, "counter", f.help);
    for (const EventCounters::Series& e : events) {
      if (e.family == f.name) out.Sample(f.name, e.labels, static_cast<double>(e.value));
    }
  }
  return out.text();
}

}  // namespace formica::rpc
