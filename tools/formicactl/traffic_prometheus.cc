// formicactl: the providers' served calls read from a Prometheus server (the
// analysis source `prometheus=URL`) instead of each provider's Stats
// service: the formica_rpc_calls_total and formica_rpc_call_duration_seconds
// series their metrics endpoints export (docs/metrics.md), as Prometheus
// last scraped them.
#include <google/protobuf/struct.pb.h>
#include <httplib.h>

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/util/json_util.h"
#include "traffic.h"

namespace formica::ctl {
namespace {

constexpr char kPrefix[] = "prometheus=";

// gRPC status code names as the exporter writes them, by code.
constexpr const char* kCodeNames[rpc::kStatusCodes] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

std::string Quoted(const std::string& value) {
  return absl::StrCat("\"", absl::StrReplaceAll(value, {{"\\", "\\\\"}, {"\"", "\\\""}}), "\"");
}

struct Sample {
  std::map<std::string, std::string> labels;
  double value = 0;
};

}  // namespace

absl::Status CheckAnalysisSource(const std::string& source) {
  if (source.empty()) return absl::OkStatus();
  if (absl::StartsWith(source, kPrefix)) {
    std::string url = source.substr(sizeof(kPrefix) - 1);
    std::string rest = url.substr(url.find("://") == std::string::npos ? 0 : url.find("://") + 3);
    std::string hostport = rest.substr(0, rest.find('/'));
    size_t colon = hostport.rfind(':');
    int port = 0;
    if (absl::StartsWith(url, "http://") && colon != std::string::npos && colon > 0 &&
        absl::SimpleAtoi(hostport.substr(colon + 1), &port) && port > 0 && port < 65536) {
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the analysis source '", source,
                   "' is neither stats nor prometheus=http://HOST:PORT (e.g. "
                   "prometheus=http://127.0.0.1:9090)"));
}

PrometheusSource::PrometheusSource(const std::string& source, absl::Duration timeout)
    : timeout_(timeout) {
  std::string url = source.substr(sizeof(kPrefix) - 1);
  std::string rest = url.substr(url.find("://") + 3);
  size_t slash = rest.find('/');
  base_ = absl::StrCat("http://", rest.substr(0, slash));
  path_ = slash == std::string::npos ? "" : rest.substr(slash);
  while (absl::EndsWith(path_, "/")) path_.pop_back();
}

// The samples of an instant PromQL query.
static absl::StatusOr<std::vector<Sample>> Query(const std::string& base, const std::string& path,
                                                 absl::Duration timeout, const std::string& query) {
  httplib::Client client(base);
  int64_t ms = absl::ToInt64Milliseconds(timeout);
  client.set_connection_timeout(ms / 1000, (ms % 1000) * 1000);
  client.set_read_timeout(ms / 1000, (ms % 1000) * 1000);
  httplib::Result res =
      client.Get(path + "/api/v1/query", httplib::Params{{"query", query}}, httplib::Headers{});
  if (!res) {
    return absl::UnavailableError(
        absl::StrCat("prometheus at ", base, path,
                     " does not answer (httplib: ", httplib::to_string(res.error()), ")"));
  }
  google::protobuf::Struct reply;
  if (!google::protobuf::util::JsonStringToMessage(res->body, &reply).ok()) {
    return absl::UnavailableError(absl::StrCat("prometheus at ", base, path, " answered HTTP ",
                                               res->status,
                                               " with no JSON: ", res->body.substr(0, 200)));
  }
  const auto& f = reply.fields();
  if (res->status != 200 || !f.count("status") || f.at("status").string_value() != "success") {
    std::string error = f.count("error") ? f.at("error").string_value() : res->body.substr(0, 200);
    return absl::UnavailableError(
        absl::StrCat("prometheus at ", base, path, " refused '", query, "': ", error));
  }
  std::vector<Sample> out;
  const auto& data = f.at("data").struct_value().fields();
  if (!data.count("result")) return out;
  for (const auto& r : data.at("result").list_value().values()) {
    const auto& fields = r.struct_value().fields();
    Sample s;
    if (fields.count("metric")) {
      for (const auto& [k, v] : fields.at("metric").struct_value().fields()) {
        s.labels[k] = v.string_value();
      }
    }
    if (!fields.count("value")) continue;
    const auto& value = fields.at("value").list_value().values();
    if (value.size() != 2 || !absl::SimpleAtod(value[1].string_value(), &s.value)) continue;
    out.push_back(std::move(s));
  }
  return out;
}

absl::StatusOr<rpc::CallSeries> PrometheusSource::Served(const std::string& address,
                                                         const std::string& service) {
  std::string selector = absl::StrCat("{side=\"server\",service=", Quoted(service),
                                      ",provider=", Quoted(address), "}");
  absl::StatusOr<std::vector<Sample>> buckets =
      Query(base_, path_, timeout_,
            absl::StrCat("sum by (le) (formica_rpc_call_duration_seconds_bucket", selector, ")"));
  if (!buckets.ok()) return buckets.status();
  if (buckets->empty()) {
    return absl::NotFoundError(absl::StrCat("prometheus at ", base_, path_, " has no series of ",
                                            service, " served by ", address));
  }
  absl::StatusOr<std::vector<Sample>> codes =
      Query(base_, path_, timeout_,
            absl::StrCat("sum by (code) (formica_rpc_calls_total", selector, ")"));
  if (!codes.ok()) return codes.status();
  absl::StatusOr<std::vector<Sample>> sum =
      Query(base_, path_, timeout_,
            absl::StrCat("sum(formica_rpc_call_duration_seconds_sum", selector, ")"));
  if (!sum.ok()) return sum.status();
  rpc::CallSeries s;
  s.side = rpc::CallSeries::Side::kServer;
  s.service = service;
  s.provider = address;
  for (const Sample& c : *codes) {
    for (int code = 0; code < rpc::kStatusCodes; ++code) {
      if (c.labels.count("code") && c.labels.at("code") == kCodeNames[code]) {
        s.calls_by_code[code] = static_cast<uint64_t>(std::llround(c.value));
      }
    }
  }
  // Cumulative "le" buckets back into the counts of each bucket.
  std::vector<double> cumulative(rpc::kLatencyBuckets, 0);
  for (const Sample& b : *buckets) {
    auto le = b.labels.find("le");
    if (le == b.labels.end()) continue;
    for (int i = 0; i < rpc::kLatencyBuckets; ++i) {
      int64_t bound = rpc::LatencyBucketBoundUs(i);
      double seconds = 0;
      // The exporter prints bounds to 6 significant digits.
      bool match = bound < 0 ? le->second == "+Inf"
                             : absl::SimpleAtod(le->second, &seconds) &&
                                   std::fabs(seconds * 1e6 - bound) <= bound * 1e-4;
      if (match) cumulative[i] = b.value;
    }
  }
  double below = 0;
  for (int i = 0; i < rpc::kLatencyBuckets; ++i) {
    s.latency_buckets[i] =
        static_cast<uint64_t>(std::llround(std::max(0.0, cumulative[i] - below)));
    below = std::max(below, cumulative[i]);
  }
  if (!sum->empty()) s.latency_sum_us = static_cast<uint64_t>(std::llround((*sum)[0].value * 1e6));
  return s;
}

}  // namespace formica::ctl
