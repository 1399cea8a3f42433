// formicactl's traffic commands (traffic.cc: view, set, stats;
// traffic_shift.cc: shift, pause, resume, abort): what both share — the
// registry and the providers as these commands see them, and the arithmetic
// of routes and shares.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "formica/rpc/metrics.h"
#include "formica/rpc/routes.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "formicactl.h"
#include "google/protobuf/util/json_util.h"

namespace formica::ctl {

// One provider of a service, as the registry lists it.
struct ProviderInfo {
  std::string address;
  std::string zone;
  int32_t weight = 0;
  std::map<std::string, std::string> tags;

  bool Carries(const std::string& key, const std::string& value) const;
};

// A config entry read from the registry.
struct Entry {
  std::string value;
  uint64_t version = 0;  // 0: the key does not exist
};

// Why `source` is not an analysis source: "" (the providers' Stats
// services) or "prometheus=http://HOST:PORT[/PATH]".
absl::Status CheckAnalysisSource(const std::string& source);

// What providers served, as a Prometheus server scraping their metrics
// endpoints last saw it (the analysis source "prometheus=URL").
class PrometheusSource {
 public:
  // REQUIRES: CheckAnalysisSource(source) is OK and names a Prometheus.
  PrometheusSource(const std::string& source, absl::Duration timeout);
  // As TrafficLink::Served; NOT_FOUND when Prometheus has no series of it
  // (not scraped yet), UNAVAILABLE when Prometheus does not answer.
  absl::StatusOr<rpc::CallSeries> Served(const std::string& address, const std::string& service);

 private:
  const absl::Duration timeout_;
  std::string base_;  // "http://host:port"
  std::string path_;  // "" or "/prefix"
};

// The registry (config entries, provider lists) and the providers' Stats and
// health services, each call bounded by --timeout.
class TrafficLink {
 public:
  explicit TrafficLink(const Flags& flags);
  ~TrafficLink();

  // NOT_FOUND when the registry lists no provider of `service`.
  absl::StatusOr<std::vector<ProviderInfo>> Providers(const std::string& service);
  absl::StatusOr<Entry> Get(const std::string& key);
  // A compare-and-set: FAILED_PRECONDITION when the key is no longer at
  // `expected_version` (0: must not exist). Returns the new version.
  absl::StatusOr<uint64_t> Put(const std::string& key, const std::string& value,
                               uint64_t expected_version);
  // Deletes `key` if still at `expected_version`.
  absl::Status Delete(const std::string& key, uint64_t expected_version);
  // What a provider served of `service` so far (its server-side series,
  // every method added up), from the analysis source.
  absl::StatusOr<rpc::CallSeries> Served(const std::string& address, const std::string& service);
  // Where Served reads from now on: "" (the providers' Stats services) or
  // "prometheus=URL". INVALID_ARGUMENT as CheckAnalysisSource.
  absl::Status UseAnalysis(const std::string& source);
  // The provider answers SERVING to the gRPC health check.
  bool Healthy(const std::string& address);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

std::string RouteKey(const std::string& service);  // "rpc/routes/<service>"
std::string ShiftKey(const std::string& service);  // "rpc/shifts/<service>"

// The share of the calls (percent, adding up to 100) each provider gets
// under `routes` as rpc::Client applies them: a route's percent goes to the
// providers carrying its tag in proportion to their weights, or to every
// provider when none carries it; no route: by weight. Zone preference,
// health and warm-up are not counted.
std::vector<double> Shares(const std::vector<ProviderInfo>& providers,
                           const std::vector<rpc::TagRoute>& routes);

// Why `routes` cannot be set for these providers, if it cannot: a tag with
// a share that no provider carries (naming the tags they do carry), or a tag
// given twice.
absl::Status CheckRoutes(const std::string& service, const std::vector<rpc::TagRoute>& routes,
                         const std::vector<ProviderInfo>& providers);

// What each provider served so far, by address.
using Served = std::map<std::string, rpc::CallSeries>;
// The earlier readings a shift or a bake keeps for Analyse (the oldest go).
inline constexpr size_t kMaxReadings = 64;

// What each provider served so far, by address (providers that do not
// answer are left out; `problem`, if given, gets the first failure other
// than NOT_FOUND, so that an analysis without data can say why).
Served ReadServed(TrafficLink& link, const std::string& service,
                  const std::vector<ProviderInfo>& providers, absl::Status* problem = nullptr);

// When a target group of providers does worse than the others over a window:
// its failure rate exceeds theirs by more than max_failure_rate_increase
// (percentage points), or its p99 exceeds theirs times max_p99_ratio and by
// more than p99_slack_ms. The others' p99 is taken over at least as many
// calls as the target served in the window: the window, widened back over
// the earlier readings while it has fewer (judged once it has min_calls).
// Fewer than min_calls target calls are no verdict: no data never passes.
struct Thresholds {
  double max_failure_rate_increase = 1.0;
  double max_p99_ratio = 1.5;
  double p99_slack_ms = 5;
  int64_t min_calls = 20;
};
enum class Verdict { kPass, kNoData, kFail };
struct Analysis {
  Verdict verdict = Verdict::kNoData;
  std::string summary;  // the numbers, and why it failed
};
// Judges the providers carrying key=value against the others, over what
// they served between the last of `readings` and `after` (ReadServed);
// `readings` are the earlier reads of this judgement, oldest first, the
// window's start last.
Analysis Analyse(const Thresholds& limits, const std::string& key, const std::string& value,
                 const std::vector<ProviderInfo>& providers, const std::vector<Served>& readings,
                 const Served& after);

// Analyse within each room: the providers grouped by `room_key` (a tag;
// "zone" falls back on their zone), the target judged against the others
// in each room that has target providers (against every other provider
// when the room has none). Fails when a room fails, naming it; no verdict
// while a room has too few calls; passes when every room passes.
// `room_key` "" is Analyse.
Analysis AnalysePerRoom(const Thresholds& limits, const std::string& room_key,
                        const std::string& key, const std::string& value,
                        const std::vector<ProviderInfo>& providers,
                        const std::vector<Served>& readings, const Served& after);

// A record kept as JSON in a registry config entry (a shift, a release),
// read and written with compare-and-set.
template <typename Message>
class StoredRecord {
 public:
  StoredRecord(TrafficLink& link, std::string key, std::string what)
      : link_(link), key_(std::move(key)), what_(std::move(what)) {}

