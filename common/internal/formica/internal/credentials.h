// The gRPC credentials of the process's transport setting
// (formica/common/tls.h), for every place Formica dials or listens, and the
// identity a peer proved with its certificate.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace grpc {
class AuthContext;
class ChannelCredentials;
class ServerContextBase;
class ServerCredentials;
}  // namespace grpc

namespace formica {

// Mutual TLS with the watched files when UseTls is in force, else insecure.
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials();
std::shared_ptr<grpc::ServerCredentials> ServerCredentials();

// The peer's identity: the first "spiffe://" URI subject alternative name
// of its certificate, else its subject common name; "" over plaintext.
std::string PeerIdentity(const grpc::AuthContext& context);

// For a call only one process may make (a DTS participant's confirm and
// cancel, which dtsd sends): OK when `expected` is "", when this process
// runs without TLS, or when the caller of `context` proved the identity
// `expected`; else PERMISSION_DENIED naming the caller, what it may not do
// (`act`, e.g. "cancel actions of participant 'bank.a'") and `expected`,
// logged.
absl::Status CheckPeerIs(grpc::ServerContextBase* context, absl::string_view expected,
                         absl::string_view act);

}  // namespace formica
