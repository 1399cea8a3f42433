// The process's transport setting (formica/common/tls.h) and the gRPC
// credentials made from it (formica/internal/credentials.h).
//
// gRPC's own certificate check is turned off on both sides and replaced by
// PeerCheck, an external verifier doing the same with OpenSSL (chain to the
// CA bundle, validity dates, and on the client the dialled host), so that a
// refusal is logged naming the certificate and the reason.
#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/server_context.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/tls.h"
#include "formica/internal/credentials.h"

namespace formica {
namespace {

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;
using StorePtr = std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)>;

std::string OpenSslError() {
  unsigned long e = ERR_get_error();  // NOLINT(runtime/int): OpenSSL's type
  ERR_clear_error();
  if (e == 0) return "not PEM";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

absl::StatusOr<std::string> ReadFile(const std::string& what, const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is not set"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": cannot be read"));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Every certificate of a PEM text, in order.
std::vector<X509Ptr> ParseCertificates(absl::string_view pem) {
  std::vector<X509Ptr> out;
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr))
    out.emplace_back(x, X509_free);
  BIO_free(bio);
  ERR_clear_error();  // the end of the text reads as an error
  return out;
}

using CrlPtr = std::unique_ptr<X509_CRL, decltype(&X509_CRL_free)>;

// Every certificate revocation list of a PEM text, in order.
std::vector<CrlPtr> ParseCrls(absl::string_view pem) {
  std::vector<CrlPtr> out;
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  while (X509_CRL* c = PEM_read_bio_X509_CRL(bio, nullptr, nullptr, nullptr))
    out.emplace_back(c, X509_CRL_free);
  BIO_free(bio);
  ERR_clear_error();
  return out;
}

std::string NameText(X509_NAME* name) {
  char buf[512];
  X509_NAME_oneline(name, buf, sizeof buf);
  return buf;
}

std::string TimeText(const ASN1_TIME* t) {
  BIO* bio = BIO_new(BIO_s_mem());
  ASN1_TIME_print(bio, t);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);  // NOLINT(runtime/int): OpenSSL's type
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

// The identity rule of tls.h over a parsed certificate.
std::string IdentityOf(X509* cert) {
  std::string identity;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans != nullptr && i < sk_GENERAL_NAME_num(sans) && identity.empty(); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
    if (n->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = n->d.uniformResourceIdentifier;
    std::string text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                     static_cast<size_t>(ASN1_STRING_length(uri)));
    if (absl::StartsWith(text, "spiffe://")) identity = text;
  }
  GENERAL_NAMES_free(sans);
  if (!identity.empty()) return identity;
  char cn[256] = {0};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0) {
    return cn;
  }
  return "";
}

// The hosts of a dialled target: "127.0.0.1:7370" -> {"127.0.0.1"},
// "[::1]:7370" -> {"::1"}, "dns:///a.b:1" -> {"a.b"}, and for a list of
// endpoints ("ipv4:10.0.0.1:2379,10.0.0.2:2379") each one's host.
std::vector<std::string> HostsOf(absl::string_view target) {
  if (size_t scheme = target.find(":///"); scheme != absl::string_view::npos) {
    target.remove_prefix(scheme + 4);
  } else if (absl::StartsWith(target, "ipv4:") || absl::StartsWith(target, "ipv6:")) {
    target.remove_prefix(5);
  }
  std::vector<std::string> hosts;
  for (absl::string_view one : absl::StrSplit(target, ',', absl::SkipEmpty())) {
    if (absl::StartsWith(one, "[")) {
      size_t end = one.find(']');
      hosts.emplace_back(one.substr(1, end == absl::string_view::npos ? end : end - 1));
      continue;
    }
    size_t colon = one.find(':');
    if (colon != absl::string_view::npos && one.find(':', colon + 1) == absl::string_view::npos) {
      one = one.substr(0, colon);
    }
    hosts.emplace_back(one);
  }
  return hosts;
}

// The CA bundle and the revocation lists, read again when their files
// change (looked at no more often than `reload`), and the check of a
// peer's chain against them.
class Trust {
 public:
  Trust(std::string ca_file, std::string crl_file, absl::Duration reload)
      : ca_file_(std::move(ca_file)), crl_file_(std::move(crl_file)), reload_(reload) {}
  ~Trust() {
    if (store_ != nullptr) X509_STORE_free(store_);
  }
  Trust(const Trust&) = delete;
  Trust& operator=(const Trust&) = delete;

