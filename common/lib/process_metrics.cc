#include "formica/internal/process_metrics.h"

#include <vector>

#include "absl/synchronization/mutex.h"

namespace formica {
namespace {

struct Sources {
  absl::Mutex mu;
  std::vector<MetricsEndpoint::Source> all ABSL_GUARDED_BY(mu);
};

Sources& Registered() {
  static Sources* sources = new Sources();
  return *sources;
}

}  // namespace

void AddProcessMetricsSource(MetricsEndpoint::Source source) {
  Sources& s = Registered();
  absl::MutexLock lock(&s.mu);
  s.all.push_back(std::move(source));
}

void WriteProcessMetrics(PrometheusText& out) {
  std::vector<MetricsEndpoint::Source> all;
  {
    Sources& s = Registered();
    absl::MutexLock lock(&s.mu);
    all = s.all;
  }
  for (const MetricsEndpoint::Source& source : all) source(out);
}

}  // namespace formica