  // False when there is none.
  absl::StatusOr<bool> Load() {
    absl::StatusOr<Entry> e = link_.Get(key_);
    if (!e.ok()) return e.status();
    version_ = e->version;
    value = Message();
    if (e->version == 0) return false;
    if (!google::protobuf::util::JsonStringToMessage(e->value, &value).ok()) {
      return absl::DataLossError(absl::StrCat("the record ", key_, " is not a ", what_,
                                              "; delete it with formicactl config delete"));
    }
    return true;
  }

  // Writes `value` (stamping updated_unix_ms) if the record did not move
  // since it was read; FAILED_PRECONDITION otherwise (Load to see why).
  absl::Status Save() {
    value.set_updated_unix_ms(absl::ToUnixMillis(absl::Now()));
    std::string json;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(value, &json, options);
    absl::StatusOr<uint64_t> v = link_.Put(key_, json, version_);
    if (!v.ok()) return v.status();
    version_ = *v;
    return absl::OkStatus();
  }

  absl::Duration SinceUpdate() const {
    return absl::Now() - absl::FromUnixMillis(value.updated_unix_ms());
  }

  Message value;

 private:
  TrafficLink& link_;
  const std::string key_;
  const std::string what_;
  uint64_t version_ = 0;
};

// The traffic of `service` grouped by the tag keys of --by (else the
// route's keys, else color): each group's share under the route, instances,
// healthy ones, and calls, failures and p99 served — over the providers'
// lives, or since the last view when `before` (what each provider had
// served, by address) is given and kept between views. With the shift record
// if there is one. NOT_FOUND when no provider is listed.
absl::StatusOr<formica::rpc::v1::TrafficView> BuildView(
    const Flags& flags, TrafficLink& link, const std::string& service,
    std::map<std::string, rpc::CallSeries>* before);

// A shift under way ("rpc/shifts/<service>" running, paused or aborting)
// owns the route: FAILED_PRECONDITION naming it, so a hand-made change does
// not fight it.
absl::Status CheckNoShift(TrafficLink& link, const std::string& service);

// The route with `percent` of the calls on key=value and the rest on the
// key's other values, in proportion to their shares under `original`.
std::string StepRoute(const std::vector<ProviderInfo>& providers,
                      const std::vector<rpc::TagRoute>& original, const std::string& key,
                      const std::string& value, int percent);

// A route written: what it was ("" for none), what it is, its new version.
struct RouteChange {
  std::string before;
  std::string after;
  uint64_t version = 0;
};

// Sets the route of `service` to `text` ("color=green:80,color=blue:20"),
// compare-and-set at `expected_version` (none: the version just read).
// INVALID_ARGUMENT for a malformed or empty route or a tag no provider
// carries, NOT_FOUND when no provider is listed, FAILED_PRECONDITION when a
// shift owns the route or it moved; nothing changes then.
absl::StatusOr<RouteChange> SetRoute(TrafficLink& link, const std::string& service,
                                     const std::string& text,
                                     std::optional<uint64_t> expected_version);

// One step of a shift, set at once: `percent` (0..100) of the calls on
// `target` (key=value) and the rest on the key's other values as they share
// them now (StepRoute), written with SetRoute. INVALID_ARGUMENT for a target
// that is not key=value or a percent out of range.
absl::StatusOr<RouteChange> ShiftRoute(TrafficLink& link, const std::string& service,
                                       const std::string& target, int percent);

// Prints a failure on stderr as Fail does; returns 1.
int FailWith(const absl::Status& status);

int TrafficShift(const Flags& flags, const std::vector<std::string>& args);

}  // namespace formica::ctl
