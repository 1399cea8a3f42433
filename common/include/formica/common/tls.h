// formica/common/tls.h — mutual TLS for every gRPC connection Formica makes
// or serves in this process.
//
// One setting per process: after UseTls, every rpc::Server and every
// connection of rpc::Client, registry::Client, dms::Producer/Consumer,
// dts::Activity/Participant and the LDC admin made from then on runs over
// TLS 1.2+ with client certificates. Each side checks the other's
// certificate against `ca_file` (chain, validity dates); a client also
// checks that the server's certificate names the host it dialled (an IP or
// DNS subject alternative name). A refused certificate is logged with its
// identity, issuer, validity and the reason, and the connection fails.
//
//   formica::TlsOptions tls{.ca_file = "/etc/formica/ca.pem",
//                           .cert_file = "/etc/formica/fund-gateway.pem",
//                           .key_file = "/etc/formica/fund-gateway.key"};
//   if (absl::Status st = formica::UseTls(tls); !st.ok()) { ...; }
//   // or, from FORMICA_TLS_CA, FORMICA_TLS_CERT, FORMICA_TLS_KEY:
//   if (absl::Status st = formica::UseTlsFromEnvironment(); !st.ok()) { ...; }
//
// The files are watched: a certificate, key, CA bundle or revocation list
// replaced on disk is used for new connections within `reload_interval`,
// and established connections carry on. A process's identity is its certificate's first
// URI subject alternative name starting with "spiffe://", else its subject
// common name (docs/security.md).
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace formica {

struct TlsOptions {
  std::string ca_file;    // PEM: the CAs whose certificates this process trusts
  std::string cert_file;  // PEM: this process's certificate (then its intermediates)
  std::string key_file;   // PEM: its private key
  // How often the files are looked at for a change (1 s at least).
  absl::Duration reload_interval = absl::Seconds(10);
  // PEM: certificate revocation lists, one per CA; "" (the default): none
  // checked. When set, a peer certificate that is listed, or whose issuer
  // has no list here or an expired one, is refused (checked when a
  // connection is made; established connections carry on).
  std::string crl_file = {};
};

// From now on, Formica's connections in this process use mutual TLS with
// these files. INVALID_ARGUMENT naming the file when one is missing,
// unreadable, not PEM, or the key does not match the certificate; then
// nothing changes. Objects created before keep what they had.
absl::Status UseTls(const TlsOptions& options);

// UseTls with FORMICA_TLS_CA, FORMICA_TLS_CERT and FORMICA_TLS_KEY (and
// FORMICA_TLS_RELOAD, a duration such as "10s", and FORMICA_TLS_CRL). None set: plaintext, OK.
// Some but not all set: INVALID_ARGUMENT naming the missing ones.
absl::Status UseTlsFromEnvironment();

// Back to plaintext for what is created from now on.
void UsePlaintext();

// The setting in force: nullopt for plaintext.
std::optional<TlsOptions> CurrentTls();

}  // namespace formica
