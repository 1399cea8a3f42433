// The gRPC credentials of the process's transport setting
// (formica/common/tls.h), for every place Formica dials or listens, and the
// identity a peer proved with its certificate.
#pragma once

#include <memory>
#include <string>

namespace grpc {
class AuthContext;
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace formica {

// Mutual TLS with the watched files when UseTls is in force, else insecure.
std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials();
std::shared_ptr<grpc::ServerCredentials> ServerCredentials();

// The peer's identity: the first "spiffe://" URI subject alternative name
// of its certificate, else its subject common name; "" over plaintext.
std::string PeerIdentity(const grpc::AuthContext& context);

}  // namespace formica
