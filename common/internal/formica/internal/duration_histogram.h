// A latency histogram for the daemons' metrics (registry push acks, the DTS
// log's syncs, the broker's fsyncs): counted into without a lock, written
// as one Prometheus `_seconds` histogram. Buckets double from 16 µs to
// about 67 s, then +Inf — the same bounds as the rpc call histogram.
//
//   DurationHistogram syncs;
//   syncs.Observe(absl::Now() - start);
//   syncs.Write(out, "formica_dts_wal_sync_duration_seconds", "Syncs of the log.");
//
// Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "formica/internal/metrics_endpoint.h"

namespace formica {

class DurationHistogram {
 public:
  static constexpr int kBuckets = 23;  // 16 µs .. 2^26 µs, then +Inf

  // The upper bound of bucket `i` in microseconds; -1 for the last (+Inf).
  static int64_t BoundUs(int i) { return i + 1 >= kBuckets ? -1 : int64_t{16} << i; }

  void Observe(absl::Duration d) {
    int64_t us = absl::ToInt64Microseconds(d);
    if (us < 0) us = 0;
    int i = 0;
    while (i + 1 < kBuckets && us > BoundUs(i)) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(static_cast<uint64_t>(us), std::memory_order_relaxed);
  }

  uint64_t count() const {
    uint64_t n = 0;
    for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
    return n;
  }

  // The family `name` (a histogram in seconds) with one series.
  void Write(PrometheusText& out, absl::string_view name, absl::string_view help,
             const PrometheusText::Labels& labels = {}) const {
    out.Family(name, "histogram", help);
    WriteSeries(out, name, labels);
  }

  // One more series of a family already started.
  void WriteSeries(PrometheusText& out, absl::string_view name,
                   const PrometheusText::Labels& labels) const {
    uint64_t cumulative = 0;
    for (int i = 0; i < kBuckets; ++i) {
      cumulative += buckets_[i].load(std::memory_order_relaxed);
      PrometheusText::Labels with_le = labels;
      with_le.emplace_back("le", BoundUs(i) < 0 ? "+Inf" : absl::StrCat(BoundUs(i) / 1e6));
      out.Sample(absl::StrCat(name, "_bucket"), with_le, static_cast<double>(cumulative));
    }
    out.Sample(absl::StrCat(name, "_sum"), labels,
               static_cast<double>(sum_us_.load(std::memory_order_relaxed)) / 1e6);
    out.Sample(absl::StrCat(name, "_count"), labels, static_cast<double>(cumulative));
  }

 private:
  std::atomic<uint64_t> buckets_[kBuckets] = {};
  std::atomic<uint64_t> sum_us_{0};
};

}  // namespace formica
