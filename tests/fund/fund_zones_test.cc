// The fund in two LDC zones (docs/fund.md, docs/ldc.md): each zone's
// fund-server serves and stores only the users of the shards its zone owns;
// dtsd and dmsd live in the GZone. Orders for users of both zones go to the
// right zone and money and shares add up in each.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "formica/dds/data_source.h"
#include "fund_fixture.h"
#include "store.h"
#include "trade_file.h"

namespace fund::testing {
namespace {

class FundZones : public FundTest {
 protected:
  std::vector<std::string> DaemonFlags() const override { return {"--set", "server.zone=gz"}; }

  void SetUp() override {
    FundTest::SetUp();
    std::string rules =
        "ldc:\n  zones:\n"
        "    rz-a: {kind: rzone, data_center: dc-a, city: hangzhou, shards: \"00-49\"}\n"
        "    rz-b: {kind: rzone, data_center: dc-b, city: shanghai, shards: \"50-99\"}\n"
        "    gz: {kind: gzone, data_center: dc-a, city: hangzhou}\n"
        "  global_services: [formica.dts.v1.Coordinator, formica.dms.v1.Broker, "
        "formica.dms.Transactions]\n";
    ASSERT_TRUE(WriteFileAtomically(dir_.File("rules.yaml"), rules).ok());
    auto apply = Subprocess::Start({formica::testing::BinaryPath("tools/formicactl"), "--registry",
                                    dsrd_->address(), "ldc", "apply", dir_.File("rules.yaml")},
                                   dir_.File("apply.log"));
    ASSERT_TRUE(apply.ok());
    ASSERT_EQ((*apply)->Wait(absl::Seconds(30)), 0) << (*apply)->Output();
    for (const char* zone : {"a", "b"}) {
      ::mkdir(dir_.File(zone).c_str(), 0755);
      zones_.push_back(
          StartFund("account,fund,gateway,ledger",
                    {"--zone", absl::StrCat("rz-", zone), "--ldc", "--data", dir_.File(zone)}));
      ASSERT_TRUE(zones_.back() != nullptr);
      formica::rpc::ClientOptions o;
      o.app_name = "fund-test";
      o.zone = absl::StrCat("rz-", zone);
      zone_rpc_.push_back(std::move(*formica::rpc::Client::Create(o, registry_.get())));
    }
  }
  void TearDown() override {
    zone_rpc_.clear();
    FundTest::TearDown();
  }

  // Rows for `user` in the accounts of the zone whose data is in `dir`.
  int64_t RowsIn(const std::string& dir, int64_t user) {
    auto ds = OpenStore("account", dir, "", {{"accounts", "user_id"}}, {});
    EXPECT_TRUE(ds.ok()) << ds.status();
    auto r = (*ds)->Execute("SELECT count(*) FROM accounts WHERE user_id = $1", {user});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? AsInt(r->rows[0][0]) : -1;
  }

  std::vector<std::unique_ptr<Subprocess>> zones_;
  std::vector<std::unique_ptr<formica::rpc::Client>> zone_rpc_;
};

TEST_F(FundZones, EachUsersOrdersAndDataStayInTheZoneOwningTheUser) {
  DriverOptions o;
  o.users = kUsers;
  o.first_user = 10;  // a routed user id has two digits at least
  o.max_orders = 400;
  o.duration = absl::Seconds(120);
  OrderDriver driver(rpc_.get());  // no zone: the providers send it on
  DriverReport r = driver.Run(o);
  EXPECT_EQ(r.unanswered, 0) << r.last_error;
  EXPECT_GT(r.confirmed, 100);
  EXPECT_EQ(r.repeats_matching, r.repeats);
  // Each zone holds its own half of the users, and the money adds up over both.
  std::vector<formica::rpc::Client*> zones = {zone_rpc_[0].get(), zone_rpc_[1].get()};
  absl::StatusOr<FundTotals> t;
  for (int i = 0; i < 150; ++i) {
    t = ReadTotals(zones);
    if (t.ok() && t->ledger.entries() == r.confirmed && t->shares.incoming() == 0 &&
        t->balances.frozen() == 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->balances.users(), kUsers);
  EXPECT_EQ(t->balances.available() + t->shares.available(), kUsers * kInitial);
  EXPECT_EQ(t->shares.available(), r.purchased - r.redeemed);
  EXPECT_EQ(t->ledger.entries(), r.confirmed);
  auto a = ReadTotals(zone_rpc_[0].get());
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->balances.users(), kUsers / 2) << "zone rz-a holds shards 00-49 only";
  // Per user, wherever the call lands first: what the orders gave.
  for (int64_t user = 10; user <= kUsers; ++user) {
    int64_t net = r.net_shares.count(user) > 0 ? r.net_shares.at(user) : 0;
    auto shares = Of(true, user);
    ASSERT_TRUE(shares.ok()) << user << ": " << shares.status();
    EXPECT_EQ(shares->available(), net) << "user " << user;
  }
  // The rows of user 150 (shard 50) are in rz-b's databases, not rz-a's.
  EXPECT_EQ(RowsIn(dir_.File("a"), 150), 0);
  EXPECT_EQ(RowsIn(dir_.File("b"), 150), 1);
  EXPECT_EQ(RowsIn(dir_.File("a"), 149), 1);
}

}  // namespace
}  // namespace fund::testing
