// Metrics of the libraries that run inside a user's process and have no
// endpoint of their own (dds, ldc): each adds a source once, and every
// rpc::Server's metrics page (`metrics_listen`) carries them after its call
// metrics (docs/metrics.md).
//
//   AddProcessMetricsSource([](PrometheusText& out) {
//     out.Gauge("formica_ldc_rules_version", "...", version.load());
//   });
//
// Thread-safe; sources live for the process's life and run on the
// scraping thread.
#pragma once

#include "formica/internal/metrics_endpoint.h"

namespace formica {

void AddProcessMetricsSource(MetricsEndpoint::Source source);
// Every source added, in the order added.
void WriteProcessMetrics(PrometheusText& out);

}  // namespace formica
