// The HTTP endpoint every Formica daemon and rpc::Server serves its metrics
// on, in the Prometheus text format (version 0.0.4), at GET /metrics, and
// the writer its sources fill. Off unless `metrics.listen` is set
// (docs/metrics.md).
//
//   MetricsEndpoint::Source dts = [&](PrometheusText& out) {
//     out.Counter("formica_dts_committed_total", "Activities committed.", stats.committed);
//   };
//   auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", {dts}).value();
//   endpoint->port();   // the bound port
//
// Sources run on the HTTP thread at each scrape and must be thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace formica {

// Prometheus text, one family at a time: each family's HELP and TYPE line
// once, then its samples. Label values are escaped.
class PrometheusText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;

  // Starts a family; `type` is "counter", "gauge" or "histogram".
  void Family(absl::string_view name, absl::string_view type, absl::string_view help);
  // One sample line of the current family (`name` may carry a suffix such
  // as _bucket, _sum, _count).
  void Sample(absl::string_view name, const Labels& labels, double value);

  // A family with one unlabelled sample.
  void Counter(absl::string_view name, absl::string_view help, double value);
  void Gauge(absl::string_view name, absl::string_view help, double value);

  // Text already in the format (whole families), e.g.
  // rpc::CallMetricsPrometheusText().
  void Append(absl::string_view families) { text_.append(families.data(), families.size()); }

  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

class MetricsEndpoint {
 public:
  using Source = std::function<void(PrometheusText&)>;

  // Listens on `listen` ("host:port"; port 0 picks a free one) and serves
  // what `sources` write, in order. INVALID_ARGUMENT for a malformed
  // address, UNAVAILABLE when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& listen,
                                                                std::vector<Source> sources);
  ~MetricsEndpoint();

  int port() const;
  // The page a scrape gets now.
  std::string Render() const;
  // Stops serving. Idempotent.
  void Stop();

  class Impl;

 private:
  explicit MetricsEndpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica
