// Test fixture for the fund example (examples/fund): a real dsrd, dtsd and
// dmsd (topic fund.orders), and fund-server processes, started as a user
// starts them; an rpc::Client and a fund::OrderDriver to talk to them.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "driver.h"
#include "formica/rpc/client.h"
#include "fund/v1/fund.grpc.pb.h"
#include "registry_fixture.h"

namespace fund::testing {

using formica::testing::Subprocess;

class FundTest : public formica::registry::testing::RegistryTest {
 protected:
  static constexpr int64_t kUsers = 200;
  static constexpr int64_t kInitial = 100000;  // cents per account

  void SetUp() override {
    RegistryTest::SetUp();
    dtsd_port_ = formica::testing::PickFreePort();
    dmsd_port_ = formica::testing::PickFreePort();
    StartDtsd();
    StartDmsd();
    registry_ = NewClient("fund-test");
    formica::rpc::ClientOptions o;
    o.app_name = "fund-test";
    o.default_timeout = absl::Seconds(10);
    rpc_ = std::move(*formica::rpc::Client::Create(o, registry_.get()));
  }
  void TearDown() override {
    rpc_.reset();
    registry_.reset();
  }

  // Flags dtsd and dmsd start with besides the fixture's (a zone, say).
  virtual std::vector<std::string> DaemonFlags() const { return {}; }
  // Flags dmsd starts with besides the fixture's (default: DaemonFlags()).
  virtual std::vector<std::string> DmsdFlags() const { return DaemonFlags(); }

  void StartDtsd() {
    std::vector<std::string> argv = {formica::testing::BinaryPath("dts/dtsd"),
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", dtsd_port_),
                                     "--data-dir",
                                     dir_.File("dtsd"),
                                     "--registry",
                                     dsrd_->address(),
                                     "--set",
                                     "phase_two.retry_initial=50ms",
                                     "--set",
                                     "phase_two.retry_max=400ms",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    for (const std::string& flag : DaemonFlags()) argv.push_back(flag);
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("dtsd.", ++runs_, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    dtsd_ = std::move(*p);
    ASSERT_TRUE(dtsd_->WaitForOutput("dtsd ready on port", absl::Seconds(20))) << dtsd_->Output();
  }
  void StartDmsd() {
    std::vector<std::string> argv = {formica::testing::BinaryPath("dms/dmsd"),
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", dmsd_port_),
                                     "--data-dir",
                                     dir_.File("dmsd"),
                                     "--registry",
                                     dsrd_->address(),
                                     "--set",
                                     "topics.create=fund.orders:4",
                                     "--set",
                                     "consume.retry_initial=50ms",
                                     "--set",
                                     "consume.retry_max=200ms",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    for (const std::string& flag : DmsdFlags()) argv.push_back(flag);
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("dmsd.", ++runs_, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    dmsd_ = std::move(*p);
    ASSERT_TRUE(dmsd_->WaitForOutput("dmsd ready on port", absl::Seconds(20))) << dmsd_->Output();
  }

  // A fund-server running `services` with its data under the test's dir.
  std::unique_ptr<Subprocess> StartFund(const std::string& services,
                                        std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("examples/fund/fund-server"),
                                     "--registry",
                                     dsrd_->address(),
                                     "--services",
                                     services,
                                     "--data",
                                     dir_.path(),
                                     "--users",
                                     std::to_string(kUsers),
                                     "--initial",
                                     std::to_string(kInitial)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("fund.", ++runs_, ".log")));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("fund-server ready", absl::Seconds(60))) << (*p)->Output();
    return std::move(*p);
  }

  absl::StatusOr<v1::Totals> Of(bool shares, int64_t user) {
    v1::TotalsRequest req;
    if (user > 0) req.set_user_id(std::to_string(user));
    v1::Totals out;
    formica::rpc::CallOptions call;
    call.idempotent = true;
    if (user > 0) call.context.user_id = std::to_string(user);  // routed to the user's zone
    absl::Status st =
        shares ? rpc_->CallWithStub<v1::Fund>(v1::Fund::service_full_name(), call,
                                              [&](v1::Fund::Stub& s, grpc::ClientContext* c) {
                                                return s.Shares(c, req, &out);
                                              })
               : rpc_->CallWithStub<v1::Account>(v1::Account::service_full_name(), call,
                                                 [&](v1::Account::Stub& s, grpc::ClientContext* c) {
                                                   return s.Balances(c, req, &out);
                                                 });
    if (!st.ok()) return st;
    return out;
  }

  absl::StatusOr<v1::StatementReply> Statement(int64_t user) {
    v1::StatementRequest req;
    req.set_user_id(std::to_string(user));
    v1::StatementReply out;
    absl::Status st = rpc_->CallWithStub<v1::Ledger>(
        v1::Ledger::service_full_name(), {},
        [&](v1::Ledger::Stub& s, grpc::ClientContext* c) { return s.Statement(c, req, &out); });
    if (!st.ok()) return st;
    return out;
  }

  int dtsd_port_ = 0;
  int dmsd_port_ = 0;
  int runs_ = 0;
  std::unique_ptr<Subprocess> dtsd_;
  std::unique_ptr<Subprocess> dmsd_;
  std::unique_ptr<formica::registry::Client> registry_;
  std::unique_ptr<formica::rpc::Client> rpc_;
};

}  // namespace fund::testing
