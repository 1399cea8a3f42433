// Who may do what at a daemon (docs/security.md, "Permissions"): rules
// read from the file the `security.permissions_file` key names, looked at
// again for changes every `security.permissions_reload`. Without a file,
// every caller may do everything (an unsecured local setup). With one, an
// action is allowed only when a rule names the caller's identity
// (formica/internal/credentials.h) and the action on the resource:
//
//   rules:
//     - identity: spiffe://formica.local/fund-*     # exact, prefix*, or *
//       allow: [publish fund.*, subscribe *, produce fund.orders]
//     - identity: spiffe://formica.local/operator
//       allow: [operate *, config.write *]
//
// Actions: publish, subscribe (registry services), config.write (registry
// config keys), produce, consume (DMS topics; consume's resource is
// TOPIC/GROUP), operate (an operator command; resource: registry, dts, dms).
// For daemons; link formica_daemon_support.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc {
class ServerContextBase;
}

namespace formica {

// Reads `path` and puts its rules in force for this process, looked at
// again every `reload`; "" removes them (everything allowed).
// INVALID_ARGUMENT naming the file, line and what is wrong; then nothing
// changes.
absl::Status UsePermissions(const std::string& path, absl::Duration reload = absl::Seconds(5));

// OK, or PERMISSION_DENIED naming the identity, the action and the rule
// missing. A changed file is read again first (a file that became invalid
// is logged and the rules before it stay in force).
absl::Status CheckPermission(absl::string_view identity, absl::string_view action,
                             absl::string_view resource);

// OK when `identity` may do `action` on some resource (a rule allows the
// action at all); else PERMISSION_DENIED "identity 'X' may not WHAT: no rule
// in FILE allows it to ACTION anything". For a right that follows from
// another on resources not known yet (checking back a producer group's
// half messages, whatever their topics).
absl::Status CheckPermissionOnAny(absl::string_view identity, absl::string_view action,
                                  absl::string_view what);

// CheckPermission for the caller of `context` (the identity of its
// certificate), a refusal logged. Without a permissions file it returns at
// once, reading nothing of the call (it sits on the produce path).
absl::Status CheckCaller(grpc::ServerContextBase* context, absl::string_view action,
                         absl::string_view resource);

}  // namespace formica
