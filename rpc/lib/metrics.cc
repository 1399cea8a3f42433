#include <algorithm>

#include "absl/strings/str_cat.h"
#include "call_stats.h"
#include "formica/rpc/metrics.h"

namespace formica::rpc {

int64_t LatencyBucketBoundUs(int i) {
  if (i < 0 || i >= kLatencyBuckets - 1) return -1;
  return int64_t{16} << i;
}

bool IsProviderFailure(int code) {
  switch (code) {
    case 2:   // UNKNOWN
    case 4:   // DEADLINE_EXCEEDED
    case 8:   // RESOURCE_EXHAUSTED
    case 12:  // UNIMPLEMENTED
    case 13:  // INTERNAL
    case 14:  // UNAVAILABLE
    case 15:  // DATA_LOSS
      return true;
    default:
      return false;
  }
}

uint64_t CallSeries::calls() const {
  uint64_t n = 0;
  for (uint64_t c : calls_by_code) n += c;
  return n;
}

uint64_t CallSeries::failures() const {
  uint64_t n = 0;
  for (int code = 0; code < kStatusCodes; ++code) {
    if (IsProviderFailure(code)) n += calls_by_code[code];
  }
  return n;
}

CallSeries CallSeries::Minus(const CallSeries& earlier) const {
  CallSeries d = *this;
  auto less = [](uint64_t a, uint64_t b) { return a >= b ? a - b : 0; };
  for (int i = 0; i < kStatusCodes; ++i)
    d.calls_by_code[i] = less(d.calls_by_code[i], earlier.calls_by_code[i]);
  for (int i = 0; i < kLatencyBuckets; ++i) {
    d.latency_buckets[i] = less(d.latency_buckets[i], earlier.latency_buckets[i]);
  }
  d.latency_sum_us = less(d.latency_sum_us, earlier.latency_sum_us);
  return d;
}

void CallSeries::Add(const CallSeries& other) {
  for (int i = 0; i < kStatusCodes; ++i) calls_by_code[i] += other.calls_by_code[i];
  for (int i = 0; i < kLatencyBuckets; ++i) latency_buckets[i] += other.latency_buckets[i];
  latency_sum_us += other.latency_sum_us;
}

double LatencyQuantileMs(const CallSeries& series, double q) {
  uint64_t total = 0;
  for (uint64_t c : series.latency_buckets) total += c;
  if (total == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  double rank = q * static_cast<double>(total);
  double seen = 0;
  for (int i = 0; i < kLatencyBuckets; ++i) {
    double in_bucket = static_cast<double>(series.latency_buckets[i]);
    if (in_bucket == 0) continue;
    if (seen + in_bucket >= rank) {
      double lower = i == 0 ? 0 : static_cast<double>(LatencyBucketBoundUs(i - 1));
      double upper =
          LatencyBucketBoundUs(i) < 0 ? lower * 2 : static_cast<double>(LatencyBucketBoundUs(i));
      double within = (rank - seen) / in_bucket;
      return (lower + (upper - lower) * within) / 1000.0;
    }
    seen += in_bucket;
  }
  return static_cast<double>(LatencyBucketBoundUs(kLatencyBuckets - 2)) / 1000.0;
}

CallSeries CallStats::Read() const {
  CallSeries s;
  s.side = side_;
  s.service = service_;
  s.method = method_;
  s.provider = provider_;
  for (int i = 0; i < kStatusCodes; ++i)
    s.calls_by_code[i] = by_code_[i].load(std::memory_order_relaxed);
  for (int i = 0; i < kLatencyBuckets; ++i) {
    s.latency_buckets[i] = buckets_[i].load(std::memory_order_relaxed);
  }
  s.latency_sum_us = sum_us_.load(std::memory_order_relaxed);
  return s;
}

CallStatsRegistry& CallStatsRegistry::Global() {
  static CallStatsRegistry* registry = new CallStatsRegistry();
  return *registry;
}

std::shared_ptr<CallStats> CallStatsRegistry::Get(CallSeries::Side side, absl::string_view service,
                                                  absl::string_view method,
                                                  absl::string_view provider) {
  std::string key = absl::StrCat(side == CallSeries::Side::kServer ? "s" : "c", "\n", service, "\n",
                                 method, "\n", provider);
  absl::MutexLock lock(&mu_);
  std::shared_ptr<CallStats>& stats = series_[key];
  if (stats == nullptr) {
    stats = std::make_shared<CallStats>(side, std::string(service), std::string(method),
                                        std::string(provider));
  }
  return stats;
}

std::vector<CallSeries> CallStatsRegistry::Snapshot() {
  std::vector<std::shared_ptr<CallStats>> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, stats] : series_) all.push_back(stats);
  }
  std::vector<CallSeries> out;
  out.reserve(all.size());
  for (const auto& stats : all) out.push_back(stats->Read());
  return out;
}

std::vector<CallSeries> CallMetricsSnapshot() { return CallStatsRegistry::Global().Snapshot(); }

EventCounters& EventCounters::Global() {
  static EventCounters* counters = new EventCounters();
  return *counters;
}

std::atomic<uint64_t>* EventCounters::Get(absl::string_view family, const Labels& labels) {
  std::string key(family);
  for (const auto& [k, v] : labels) absl::StrAppend(&key, "\n", k, "=", v);
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Entry>& e = entries_[key];
  if (e == nullptr) {
    e = std::make_unique<Entry>();
    e->family = std::string(family);
    e->labels = labels;
  }
  return &e->value;
}

std::vector<EventCounters::Series> EventCounters::Snapshot() {
  std::vector<Series> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, e] : entries_) {
    out.push_back({e->family, e->labels, e->value.load(std::memory_order_relaxed)});
  }
  std::sort(out.begin(), out.end(), [](const Series& a, const Series& b) {
    return std::tie(a.family, a.labels) < std::tie(b.family, b.labels);
  });
  return out;
}

}  // namespace formica::rpc
