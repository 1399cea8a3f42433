// formica-console: the pages' read-only API (GET /api/...), each answer the
// daemons' own gRPC answer as JSON (field names as in the .proto files).
#include <grpcpp/grpcpp.h>

#include <functional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "console_api.h"
#include "formica/common/grpc_status.h"
#include "formica/ldc/admin.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "traffic.h"

namespace formica::console {
namespace {

namespace reg = formica::registry::v1;
namespace dts = formica::dts::v1;
namespace dms = formica::dms::v1;

using Answer = std::function<absl::StatusOr<std::string>(const httplib::Request&)>;

void Get(httplib::Server& http, const std::string& path, Answer answer) {
  http.Get(path, [answer](const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<std::string> json = answer(req);
    if (json.ok()) {
      ReplyJson(res, *json);
    } else {
      ReplyError(res, json.status());
    }
  });
}

std::string Text(const std::string& s) {
  google::protobuf::Value v;
  v.set_string_value(s);
  return ToJson(v);
}

// {"k": v, ...} from already-encoded values.
std::string Object(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : fields) parts.push_back(absl::StrCat(Text(k), ":", v));
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

// The answer of one call, or {"ok":false,"error":...} for the overview.
template <typename Reply>
std::string OkOrError(const grpc::Status& st, const Reply& reply) {
  if (!st.ok()) return Object({{"ok", "false"}, {"error", Text(st.error_message())}});
  return Object({{"ok", "true"}, {"answer", ToJson(reply)}});
}

absl::Status Need(const void* stub, const std::string& what, const std::string& key) {
  if (stub != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("the console has no ", what, " address (", key, ")"));
}

absl::StatusOr<std::string> Overview(Backends& b) {
  std::vector<std::pair<std::string, std::string>> out;
  reg::ListServicesResponse services;
  grpc::Status st = b.registry->ListServices(b.Context().get(), {}, &services);
  out.emplace_back("services", OkOrError(st, services));
  reg::ClusterInfo cluster;
  out.emplace_back("cluster",
                   OkOrError(b.registry->GetCluster(b.Context().get(), {}, &cluster), cluster));
  reg::PushSwitchState push;
  out.emplace_back("push",
                   OkOrError(b.registry->GetPushSwitch(b.Context().get(), {}, &push), push));
  reg::ListSessionsResponse sessions;
  out.emplace_back("sessions",
                   OkOrError(b.registry->ListSessions(b.Context().get(), {}, &sessions), sessions));
  if (b.dts != nullptr) {
    dts::Stats stats;
    out.emplace_back("dts", OkOrError(b.dts->GetStats(b.Context().get(), {}, &stats), stats));
  }
  if (b.dms != nullptr) {
    dms::ListTopicsReply topics;
    out.emplace_back("dms", OkOrError(b.dms->ListTopics(b.Context().get(), {}, &topics), topics));
  }
  return Object(out);
}

absl::StatusOr<std::string> Traffic(Backends& b) {
  reg::ListServicesResponse services;
  grpc::Status st = b.registry->ListServices(b.Context().get(), {}, &services);
  if (!st.ok()) return FromGrpcStatus(st);
  reg::ClusterInfo cluster;
  (void)b.registry->GetCluster(b.Context().get(), {}, &cluster);
  ctl::TrafficLink link(b.flags);
  std::vector<std::string> views;
  for (const reg::ServiceSummary& s : services.services()) {
    if (s.instances() == 0) continue;
    absl::StatusOr<formica::rpc::v1::TrafficView> view =
        ctl::BuildView(b.flags, link, s.service(), nullptr);
    if (absl::IsNotFound(view.status())) continue;  // gone meanwhile
    if (!view.ok()) return view.status();
    views.push_back(ToJson(*view));
  }
  std::string name = cluster.cluster().empty() ? cluster.mode() : cluster.cluster();
  return Object(
      {{"cluster", Text(name)}, {"views", absl::StrCat("[", absl::StrJoin(views, ","), "]")}});
}

// Every record under `prefix` that parses as `Message`, as a JSON array.
template <typename Message>
absl::StatusOr<std::string> Records(Backends& b, const std::string& prefix) {
  reg::ListConfigRequest request;
  request.set_prefix(prefix);
  reg::ListConfigResponse response;
  grpc::Status st = b.registry->ListConfig(b.Context().get(), request, &response);
  if (!st.ok()) return FromGrpcStatus(st);
  std::vector<std::string> records;
  for (const reg::ConfigEntry& e : response.entries()) {
    Message m;
    if (!e.exists() || !google::protobuf::util::JsonStringToMessage(e.value(), &m).ok()) continue;
    records.push_back(ToJson(m));
  }
  return absl::StrCat("[", absl::StrJoin(records, ","), "]");
}

absl::StatusOr<std::string> Activities(Backends& b, const httplib::Request& req) {
  if (absl::Status st = Need(b.dts.get(), "dtsd", "console.dts"); !st.ok()) return st;
  dts::ListRequest request;
  for (absl::string_view name : absl::StrSplit(Param(req, "states"), ',', absl::SkipWhitespace())) {
    dts::ActivityState state;
    if (!dts::ActivityState_Parse(std::string(name), &state) ||
        state == dts::ACTIVITY_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown state '", name,
                       "': use ACTIVE, COMMITTING, ROLLING_BACK, COMMITTED or ROLLED_BACK"));
    }
    request.add_states(state);
  }
  std::string limit = Param(req, "limit");
  if (!limit.empty()) {
    int n = 0;
    if (!absl::SimpleAtoi(limit, &n) || n < 1 || n > 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat("the limit '", limit, "' is not a number from 1 to 1000"));
    }
    request.set_limit(n);
  }
  dts::ListResponse response;
  grpc::Status st = b.dts->List(b.Context().get(), request, &response);
  if (!st.ok()) return FromGrpcStatus(st);
  return ToJson(response);
}

