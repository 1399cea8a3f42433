// The security tests' fixture: certificates made by deploy/certs.sh into a
// temp dir, a dsrd with a `tls` section, formicactl and daemons run with
// chosen identities.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formica/common/tls.h"
#include "formica/registry/client.h"
#include "gtest/gtest.h"
#include "process.h"

namespace formica {

using testing::BinaryPath;
using testing::DsrdProcess;
using testing::Subprocess;
using testing::TempDir;

// Runs a command to its end; (exit code, output).
inline std::pair<int, std::string> RunToEnd(const std::vector<std::string>& argv,
                                            const std::string& log) {
  auto p = Subprocess::Start(argv, log);
  if (!p.ok()) return {-1, p.status().ToString()};
  int code = (*p)->Wait(absl::Seconds(60));
  return {code, (*p)->Output()};
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = dir_.File("certs");
    other_ = dir_.File("other-ca");
    MakeCerts(certs_, {"dsrd", "dtsd", "dmsd", "bank-a", "bank-b", "transfer", "echo", "operator",
                       "tester"});
    MakeCerts(certs_, {"--days", "-1", "expired"});
    MakeCerts(other_, {"tester"});
  }
  void TearDown() override { UsePlaintext(); }

  void MakeCerts(const std::string& dir, std::vector<std::string> names) {
    std::vector<std::string> argv = {std::string(FORMICA_SOURCE_DIR) + "/deploy/certs.sh", "--dir",
                                     dir};
    argv.insert(argv.end(), names.begin(), names.end());
    auto [code, out] = RunToEnd(argv, dir_.File(absl::StrCat("certs", ++runs_, ".log")));
    ASSERT_EQ(code, 0) << out;
  }

  // The `tls` keys of a daemon with identity `name`.
  std::map<std::string, std::string> TlsKeys(const std::string& name,
                                             const std::string& dir = "") const {
    const std::string& d = dir.empty() ? certs_ : dir;
    return {{"tls.ca_file", d + "/ca.pem"},
            {"tls.cert_file", d + "/" + name + ".pem"},
            {"tls.key_file", d + "/" + name + ".key"},
            {"tls.reload_interval", "1s"}};
  }
  std::vector<std::string> TlsSet(const std::string& name) const {
    std::vector<std::string> out;
    for (const auto& [k, v] : TlsKeys(name)) {
      out.push_back("--set");
      out.push_back(k + "=" + v);
    }
    return out;
  }
  // `argv` run with FORMICA_TLS_* naming `name`'s files (as a user's
  // service reads them with UseTlsFromEnvironment).
  std::vector<std::string> WithTls(const std::string& name, std::vector<std::string> argv,
                                   const std::string& dir = "") const {
    const std::string& d = dir.empty() ? certs_ : dir;
    std::vector<std::string> out = {"/usr/bin/env", "FORMICA_TLS_CA=" + d + "/ca.pem",
                                    "FORMICA_TLS_CERT=" + d + "/" + name + ".pem",
                                    "FORMICA_TLS_KEY=" + d + "/" + name + ".key",
                                    "FORMICA_TLS_RELOAD=1s"};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
  }
  void UseTlsAs(const std::string& name, const std::string& dir = "") {
    const std::string& d = dir.empty() ? certs_ : dir;
    ASSERT_TRUE(
        UseTls({d + "/ca.pem", d + "/" + name + ".pem", d + "/" + name + ".key", absl::Seconds(1)})
            .ok());
  }

  void StartDsrd(const std::string& listen_host = "127.0.0.1",
                 const std::map<std::string, std::string>& extra = {}) {
    DsrdProcess::Options o;
    o.data_dir = dir_.File("dsrd");
    o.config = TlsKeys("dsrd");
    o.config["push.warmup"] = "0s";
    for (const auto& [k, v] : extra) o.config[k] = v;
    if (listen_host != "127.0.0.1") {
      o.port = testing::PickFreePort();
      o.config["server.listen"] = absl::StrCat(listen_host, ":", o.port);
    }
    auto d = DsrdProcess::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    dsrd_ = std::move(*d);
  }

  // formicactl as `name` (files of `dir`), or without TLS when `name` is "".
  std::pair<int, std::string> Ctl(const std::string& name, std::vector<std::string> args,
                                  const std::string& dir = "", const std::string& registry = "") {
    const std::string& d = dir.empty() ? certs_ : dir;
    std::vector<std::string> argv = {BinaryPath("tools/formicactl"), "--registry",
                                     registry.empty() ? dsrd_->address() : registry};
    if (!name.empty()) {
      argv.insert(argv.end(), {"--tls-ca", d + "/ca.pem", "--tls-cert", d + "/" + name + ".pem",
                               "--tls-key", d + "/" + name + ".key"});
    }
    argv.insert(argv.end(), args.begin(), args.end());
    return RunToEnd(argv, dir_.File(absl::StrCat("ctl", ++runs_, ".log")));
  }

  std::unique_ptr<Subprocess> StartDaemon(const std::string& binary, const std::string& name,
                                          std::vector<std::string> flags, int* port) {
    *port = testing::PickFreePort();
    std::vector<std::string> argv = {BinaryPath(binary), "--listen",
                                     absl::StrCat("127.0.0.1:", *port), "--registry",
                                     dsrd_->address()};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::vector<std::string> tls = TlsSet(name);
    argv.insert(argv.end(), tls.begin(), tls.end());
    auto p = Subprocess::Start(argv, dir_.File(name + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("ready on port", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  // A registry client of this process (switch identity with UseTlsAs first).
  std::unique_ptr<registry::Client> NewRegistry(const std::string& name) {
    registry::ClientOptions ro;
    ro.client_name = name;
    ro.registries = {dsrd_->address()};
    ro.request_timeout = absl::Seconds(3);
    auto reg = registry::Client::Create(ro);
    EXPECT_TRUE(reg.ok()) << reg.status();
    return reg.ok() ? std::move(*reg) : nullptr;
  }

  // An echo_server as identity "echo", serving once this returns; its
  // address in `address`.
  std::unique_ptr<Subprocess> StartEcho(std::string* address) {
    auto p = Subprocess::Start(
        WithTls("echo", {BinaryPath("tests/rpc/echo_server"), "--registry", dsrd_->address()}),
        dir_.File(absl::StrCat("echo", ++runs_, ".log")));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("serving on ", absl::Seconds(20))) << (*p)->Output();
    *address = (*p)->LineAfter("serving on ");
    return std::move(*p);
  }

  TempDir dir_;
  std::string certs_, other_;
  std::unique_ptr<DsrdProcess> dsrd_;
  int runs_ = 0;
};

}  // namespace formica