  // OK, or UNAUTHENTICATED naming the certificate and the reason (logged).
  // `leaf_pem` is the peer's certificate; `chain_pem` what it sent with it
  // (in any order, with or without the leaf, maybe its root), from which
  // only intermediates are taken, never trust.
  // A server's certificate must name one of `hosts` (the endpoints dialled).
  grpc::Status Check(absl::string_view leaf_pem, absl::string_view chain_pem,
                     const std::vector<std::string>& hosts, bool peer_is_server) {
    const char* peer = peer_is_server ? "server" : "client";
    std::vector<X509Ptr> chain = ParseCertificates(leaf_pem);
    if (chain.empty()) return Refuse(absl::StrCat("the ", peer, " sent no certificate"));
    chain.erase(chain.begin() + 1, chain.end());
    for (X509Ptr& c : ParseCertificates(chain_pem)) {
      if (X509_cmp(c.get(), chain[0].get()) != 0) chain.push_back(std::move(c));
    }
    StorePtr store = Store();
    if (store == nullptr) {
      return Refuse(absl::StrCat("the CA bundle ", ca_file_, " cannot be read"));
    }
    STACK_OF(X509)* untrusted = sk_X509_new_null();
    for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted, chain[i].get());
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store.get(), chain[0].get(), untrusted);
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_purpose(
        param, peer_is_server ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT);
    int ok = X509_verify_cert(ctx);
    int error = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    std::string reason = ok == 1 ? "" : X509_verify_cert_error_string(error);
    X509_STORE_CTX_free(ctx);
    sk_X509_free(untrusted);
    ERR_clear_error();
    X509* leaf = chain[0].get();
    if (ok == 1 && peer_is_server) {
      // An IP literal must be an IP SAN; a name a DNS SAN (never the
      // subject's CN). No host to check against fails closed.
      bool named = false;
      for (const std::string& h : hosts) {
        ASN1_OCTET_STRING* ip = a2i_IPADDRESS(h.c_str());
        if (ip != nullptr) {
          ASN1_OCTET_STRING_free(ip);
          named = named || X509_check_ip_asc(leaf, h.c_str(), 0) == 1;
        } else {
          named = named || X509_check_host(leaf, h.c_str(), h.size(),
                                           X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, nullptr) == 1;
        }
      }
      ERR_clear_error();
      if (!named) {
        ok = 0;
        error = X509_V_ERR_HOSTNAME_MISMATCH;
      }
    }
    if (ok == 1) return grpc::Status::OK;
    switch (error) {
      case X509_V_ERR_CERT_HAS_EXPIRED:
        reason = "it has expired";
        break;
      case X509_V_ERR_CERT_NOT_YET_VALID:
        reason = "it is not valid yet";
        break;
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        reason = absl::StrCat("it is not issued by a CA in ", ca_file_, " (", reason, ")");
        break;
      case X509_V_ERR_CERT_REVOKED:
        reason = absl::StrCat("it is revoked (", crl_file_, ")");
        break;
      case X509_V_ERR_UNABLE_TO_GET_CRL:
        reason = absl::StrCat("its issuer has no revocation list in ", crl_file_);
        break;
      case X509_V_ERR_CRL_HAS_EXPIRED:
        reason = absl::StrCat("its issuer's revocation list in ", crl_file_,
                              " has expired (its next update is past)");
        break;
      case X509_V_ERR_HOSTNAME_MISMATCH:
      case X509_V_ERR_IP_ADDRESS_MISMATCH:
        reason =
            absl::StrCat("it does not name the host dialled (", absl::StrJoin(hosts, ", "), ")");
        break;
      default:
        break;
    }
    return Refuse(absl::StrCat("the ", peer, " certificate of '", IdentityOf(leaf), "' (subject ",
                               NameText(X509_get_subject_name(leaf)), ", issuer ",
                               NameText(X509_get_issuer_name(leaf)), ", valid ",
                               TimeText(X509_get0_notBefore(leaf)), " to ",
                               TimeText(X509_get0_notAfter(leaf)), "): ", reason));
  }

 private:
  static grpc::Status Refuse(const std::string& why) {
    std::string message = absl::StrCat("tls: refused ", why);
    spdlog::warn("{}", message);
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, message);
  }

  StorePtr Store() {
    absl::MutexLock lock(&mu_);
    absl::Time now = absl::Now();
    if (store_ == nullptr || now - checked_ >= reload_) {
      checked_ = now;
      std::string stamp = Stamp(ca_file_);
      if (!crl_file_.empty()) stamp += "|" + Stamp(crl_file_);
      if (store_ == nullptr || stamp != stamp_) {
        if (X509_STORE* fresh = Load()) {
          if (store_ != nullptr) X509_STORE_free(store_);
          store_ = fresh;
          stamp_ = stamp;
        }
      }
    }
    if (store_ == nullptr) return StorePtr(nullptr, X509_STORE_free);
    X509_STORE_up_ref(store_);
    return StorePtr(store_, X509_STORE_free);
  }

  // A file's modification time and size, "" when it cannot be read.
  static std::string Stamp(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return "";
    return absl::StrCat(st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, ":", st.st_size);
  }

  // A new store from the files; nullptr (logged) keeps the one before.
  X509_STORE* Load() {
    auto pem = ReadFile("tls CA bundle", ca_file_);
    if (!pem.ok()) return nullptr;
    std::vector<X509Ptr> cas = ParseCertificates(*pem);
    if (cas.empty()) {
      spdlog::error("tls: the CA bundle {} holds no certificate; keeping the one before", ca_file_);
      return nullptr;
    }
    std::vector<CrlPtr> crls;
    if (!crl_file_.empty()) {
      auto crl_pem = ReadFile("tls revocation list", crl_file_);
      if (crl_pem.ok()) crls = ParseCrls(*crl_pem);
      if (crls.empty()) {
        spdlog::error(
            "tls: the revocation list {} cannot be read or holds no CRL; keeping the "
            "lists before",
            crl_file_);
        return nullptr;
      }
    }
    X509_STORE* store = X509_STORE_new();
    for (const X509Ptr& ca : cas) X509_STORE_add_cert(store, ca.get());
    for (const CrlPtr& crl : crls) X509_STORE_add_crl(store, crl.get());
    // Each peer certificate is looked up in its issuer's list; an issuer
    // without one (or with an expired one) fails closed.
    if (!crls.empty()) X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    return store;
  }

  const std::string ca_file_;
  const std::string crl_file_;  // "" when revocation is not checked
  const absl::Duration reload_;
  absl::Mutex mu_;
  X509_STORE* store_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::string stamp_ ABSL_GUARDED_BY(mu_);  // of the files store_ was made from
  absl::Time checked_ ABSL_GUARDED_BY(mu_);
};