absl::StatusOr<std::string> Lag(Backends& b, const httplib::Request& req) {
  if (absl::Status st = Need(b.dms.get(), "dmsd", "console.dms"); !st.ok()) return st;
  dms::GetLagRequest request;
  request.set_group(Param(req, "group"));
  request.set_topic(Param(req, "topic"));
  if (absl::Status st = CheckName("the group", request.group()); !st.ok()) return st;
  if (!request.topic().empty()) {
    if (absl::Status st = CheckName("the topic", request.topic()); !st.ok()) return st;
  }
  dms::GetLagReply response;
  grpc::Status st = b.dms->GetLag(b.Context().get(), request, &response);
  if (!st.ok()) return FromGrpcStatus(st);
  return ToJson(response);
}

absl::StatusOr<std::string> DeadLetters(Backends& b, const httplib::Request& req) {
  if (absl::Status st = Need(b.dms.get(), "dmsd", "console.dms"); !st.ok()) return st;
  dms::ListDeadLettersRequest request;
  request.set_group(Param(req, "group"));
  request.set_topic(Param(req, "topic"));
  if (absl::Status st = CheckName("the group", request.group()); !st.ok()) return st;
  dms::ListDeadLettersReply response;
  grpc::Status st = b.dms->ListDeadLetters(b.Context().get(), request, &response);
  if (!st.ok()) return FromGrpcStatus(st);
  return ToJson(response);
}

absl::StatusOr<std::string> Ldc(Backends& b) {
  std::unique_ptr<ldc::RuleAdmin> admin =
      ldc::RuleAdmin::Connect(b.options.registry, b.options.call_timeout);
  absl::StatusOr<ldc::VersionedRules> current = admin->Get();
  if (absl::IsNotFound(current.status())) {
    return Object({{"version", "0"}, {"zones", "[]"}, {"clients", "[]"}, {"fenced", Text("")}});
  }
  if (!current.ok()) return current.status();
  absl::StatusOr<std::vector<ldc::ClientReport>> clients = admin->Clients();
  if (!clients.ok()) return clients.status();
  const ldc::RuleSet& rules = current->rules;
  std::vector<std::string> zones;
  for (const ldc::Zone& z : rules.zones) {
    zones.push_back(Object({{"name", Text(z.name)},
                            {"kind", Text(std::string(ldc::ZoneKindName(z.kind)))},
                            {"data_center", Text(z.data_center)},
                            {"city", Text(z.city)},
                            {"shards", Text(ldc::FormatShards(rules.ShardsOf(z.name)))}}));
  }
  std::vector<std::string> reports;
  for (const ldc::ClientReport& c : *clients) {
    reports.push_back(
        Object({{"id", Text(c.id)},
                {"client", Text(c.client)},
                {"zone", Text(c.zone)},
                {"applied_version", absl::StrCat(c.applied_version)},
                {"lagging", c.applied_version < current->version ? "true" : "false"}}));
  }
  return Object({{"version", absl::StrCat(current->version)},
                 {"fenced", Text(ldc::FormatShards(rules.fenced))},
                 {"zones", absl::StrCat("[", absl::StrJoin(zones, ","), "]")},
                 {"clients", absl::StrCat("[", absl::StrJoin(reports, ","), "]")}});
}

}  // namespace

