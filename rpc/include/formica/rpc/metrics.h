// formica::rpc call metrics — what every rpc::Server and rpc::Client in this
// process counted: calls, calls by gRPC status code and a latency histogram,
// per service, method and provider. One set of counters for the process:
// each Server serves it to operators (the formica.rpc.v1.Stats service,
// `formicactl traffic stats`), release and traffic controllers read it from
// the providers, and an exporter reads the same series.
//
//   for (const rpc::CallSeries& s : rpc::CallMetricsSnapshot()) {
//     double p99_ms = rpc::LatencyQuantileMs(s, 0.99);
//   }
//
// Counters only grow while the process lives (cumulative, as Prometheus
// counters are); rates come from the difference of two snapshots
// (CallSeries::Minus). Counting costs a few relaxed atomic additions per call.
// Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace formica::rpc {

// Latency buckets: bucket i (0 <= i < kLatencyBuckets - 1) counts calls that
// took at most LatencyBucketBoundUs(i) microseconds (and more than the
// bound before it); the last bucket counts the rest (+Inf). Bounds double
// from 16 us to about 67 s.
inline constexpr int kLatencyBuckets = 24;
// The upper bound of bucket `i` in microseconds; -1 for the last (+Inf).
int64_t LatencyBucketBoundUs(int i);

// gRPC status codes 0 (OK) .. 16 (UNAUTHENTICATED).
inline constexpr int kStatusCodes = 17;

// True for the codes that count as a provider's failure in analysis:
// UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL,
// UNAVAILABLE, DATA_LOSS. The others (INVALID_ARGUMENT, NOT_FOUND, ...) are
// answers to the caller's request, not faults of the provider.
bool IsProviderFailure(int code);

// One series: the calls of one method (server side) or one service (client
// side) on one provider.
struct CallSeries {
  enum class Side { kServer, kClient };
  Side side = Side::kServer;
  std::string service;   // "pkg.Service"
  std::string method;    // "Method"; "" on the client side (counted per service)
  std::string provider;  // the provider's address (a server: its advertised one)
  std::array<uint64_t, kStatusCodes> calls_by_code{};
  std::array<uint64_t, kLatencyBuckets> latency_buckets{};  // per bucket, not cumulative
  uint64_t latency_sum_us = 0;

  uint64_t calls() const;
  // Calls that ended with IsProviderFailure(code).
  uint64_t failures() const;
  // The counts of `this` less those of `earlier` (the same series, read
  // before): what happened between the two reads.
  CallSeries Minus(const CallSeries& earlier) const;
  // Adds another series' counts into this one (e.g. a provider's methods).
  void Add(const CallSeries& other);
};

// Every series counted in this process so far.
std::vector<CallSeries> CallMetricsSnapshot();

// The latency below which a fraction `q` (0..1) of the series' calls fell,
// in milliseconds, interpolated within its bucket; 0 when it has no calls.
double LatencyQuantileMs(const CallSeries& series, double q);

// Every series in the Prometheus text format (docs/metrics.md):
// formica_rpc_calls_total{side,service,method,provider,code} and the
// histogram formica_rpc_call_duration_seconds{side,service,method,provider}.
// What an rpc::Server with `metrics_listen` serves at /metrics.
std::string CallMetricsPrometheusText();

}  // namespace formica::rpc