class PeerCheck final : public grpc::experimental::ExternalCertificateVerifier {
 public:
  PeerCheck(std::shared_ptr<Trust> trust, bool peer_is_server)
      : trust_(std::move(trust)), peer_is_server_(peer_is_server) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)> /*callback*/, grpc::Status* sync_status) override {
    grpc::string_ref leaf = request->peer_cert();
    grpc::string_ref chain = request->peer_cert_full_chain();
    grpc::string_ref target = request->target_name();
    *sync_status = trust_->Check(
        absl::string_view(leaf.data(), leaf.size()), absl::string_view(chain.data(), chain.size()),
        HostsOf(absl::string_view(target.data(), target.size())), peer_is_server_);
    return true;  // answered synchronously
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest* /*request*/) override {}

 private:
  std::shared_ptr<Trust> trust_;
  bool peer_is_server_;
};

struct Setting {
  TlsOptions options;
  std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> provider;
  std::shared_ptr<grpc::experimental::CertificateVerifier> check_server;
  std::shared_ptr<grpc::experimental::CertificateVerifier> check_client;
};

absl::Mutex setting_mu;
std::shared_ptr<const Setting>& CurrentSetting() ABSL_EXCLUSIVE_LOCKS_REQUIRED(setting_mu) {
  static auto* setting = new std::shared_ptr<const Setting>();
  return *setting;
}

std::shared_ptr<const Setting> Snapshot() {
  absl::MutexLock lock(&setting_mu);
  return CurrentSetting();
}

absl::Status CheckFiles(const TlsOptions& o) {
  auto ca = ReadFile("tls CA bundle", o.ca_file);
  if (!ca.ok()) return ca.status();
  if (ParseCertificates(*ca).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls CA bundle ", o.ca_file, ": holds no PEM certificate"));
  }
  auto cert = ReadFile("tls certificate", o.cert_file);
  if (!cert.ok()) return cert.status();
  std::vector<X509Ptr> chain = ParseCertificates(*cert);
  if (chain.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls certificate ", o.cert_file, ": holds no PEM certificate"));
  }
  auto key_pem = ReadFile("tls key", o.key_file);
  if (!key_pem.ok()) return key_pem.status();
  BIO* bio = BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls key ", o.key_file, ": not a PEM private key (", OpenSslError(), ")"));
  }
  bool match = X509_check_private_key(chain[0].get(), key) == 1;
  EVP_PKEY_free(key);
  ERR_clear_error();
  if (!match) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls key ", o.key_file, ": does not match the certificate ", o.cert_file));
  }
  if (!o.crl_file.empty()) {
    auto crl = ReadFile("tls revocation list", o.crl_file);
    if (!crl.ok()) return crl.status();
    if (ParseCrls(*crl).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tls revocation list ", o.crl_file, ": holds no PEM CRL"));
    }
  }
  if (o.reload_interval < absl::Seconds(1)) {
    return absl::InvalidArgumentError("tls reload interval must be 1s at least");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status UseTls(const TlsOptions& options) {
  if (absl::Status st = CheckFiles(options); !st.ok()) return st;
  auto s = std::make_shared<Setting>();
  s->options = options;
  s->provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      options.key_file, options.cert_file, options.ca_file,
      static_cast<unsigned>(absl::ToInt64Seconds(options.reload_interval)));
  auto trust = std::make_shared<Trust>(options.ca_file, options.crl_file, options.reload_interval);
  s->check_server = grpc::experimental::ExternalCertificateVerifier::Create<PeerCheck>(trust, true);
  s->check_client =
      grpc::experimental::ExternalCertificateVerifier::Create<PeerCheck>(trust, false);
  absl::MutexLock lock(&setting_mu);
  CurrentSetting() = std::move(s);
  return absl::OkStatus();
}

