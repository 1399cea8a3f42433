// formica-console: the changes (POST /api/...). Each needs the operator
// token (header X-Formica-Token, console.token), the operator's name (header
// X-Formica-Operator) and "confirmed": true in its JSON body; each one asked
// for — done, failed or refused — is written to the audit trail.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "console_api.h"
#include "formica/common/grpc_status.h"
#include "google/protobuf/util/json_util.h"
#include "release.h"
#include "traffic.h"

namespace formica::console {
namespace {

namespace dts = formica::dts::v1;
namespace dms = formica::dms::v1;
using google::protobuf::Struct;

// What an action did, for the audit trail and the page.
using Act = std::function<absl::StatusOr<std::string>(const Struct& body, std::string* target)>;

std::string StringField(const Struct& body, const std::string& name) {
  auto it = body.fields().find(name);
  if (it == body.fields().end()) return "";
  if (it->second.has_string_value()) return it->second.string_value();
  if (it->second.has_number_value()) return absl::StrCat(it->second.number_value());
  return "";
}

// Equal in constant time for equal lengths.
bool SameToken(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

absl::Status CheckOperator(const std::string& name) {
  if (name.empty()) {
    return absl::InvalidArgumentError("the operator's name is required (who makes the change)");
  }
  if (name.size() > 64)
    return absl::InvalidArgumentError("the operator's name is over 64 characters");
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' &&
        c != '@') {
      return absl::InvalidArgumentError(absl::StrCat("the operator's name '", name, "' has '",
                                                     std::string(1, c),
                                                     "': use letters, digits and . _ - @"));
    }
  }
  return absl::OkStatus();
}

// Why `req` may not change anything, if it may not.
absl::Status Admit(const Backends& b, const httplib::Request& req, const Struct& body) {
  if (b.options.token.empty()) {
    return absl::PermissionDeniedError(
        "no operator token is configured (console.token): this console is read-only");
  }
  std::string token = req.get_header_value("X-Formica-Token");
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "this change needs the operator token (console.token): enter it at the top of the page");
  }
  if (!SameToken(token, b.options.token)) {
    return absl::UnauthenticatedError("the operator token is wrong: nothing changed");
  }
  if (absl::Status st = CheckOperator(req.get_header_value("X-Formica-Operator")); !st.ok()) {
    return st;
  }
  auto confirmed = body.fields().find("confirmed");
  if (confirmed == body.fields().end() || !confirmed->second.bool_value()) {
    return absl::FailedPreconditionError("the change was not confirmed: nothing changed");
  }
  return absl::OkStatus();
}

void Post(httplib::Server& http, Backends& b, AuditTrail& audit, const std::string& action,
          Act act) {
  std::string path = "/api/" + action;
  for (char& c : path) {
    if (c == '.') c = '/';
  }
  http.Post(path, [&b, &audit, action, act](const httplib::Request& req, httplib::Response& res) {
    Struct body;
    if (!google::protobuf::util::JsonStringToMessage(req.body, &body).ok()) {
      ReplyError(res, absl::InvalidArgumentError("the request body is not a JSON object"));
      return;
    }
    AuditTrail::Record record;
    std::string who = req.get_header_value("X-Formica-Operator");
    record.who = absl::StrCat(who.empty() ? "-" : who.substr(0, 64), " from ", req.remote_addr);
    record.action = action;
    std::vector<std::string> keys;
    for (const auto& [k, v] : body.fields()) {
      if (k != "confirmed") keys.push_back(k);
    }
    std::sort(keys.begin(), keys.end());
    for (const std::string& k : keys) {
      absl::StrAppend(&record.detail, record.detail.empty() ? "" : " ", k, "=",
                      StringField(body, k));
    }
    for (const char* k : {"service", "id", "group", "transaction_id"}) {
      if (record.target.empty()) record.target = StringField(body, k).substr(0, 256);
    }
    absl::Status admitted = Admit(b, req, body);
    bool refused = !admitted.ok();
    absl::StatusOr<std::string> result =
        refused ? absl::StatusOr<std::string>(admitted) : act(body, &record.target);
    record.ok = result.ok();
    record.result = result.ok() ? absl::StrCat("ok: ", *result)
                                : absl::StrCat(refused ? "refused: " : "failed: ",
                                               absl::StatusCodeToString(result.status().code()),
                                               ": ", result.status().message());
    absl::Status written = audit.Write(record);
    if (!result.ok()) {
      ReplyError(res, result.status());
      return;
    }
    Struct answer;
    (*answer.mutable_fields())["result"].set_string_value(*result);
    (*answer.mutable_fields())["audited"].set_bool_value(written.ok());
    if (!written.ok()) {
      (*answer.mutable_fields())["audit_error"].set_string_value(std::string(written.message()));
    }
    ReplyJson(res, ToJson(answer));
  });
}

absl::StatusOr<std::string> Described(const absl::StatusOr<ctl::RouteChange>& change) {
  if (!change.ok()) return change.status();
  return absl::StrCat("route ", change->before.empty() ? "none" : change->before, " -> ",
                      change->after, " (version ", change->version, ")");
}

