// What the console's HTTP handlers share (console_server.cc registers them;
// console_reads.cc answers the pages, console_actions.cc makes the changes):
// the daemons' stubs, the JSON of answers and errors, and the audit trail.
#pragma once

#include <httplib.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "console.h"
#include "formica/audit/v1/audit.grpc.pb.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "formicactl.h"
#include "google/protobuf/struct.pb.h"

namespace formica::console {

// The daemons as the console reaches them. Stubs are thread-safe; a stub is
// null when its daemon's address is not configured.
struct Backends {
  explicit Backends(const ConsoleOptions& options);

  // A context whose deadline is the call timeout.
  std::unique_ptr<grpc::ClientContext> Context() const;

  ConsoleOptions options;
  ctl::Flags flags;  // for the traffic code shared with formicactl
  std::unique_ptr<formica::registry::v1::Registry::Stub> registry;
  std::unique_ptr<formica::dts::v1::Coordinator::Stub> dts;
  std::unique_ptr<formica::dms::v1::Broker::Stub> dms;
  // The daemons' own audit trails (formica.audit.v1.Audit), by daemon name:
  // dsrd, and dtsd and dmsd when configured.
  std::vector<std::pair<std::string, std::unique_ptr<formica::audit::v1::Audit::Stub>>> audits;
};

// `message` in proto3's JSON mapping, field names as in the .proto, every
// field present.
std::string ToJson(const google::protobuf::Message& message);

// Answers `json` with HTTP 200.
void ReplyJson(httplib::Response& res, const std::string& json);
// Answers an error as {"error": message, "code": "INVALID_ARGUMENT"} with
// the HTTP status that fits the code (400, 401, 403, 404, 409, 503, 500).
void ReplyError(httplib::Response& res, const absl::Status& status);

// A query parameter, "" when absent.
std::string Param(const httplib::Request& req, const std::string& name);

// INVALID_ARGUMENT naming `what` unless `value` is 1..256 characters of
// letters, digits and . _ - : / = (service, topic, group, activity names).
absl::Status CheckName(const std::string& what, const std::string& value);

// The audit trail: one record per change asked for, kept in the registry
// under "console/audit/<time>-<n>" (docs/operations.md).
class AuditTrail {
 public:
  explicit AuditTrail(Backends& backends) : backends_(backends) {}

  struct Record {
    std::string who;     // the operator's name as given, and the peer address
    std::string action;  // "traffic.set", "dts.retry", ...
    std::string target;  // what it acted on
    std::string detail;  // the action's arguments
    std::string result;  // "ok: ..." or what went wrong
    bool ok = false;
  };
  // Writes `record`, stamped with the time; the error when it cannot.
  absl::Status Write(const Record& record);
  // The newest `limit` records, newest first, as a JSON array.
  absl::StatusOr<std::string> ListJson(int limit);
  // The daemons' trails of operator acts (docs/security.md, "Audit"), as
  // `formicactl audit` reads them: the newest `limit` of all, newest first,
  // as {"trail": ListAuditResponse, "unreachable": [{"daemon", "error"}]}.
  absl::StatusOr<std::string> DaemonsJson(int limit);

 private:
  Backends& backends_;
};

// The read-only pages' API (GET /api/...).
void RegisterReads(httplib::Server& http, Backends& backends, AuditTrail& audit);
// The changes (POST /api/...): token, confirmation, audit.
void RegisterActions(httplib::Server& http, Backends& backends, AuditTrail& audit);

}  // namespace formica::console
