// The audit trail of a daemon's operator acts (docs/security.md, "Audit"):
// one JSON line per act, appended and synced to a file in the daemon's data
// directory before the act is answered, and the formica.audit.v1.Audit
// service that lists them. For daemons; link formica_daemon_support.
//
//   auto audit = AuditLog::Open(data_dir + "/formica-audit.log", "dtsd").value();
//   UseAuditLog(audit.get());                  // what RecordAct writes to
//   server.RegisterService(audit->service());
//   RecordAct(context, "dts.settle", "activity=" + id, status);
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grpc {
class ServerContextBase;
class Service;
}  // namespace grpc

namespace formica {

class AuditLog {
 public:
  // Opens (creating) the file; a torn last line of an earlier crash is
  // skipped when listing.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path,
                                                        std::string daemon);
  ~AuditLog();

  // Records one act of the caller of `context` with its outcome; durable
  // when this returns (an entry that cannot be written is logged).
  void Record(grpc::ServerContextBase* context, absl::string_view action,
              absl::string_view arguments, const absl::Status& result);

  grpc::Service* service();  // formica.audit.v1.Audit

  class Impl;

 private:
  explicit AuditLog(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The process's audit log for RecordAct (null: none); borrowed.
void UseAuditLog(AuditLog* log);
// Records an operator act in the process's audit log, if it has one.
void RecordAct(grpc::ServerContextBase* context, absl::string_view action,
               absl::string_view arguments, const absl::Status& result);

}  // namespace formica