absl::StatusOr<std::string> DtsDecision(Backends& b, const Struct& body, std::string* target,
                                        bool settle) {
  if (b.dts == nullptr)
    return absl::FailedPreconditionError("the console has no dtsd (console.dts)");
  dts::ActivityRef ref;
  ref.set_activity_id(StringField(body, "id"));
  *target = ref.activity_id();
  if (absl::Status st = CheckName("the activity id", ref.activity_id()); !st.ok()) return st;
  if (settle) {
    ref.set_reason(StringField(body, "reason"));
    if (ref.reason().empty()) {
      return absl::InvalidArgumentError("a reason is required to settle an activity");
    }
  }
  dts::DecisionResponse r;
  grpc::Status st =
      settle ? b.dts->Settle(b.Context().get(), ref, &r) : b.dts->Retry(b.Context().get(), ref, &r);
  if (!st.ok()) return FromGrpcStatus(st);
  return absl::StrCat("activity ", ref.activity_id(), " is ", dts::ActivityState_Name(r.state()));
}

}  // namespace

void RegisterActions(httplib::Server& http, Backends& b, AuditTrail& audit) {
  Post(http, b, audit, "traffic.set",
       [&b](const Struct& body, std::string* target) -> absl::StatusOr<std::string> {
         *target = StringField(body, "service");
         if (absl::Status st = CheckName("the service", *target); !st.ok()) return st;
         std::string route = StringField(body, "route");
         if (route.empty()) {
           return absl::InvalidArgumentError(
               "the route is required, e.g. color=green:80,color=blue:20");
         }
         ctl::TrafficLink link(b.flags);
         return Described(ctl::SetRoute(link, *target, route, std::nullopt));
       });
  Post(http, b, audit, "traffic.shift",
       [&b](const Struct& body, std::string* target) -> absl::StatusOr<std::string> {
         *target = StringField(body, "service");
         if (absl::Status st = CheckName("the service", *target); !st.ok()) return st;
         std::string to = StringField(body, "target");
         std::string percent_text = StringField(body, "percent");
         double percent = -1;
         if (!absl::SimpleAtod(percent_text, &percent) || percent != std::floor(percent) ||
             percent < 0 || percent > 100) {
           return absl::InvalidArgumentError(absl::StrCat("the percent '", percent_text,
                                                          "' is not a whole number from 0 to 100"));
         }
         ctl::TrafficLink link(b.flags);
         return Described(ctl::ShiftRoute(link, *target, to, static_cast<int>(percent)));
       });
  for (const char* request : {"continue", "rollback"}) {
    Post(http, b, audit, absl::StrCat("release.", request),
         [&b, request](const Struct& body, std::string* target) -> absl::StatusOr<std::string> {
           *target = StringField(body, "service");
           if (absl::Status st = CheckName("the service", *target); !st.ok()) return st;
           ctl::TrafficLink link(b.flags);
           absl::StatusOr<ctl::ReleaseAsked> asked = ctl::AskRelease(link, *target, request);
           if (!asked.ok()) return asked.status();
           const formica::rpc::v1::Release& r = asked->record;
           std::string what = std::string(request) == "continue"
                                  ? "release continuing"
                                  : absl::StrCat("calls go to ", r.version_key(), "=", r.previous(),
                                                 "; rolling back");
           return absl::StrCat(what, asked->controller_live
                                         ? absl::StrCat(" (controller ", r.controller(), ")")
                                         : absl::StrCat("; no controller runs it: finish with "
                                                        "formicactl release resume ",
                                                        *target));
         });
  }
  Post(http, b, audit, "dts.retry", [&b](const Struct& body, std::string* target) {
    return DtsDecision(b, body, target, false);
  });
  Post(http, b, audit, "dts.settle", [&b](const Struct& body, std::string* target) {
    return DtsDecision(b, body, target, true);
  });
  Post(http, b, audit, "dms.replay",
       [&b](const Struct& body, std::string* target) -> absl::StatusOr<std::string> {
         if (b.dms == nullptr) {
           return absl::FailedPreconditionError("the console has no dmsd (console.dms)");
         }
         dms::ReplayDeadLettersRequest request;
         request.set_group(StringField(body, "group"));
         request.set_topic(StringField(body, "topic"));
         *target = request.group();
         if (absl::Status st = CheckName("the group", request.group()); !st.ok()) return st;
         dms::ReplayDeadLettersReply r;
         grpc::Status st = b.dms->ReplayDeadLetters(b.Context().get(), request, &r);
         if (!st.ok()) return FromGrpcStatus(st);
         return absl::StrCat(r.replayed(), " dead letters of ", request.group(), " replayed");
       });
  Post(http, b, audit, "dms.resume",
       [&b](const Struct& body, std::string* target) -> absl::StatusOr<std::string> {
         if (b.dms == nullptr) {
           return absl::FailedPreconditionError("the console has no dmsd (console.dms)");
         }
         dms::ResumeHalfMessagesRequest request;
         request.set_transaction_id(StringField(body, "transaction_id"));
         *target = request.transaction_id().empty() ? "every parked half message"
                                                    : request.transaction_id();
         dms::ResumeHalfMessagesReply r;
         grpc::Status st = b.dms->ResumeHalfMessages(b.Context().get(), request, &r);
         if (!st.ok()) return FromGrpcStatus(st);
         return absl::StrCat(r.resumed(), " half messages resumed");
       });
}

}  // namespace formica::console
