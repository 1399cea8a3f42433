// Shared fixture for LDC tests: a real dsrd, the rules published at it,
// zones as in-process registry clients with Routers, agent processes, and
// formicactl run as an operator runs it.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formica/ldc/admin.h"
#include "formica/ldc/router.h"
#include "formica/registry/client.h"
#include "process.h"

namespace formica::ldc::testing {

using formica::testing::DsrdProcess;
using formica::testing::Subprocess;
using formica::testing::TempDir;

// zone-a owns 00-49, zone-b 50-99; "global" is the GZone (hangzhou),
// "global-sh" its CZone in shanghai.
inline constexpr char kTwoZones[] = R"(
ldc:
  zones:
    zone-a: {kind: rzone, data_center: dc-1, city: hangzhou, shards: "00-49"}
    zone-b: {kind: rzone, data_center: dc-2, city: shanghai, shards: "50-99"}
    global: {kind: gzone, data_center: dc-1, city: hangzhou}
    global-sh: {kind: czone, data_center: dc-2, city: shanghai}
)";

// One zone's client process, in the test's process: a registry session and
// a Router on it.
struct ZoneClient {
  std::unique_ptr<registry::Client> registry;
  std::unique_ptr<Router> router;
};

class LdcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DsrdProcess::Options options;
    options.data_dir = dir_.File("dsrd");
    options.config = {
        {"session.lease", "2s"}, {"push.warmup", "0s"}, {"push.retry_interval", "300ms"}};
    auto dsrd = DsrdProcess::Start(options);
    ASSERT_TRUE(dsrd.ok()) << dsrd.status();
    dsrd_ = std::move(*dsrd);
    admin_ = RuleAdmin::Connect(dsrd_->address());
  }

  // Publishes `yaml` as the first rules; returns their version.
  uint64_t PublishRules(const std::string& yaml = kTwoZones) {
    absl::StatusOr<RuleSet> rules = ParseRules(yaml);
    EXPECT_TRUE(rules.ok()) << rules.status();
    absl::StatusOr<uint64_t> version = admin_->Put(*rules, 0);
    EXPECT_TRUE(version.ok()) << version.status();
    return version.ok() ? *version : 0;
  }

  registry::ClientOptions RegistryOptions(const std::string& name,
                                          absl::Duration lease = absl::Seconds(2)) {
    registry::ClientOptions o;
    o.registries = {dsrd_->address()};
    o.client_name = name;
    o.lease = lease;
    o.backoff_initial = absl::Milliseconds(50);
    o.backoff_max = absl::Milliseconds(300);
    return o;
  }

  // A registry client and a Router in `zone`, rules applied and reported.
  ZoneClient StartZone(const std::string& zone, const std::string& name = "") {
    ZoneClient z;
    auto registry = registry::Client::Create(RegistryOptions(name.empty() ? zone : name));
    EXPECT_TRUE(registry.ok()) << registry.status();
    z.registry = std::move(*registry);
    RouterOptions options;
    options.zone = zone;
    options.client_name = name.empty() ? zone : name;
    auto router = Router::Start(z.registry.get(), options);
    EXPECT_TRUE(router.ok()) << router.status();
    z.router = std::move(*router);
    EXPECT_TRUE(z.router->AwaitRules(absl::Seconds(10)).ok());
    WaitReported(z.router.get());
    return z;
  }

  static void WaitReported(Router* router) {
    absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (router->reported_version() < router->version() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_EQ(router->reported_version(), router->version());
  }

  // An ldc_agent process in `zone` whose registry lease is `lease_ms`.
  std::unique_ptr<Subprocess> StartAgent(const std::string& zone, const std::string& name,
                                         int lease_ms = 2000, int probe_shard = -1) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tests/ldc/ldc_agent"),
                                     "--registry",
                                     dsrd_->address(),
                                     "--zone",
                                     zone,
                                     "--name",
                                     name,
                                     "--lease-ms",
                                     std::to_string(lease_ms)};
    if (probe_shard >= 0) {
      argv.push_back("--probe-shard");
      argv.push_back(std::to_string(probe_shard));
    }
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat(name, ".", ++runs_, ".log")));
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  // formicactl against this dsrd: (exit code, stdout and stderr).
  std::pair<int, std::string> Ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tools/formicactl"), "--registry",
                                     dsrd_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("ctl.", ++runs_, ".log")));
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait(absl::Seconds(60));
    return {code, (*p)->Output()};
  }

  // Writes `text` to a file in the test's directory; returns its path.
  std::string WriteFile(const std::string& name, const std::string& text) {
    std::string path = dir_.File(name);
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
    return path;
  }

  // Every client's applied version, by client name.
  std::map<std::string, uint64_t> Applied() {
    std::map<std::string, uint64_t> out;
    auto clients = admin_->Clients();
    EXPECT_TRUE(clients.ok()) << clients.status();
    if (clients.ok()) {
      for (const ClientReport& c : *clients) out[c.client] = c.applied_version;
    }
    return out;
  }

  TempDir dir_;
  std::unique_ptr<DsrdProcess> dsrd_;
  std::unique_ptr<RuleAdmin> admin_;
  int runs_ = 0;
};

}  // namespace formica::ldc::testing