void RegisterReads(httplib::Server& http, Backends& backends, AuditTrail& audit) {
  Backends* b = &backends;
  Get(http, "/api/info", [b](const httplib::Request&) -> absl::StatusOr<std::string> {
    return Object({{"registry", Text(b->options.registry)},
                   {"dts", Text(b->options.dts)},
                   {"dms", Text(b->options.dms)},
                   {"token_configured", b->options.token.empty() ? "false" : "true"}});
  });
  Get(http, "/api/overview", [b](const httplib::Request&) { return Overview(*b); });
  Get(http, "/api/services", [b](const httplib::Request&) -> absl::StatusOr<std::string> {
    reg::ListServicesResponse r;
    grpc::Status st = b->registry->ListServices(b->Context().get(), {}, &r);
    if (!st.ok()) return FromGrpcStatus(st);
    return ToJson(r);
  });
  Get(http, "/api/service", [b](const httplib::Request& req) -> absl::StatusOr<std::string> {
    reg::GetServiceRequest request;
    request.set_service(Param(req, "name"));
    if (absl::Status st = CheckName("the service", request.service()); !st.ok()) return st;
    reg::ServiceSnapshot r;
    grpc::Status st = b->registry->GetService(b->Context().get(), request, &r);
    if (!st.ok()) return FromGrpcStatus(st);
    return ToJson(r);
  });
  Get(http, "/api/sessions", [b](const httplib::Request&) -> absl::StatusOr<std::string> {
    reg::ListSessionsResponse r;
    grpc::Status st = b->registry->ListSessions(b->Context().get(), {}, &r);
    if (!st.ok()) return FromGrpcStatus(st);
    return ToJson(r);
  });
  Get(http, "/api/traffic", [b](const httplib::Request&) { return Traffic(*b); });
  Get(http, "/api/releases",
      [b](const httplib::Request&) { return Records<formica::rpc::v1::Release>(*b, "release/"); });
  Get(http, "/api/dts/activities",
      [b](const httplib::Request& req) { return Activities(*b, req); });
  Get(http, "/api/dts/activity", [b](const httplib::Request& req) -> absl::StatusOr<std::string> {
    if (absl::Status st = Need(b->dts.get(), "dtsd", "console.dts"); !st.ok()) return st;
    dts::ActivityRef ref;
    ref.set_activity_id(Param(req, "id"));
    if (absl::Status st = CheckName("the activity id", ref.activity_id()); !st.ok()) return st;
    dts::Activity r;
    grpc::Status st = b->dts->Get(b->Context().get(), ref, &r);
    if (!st.ok()) return FromGrpcStatus(st);
    return ToJson(r);
  });
  Get(http, "/api/dms/topics", [b](const httplib::Request&) -> absl::StatusOr<std::string> {
    if (absl::Status st = Need(b->dms.get(), "dmsd", "console.dms"); !st.ok()) return st;
    dms::ListTopicsReply r;
    grpc::Status st = b->dms->ListTopics(b->Context().get(), {}, &r);
    if (!st.ok()) return FromGrpcStatus(st);
    return ToJson(r);
  });
  Get(http, "/api/dms/lag", [b](const httplib::Request& req) { return Lag(*b, req); });
  Get(http, "/api/dms/dlq", [b](const httplib::Request& req) { return DeadLetters(*b, req); });
  Get(http, "/api/dms/half", [b](const httplib::Request&) -> absl::StatusOr<std::string> {
    if (absl::Status st = Need(b->dms.get(), "dmsd", "console.dms"); !st.ok()) return st;
    dms::ListHalfMessagesReply r;
    grpc::Status st = b->dms->ListHalfMessages(b->Context().get(), {}, &r);
    if (!st.ok()) return FromGrpcStatus(st);
    return ToJson(r);
  });
  Get(http, "/api/ldc", [b](const httplib::Request&) { return Ldc(*b); });
  AuditTrail* a = &audit;
  Get(http, "/api/audit", [a](const httplib::Request&) { return a->ListJson(200); });
  Get(http, "/api/audit/daemons", [a](const httplib::Request&) { return a->DaemonsJson(200); });
}

}  // namespace formica::console
