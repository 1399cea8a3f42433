// The console's audit trail (console_api.h): a record per change asked for,
// as JSON in the registry's config entries "console/audit/<µs>-<n>", so that
// every console of the suite (and formicactl config ls) sees the same trail.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "console_api.h"
#include "formica/common/grpc_status.h"
#include "google/protobuf/util/json_util.h"

namespace formica::console {
namespace {

namespace reg = formica::registry::v1;

constexpr char kPrefix[] = "console/audit/";

}  // namespace

absl::Status AuditTrail::Write(const Record& record) {
  static std::atomic<uint64_t> sequence{0};
  absl::Time now = absl::Now();
  google::protobuf::Struct value;
  auto& f = *value.mutable_fields();
  f["at_unix_ms"].set_number_value(static_cast<double>(absl::ToUnixMillis(now)));
  f["at"].set_string_value(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", now, absl::UTCTimeZone()));
  f["who"].set_string_value(record.who);
  f["action"].set_string_value(record.action);
  f["target"].set_string_value(record.target);
  f["detail"].set_string_value(record.detail);
  f["result"].set_string_value(record.result);
  f["ok"].set_bool_value(record.ok);
  reg::PutConfigRequest request;
  request.set_key(absl::StrFormat("%s%016d-%06d", kPrefix, absl::ToUnixMicros(now),
                                  sequence.fetch_add(1) % 1000000));
  request.set_value(ToJson(value));
  request.set_expected_version(0);  // never overwrite a record
  reg::PutConfigResponse response;
  return FromGrpcStatus(
      backends_.registry->PutConfig(backends_.Context().get(), request, &response));
}

absl::StatusOr<std::string> AuditTrail::ListJson(int limit) {
  reg::ListConfigRequest request;
  request.set_prefix(kPrefix);
  reg::ListConfigResponse response;
  grpc::Status st = backends_.registry->ListConfig(backends_.Context().get(), request, &response);
  if (!st.ok()) return FromGrpcStatus(st);
  std::vector<const reg::ConfigEntry*> entries;
  for (const reg::ConfigEntry& e : response.entries()) {
    if (e.exists()) entries.push_back(&e);
  }
  std::sort(
      entries.begin(), entries.end(),
      [](const reg::ConfigEntry* a, const reg::ConfigEntry* b) { return a->key() > b->key(); });
  std::string json = "[";
  int listed = 0;
  for (const reg::ConfigEntry* e : entries) {
    if (listed == limit) break;
    google::protobuf::Struct record;  // what is not a record (written by hand) is left out
    if (!google::protobuf::util::JsonStringToMessage(e->value(), &record).ok()) continue;
    if (listed++ > 0) json += ",";
    json += ToJson(record);
  }
  return json + "]";
}

absl::StatusOr<std::string> AuditTrail::DaemonsJson(int limit) {
  formica::audit::v1::ListAuditResponse all;
  std::vector<std::string> unreachable;
  for (const auto& [daemon, stub] : backends_.audits) {
    formica::audit::v1::ListAuditRequest request;
    request.set_limit(limit);
    formica::audit::v1::ListAuditResponse response;
    grpc::Status st = stub->List(backends_.Context().get(), request, &response);
    if (!st.ok()) {
      // Written in this order (a Struct's fields come out in any order).
      google::protobuf::Value name, error;
      name.set_string_value(daemon);
      error.set_string_value(FromGrpcStatus(st).ToString());
      unreachable.push_back(
          absl::StrCat("{\"daemon\":", ToJson(name), ",\"error\":", ToJson(error), "}"));
      continue;
    }
    for (auto& e : *response.mutable_entries()) *all.add_entries() = std::move(e);
  }
  std::stable_sort(
      all.mutable_entries()->begin(), all.mutable_entries()->end(),
      [](const formica::audit::v1::AuditEntry& a, const formica::audit::v1::AuditEntry& b) {
        return a.time_unix_ms() > b.time_unix_ms();
      });
  while (all.entries_size() > limit) all.mutable_entries()->RemoveLast();
  return absl::StrCat("{\"trail\":", ToJson(all), ",\"unreachable\":[",
                      absl::StrJoin(unreachable, ","), "]}");
}

}  // namespace formica::console
