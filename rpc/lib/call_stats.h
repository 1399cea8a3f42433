// The counters behind formica/rpc/metrics.h: one CallStats per series
// (side, service, method, provider), made once through CallStatsRegistry
// and then counted into without a lock. rpc::Server counts every call in
// its interceptor (server_metrics.cc); rpc::Client keeps one CallStats per
// provider of a service and counts each attempt.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "formica/rpc/metrics.h"

namespace formica::rpc {

// The latency bucket of a call that took `micros` microseconds.
inline int LatencyBucket(int64_t micros) {
  if (micros <= 16) return 0;
  int bucket = 64 - __builtin_clzll(static_cast<uint64_t>(micros - 1)) - 4;
  return bucket < kLatencyBuckets - 1 ? bucket : kLatencyBuckets - 1;
}

// One series' counters. Thread-safe; Record takes no lock.
class CallStats {
 public:
  CallStats(CallSeries::Side side, std::string service, std::string method, std::string provider)
      : side_(side),
        service_(std::move(service)),
        method_(std::move(method)),
        provider_(std::move(provider)) {}

  // Counts one call that ended with gRPC status `code` after `latency`.
  void Record(int code, absl::Duration latency) {
    int64_t micros = absl::ToInt64Microseconds(latency);
    if (micros < 0) micros = 0;
    if (code < 0 || code >= kStatusCodes) code = 2;  // UNKNOWN
    by_code_[code].fetch_add(1, std::memory_order_relaxed);
    buckets_[LatencyBucket(micros)].fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(static_cast<uint64_t>(micros), std::memory_order_relaxed);
  }

  CallSeries Read() const;

 private:
  const CallSeries::Side side_;
  const std::string service_;
  const std::string method_;
  const std::string provider_;
  std::atomic<uint64_t> by_code_[kStatusCodes] = {};
  std::atomic<uint64_t> buckets_[kLatencyBuckets] = {};
  std::atomic<uint64_t> sum_us_{0};
};

// The process's series. A series, once made, is kept for the life of the
// process (its counters only grow), so readers see no counter go back.
class CallStatsRegistry {
 public:
  static CallStatsRegistry& Global();

  // The series for these labels, made on first use. Takes a lock: call it
  // when a provider or method is first seen, not per call.
  std::shared_ptr<CallStats> Get(CallSeries::Side side, absl::string_view service,
                                 absl::string_view method, absl::string_view provider);
  std::vector<CallSeries> Snapshot();

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<CallStats>> series_ ABSL_GUARDED_BY(mu_);
};

// Counters of the call path's rarer events — a provider ejected, an
// attempt retried, a call refused before it ran — one per family and label
// values, made once (a lock) and then counted into without one; kept for the
// process's life. Exported by CallMetricsPrometheusText (docs/metrics.md).
class EventCounters {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  struct Series {
    std::string family;
    Labels labels;
    uint64_t value = 0;
  };

  static EventCounters& Global();

  // The counter of `family` with `labels` (always given in the same order
  // for a family), made on first use.
  std::atomic<uint64_t>* Get(absl::string_view family, const Labels& labels);
  std::vector<Series> Snapshot();

 private:
  struct Entry {
    std::string family;
    Labels labels;
    std::atomic<uint64_t> value{0};
  };
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace formica::rpc
