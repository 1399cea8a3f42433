// formicactl: audit, the operator acts each daemon recorded (docs/security.md).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "formica/audit/v1/audit.grpc.pb.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/credentials.h"
#include "formicactl.h"

namespace formica::ctl {

// audit [dsrd|dtsd|dmsd] [--limit N]: the newest acts of each daemon asked
// (all three by default), oldest first. A daemon that does not answer is
// named on stderr and the exit code is 1; the others are still listed.
int Audit(const Flags& f, const std::vector<std::string>& args) {
  if (args.size() > 2) return Usage("audit takes at most one daemon: dsrd, dtsd or dmsd");
  std::vector<std::pair<std::string, std::string>> daemons = {
      {"dsrd", f.registry}, {"dtsd", f.dts}, {"dmsd", f.dms}};
  if (args.size() == 2) {
    auto it = std::find_if(daemons.begin(), daemons.end(),
                           [&](const auto& d) { return d.first == args[1]; });
    if (it == daemons.end()) {
      return Usage(absl::StrCat("audit: unknown daemon '", args[1], "' (dsrd, dtsd or dmsd)"));
    }
    daemons = {*it};
  }
  audit::v1::ListAuditResponse all;
  int code = 0;
  for (const auto& [name, address] : daemons) {
    auto stub =
        audit::v1::Audit::NewStub(grpc::CreateChannel(address, formica::ChannelCredentials()));
    audit::v1::ListAuditRequest req;
    req.set_limit(f.limit);
    audit::v1::ListAuditResponse resp;
    grpc::Status st = stub->List(CallContext(f).get(), req, &resp);
    if (!st.ok()) {
      std::fprintf(stderr, "formicactl: %s at %s: %s\n", name.c_str(), address.c_str(),
                   formica::FromGrpcStatus(st).ToString().c_str());
      code = 1;
      continue;
    }
    for (auto& e : *resp.mutable_entries()) *all.add_entries() = std::move(e);
  }
  std::stable_sort(all.mutable_entries()->begin(), all.mutable_entries()->end(),
                   [](const audit::v1::AuditEntry& a, const audit::v1::AuditEntry& b) {
                     return a.time_unix_ms() < b.time_unix_ms();
                   });
  if (f.output == Output::kJson) {
    int printed = PrintJson(all);
    return code != 0 ? code : printed;
  }
  std::printf("%-23s %-5s %-36s %-22s %-40s %s\n", "TIME", "AT", "IDENTITY", "ACTION", "ARGUMENTS",
              "RESULT");
  for (const audit::v1::AuditEntry& e : all.entries()) {
    std::string when = absl::FormatTime(
        "%Y-%m-%d %H:%M:%E3S", absl::FromUnixMillis(e.time_unix_ms()), absl::UTCTimeZone());
    std::printf("%-23s %-5s %-36s %-22s %-40s %s\n", when.c_str(), e.daemon().c_str(),
                e.identity().empty() ? "-" : e.identity().c_str(), e.action().c_str(),
                e.arguments().c_str(), e.result().c_str());
  }
  return code;
}

}  // namespace formica::ctl