absl::Status UseTlsFromEnvironment() {
  const char* names[] = {"FORMICA_TLS_CA", "FORMICA_TLS_CERT", "FORMICA_TLS_KEY"};
  std::vector<std::string> values, missing;
  for (const char* n : names) {
    const char* v = std::getenv(n);
    values.emplace_back(v == nullptr ? "" : v);
    if (values.back().empty()) missing.emplace_back(n);
  }
  if (missing.size() == 3) return absl::OkStatus();
  if (!missing.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS is half configured: ", absl::StrJoin(missing, ", "), " not set"));
  }
  TlsOptions o{values[0], values[1], values[2]};
  if (const char* crl = std::getenv("FORMICA_TLS_CRL"); crl != nullptr) o.crl_file = crl;
  if (const char* r = std::getenv("FORMICA_TLS_RELOAD"); r != nullptr && *r != '\0') {
    if (!absl::ParseDuration(r, &o.reload_interval)) {
      return absl::InvalidArgumentError(
          absl::StrCat("FORMICA_TLS_RELOAD: '", r, "' is not a duration such as 10s"));
    }
  }
  return UseTls(o);
}

void UsePlaintext() {
  absl::MutexLock lock(&setting_mu);
  CurrentSetting().reset();
}

std::optional<TlsOptions> CurrentTls() {
  auto s = Snapshot();
  if (s == nullptr) return std::nullopt;
  return s->options;
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() {
  auto s = Snapshot();
  if (s == nullptr) return grpc::InsecureChannelCredentials();
  grpc::experimental::TlsChannelCredentialsOptions o;
  o.set_certificate_provider(s->provider);
  o.watch_root_certs();
  o.watch_identity_key_cert_pairs();
  o.set_verify_server_certs(false);  // PeerCheck does it, and logs a refusal
  o.set_check_call_host(false);      // PeerCheck checks the host too
  o.set_certificate_verifier(s->check_server);
  return grpc::experimental::TlsCredentials(o);
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials() {
  auto s = Snapshot();
  if (s == nullptr) return grpc::InsecureServerCredentials();
  grpc::experimental::TlsServerCredentialsOptions o(s->provider);
  o.watch_root_certs();
  o.watch_identity_key_cert_pairs();
  o.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
  o.set_certificate_verifier(s->check_client);
  return grpc::experimental::TlsServerCredentials(o);
}

std::string PeerIdentity(const grpc::AuthContext& context) {
  for (const grpc::string_ref& uri : context.FindPropertyValues(GRPC_PEER_URI_PROPERTY_NAME)) {
    absl::string_view v(uri.data(), uri.size());
    if (absl::StartsWith(v, "spiffe://")) return std::string(v);
  }
  for (const grpc::string_ref& san : context.FindPropertyValues(GRPC_X509_SAN_PROPERTY_NAME)) {
    absl::string_view v(san.data(), san.size());
    if (absl::StartsWith(v, "spiffe://")) return std::string(v);
  }
  auto cn = context.FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
  if (!cn.empty()) return std::string(cn[0].data(), cn[0].size());
  return "";
}

absl::Status CheckPeerIs(grpc::ServerContextBase* context, absl::string_view expected,
                         absl::string_view act) {
  if (expected.empty() || Snapshot() == nullptr) return absl::OkStatus();
  std::string identity = PeerIdentity(*context->auth_context());
  if (identity == expected) return absl::OkStatus();
  absl::Status st = absl::PermissionDeniedError(
      absl::StrCat("identity ", identity.empty() ? "(no certificate)" : "'" + identity + "'",
                   " may not ", act, ": only '", expected, "' may"));
  spdlog::warn("{}", std::string(st.message()));
  return st;
}

}  // namespace formica
