// The fund in two LDC zones (docs/fund.md, docs/ldc.md): each zone's
// fund-server serves and stores only the users of the shards its zone owns,
// and each zone runs its own dmsd, which holds only its users' messages;
// dtsd and the fund-wide totals service (fund.v1.FundTotals) live in the
// GZone. Orders for users of both zones go to the right zone, money and
// shares add up in each and over both, and the day clears over both zones.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <mutex>
#include <set>

#include "formica/dds/data_source.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/ldc/messaging.h"
#include "fund_fixture.h"
#include "gateway.h"
#include "store.h"
#include "totals.h"
#include "trade_file.h"

namespace fund::testing {
namespace {

// Shards 00-49 are rz-a's, 50-99 rz-b's.
std::string ZoneOf(int64_t user) { return user % 100 < 50 ? "rz-a" : "rz-b"; }

class FundZones : public FundTest {
 protected:
  std::vector<std::string> DaemonFlags() const override { return {"--set", "server.zone=gz"}; }
  // The fixture's dmsd is rz-a's; rz-b's is started in SetUp.
  std::vector<std::string> DmsdFlags() const override { return BrokerFlags("rz-a"); }
  static std::vector<std::string> BrokerFlags(const std::string& zone) {
    return {"--set", "server.zone=" + zone, "--set",
            "transactions.participant=formica.dms.Transactions." + zone};
  }

  void SetUp() override {
    FundTest::SetUp();
    StartZoneBroker("rz-b");
    std::string rules =
        "ldc:\n  zones:\n"
        "    rz-a: {kind: rzone, data_center: dc-a, city: hangzhou, shards: \"00-49\"}\n"
        "    rz-b: {kind: rzone, data_center: dc-b, city: shanghai, shards: \"50-99\"}\n"
        "    gz: {kind: gzone, data_center: dc-a, city: hangzhou}\n"
        "  global_services: [formica.dts.v1.Coordinator, fund.v1.FundTotals]\n";
    ASSERT_TRUE(WriteFileAtomically(dir_.File("rules.yaml"), rules).ok());
    auto apply = Subprocess::Start({formica::testing::BinaryPath("tools/formicactl"), "--registry",
                                    dsrd_->address(), "ldc", "apply", dir_.File("rules.yaml")},
                                   dir_.File("apply.log"));
    ASSERT_TRUE(apply.ok());
    ASSERT_EQ((*apply)->Wait(absl::Seconds(30)), 0) << (*apply)->Output();
    zone_clients_ = std::make_unique<ZoneClients>(registry_.get(), "fund-test");
    for (const char* zone : {"a", "b"}) {
      ::mkdir(dir_.File(zone).c_str(), 0755);
      zones_.push_back(
          StartFund("account,fund,gateway,ledger",
                    {"--zone", absl::StrCat("rz-", zone), "--ldc", "--data", dir_.File(zone)}));
      ASSERT_TRUE(zones_.back() != nullptr);
    }
    zones_.push_back(StartFund("totals", {"--zone", "gz", "--ldc"}));
    ASSERT_TRUE(zones_.back() != nullptr);
  }
  void TearDown() override {
    audits_.clear();
    zone_clients_.reset();
    FundTest::TearDown();
  }

  void StartZoneBroker(const std::string& zone) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("dms/dmsd"),
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", formica::testing::PickFreePort()),
                                     "--data-dir",
                                     dir_.File("dmsd-" + zone),
                                     "--registry",
                                     dsrd_->address(),
                                     "--set",
                                     "topics.create=fund.orders:4",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    for (const std::string& flag : BrokerFlags(zone)) argv.push_back(flag);
    auto p = Subprocess::Start(argv, dir_.File("dmsd-" + zone + ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE((*p)->WaitForOutput("dmsd ready on port", absl::Seconds(20))) << (*p)->Output();
    brokers_.push_back(std::move(*p));
  }

  formica::rpc::Client* In(const std::string& zone) {
    auto c = zone_clients_->For(zone);
    EXPECT_TRUE(c.ok()) << c.status();
    return *c;
  }

  // Reads every order-confirmed message of `zone`'s dmsd (a group of its
  // own), recording the order ids and their users' zones.
  void Audit(const std::string& zone) {
    formica::dms::ConsumerOptions o;
    o.group = "fund-audit";
    o.topic = kOrdersTopic;
    o.ordered = false;
    o.start_timeout = absl::Seconds(20);
    auto consumer = formica::dms::Consumer::Start(
        o,
        [this, zone](const formica::dms::ReceivedMessage& m) {
          v1::OrderConfirmed order;
          EXPECT_TRUE(order.ParseFromString(m.body));
          std::lock_guard<std::mutex> lock(mu_);
          audited_[zone].insert(order.order_id());
          if (ZoneOf(std::atoll(order.user_id().c_str())) != zone) {
            misplaced_.push_back(order.order_id() + " on " + zone + "'s dmsd");
          }
          return formica::dms::ConsumeResult::kSuccess;
        },
        In(zone));
    ASSERT_TRUE(consumer.ok()) << consumer.status();
    audits_.push_back(std::move(*consumer));
  }
  size_t Audited() {
    std::lock_guard<std::mutex> lock(mu_);
    return audited_["rz-a"].size() + audited_["rz-b"].size();
  }

  // SELECT `sql` (one row of integers) on `service`'s data in zone dir `dir`.
  std::vector<int64_t> Query(const std::string& service, const std::string& dir,
                             const std::string& sql) {
    auto ds = OpenStore(
        service, dir, "",
        {{"accounts", "user_id"}, {"holdings", "user_id"}, {"statements", "user_id"}}, {});
    EXPECT_TRUE(ds.ok()) << ds.status();
    if (!ds.ok()) return {};
    auto r = (*ds)->Execute(sql);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<int64_t> out;
    if (r.ok() && !r->rows.empty()) {
      for (const auto& v : r->rows[0]) out.push_back(AsInt(v));
    }
    return out;
  }

  // Waits until the fund-wide totals show `confirmed` ledger entries and
  // nothing frozen or incoming.
  absl::StatusOr<v1::FundWideTotals> Settled(int64_t confirmed) {
    absl::StatusOr<v1::FundWideTotals> t;
    for (int i = 0; i < 150; ++i) {
      t = ReadFundWideTotals(rpc_.get());
      if (t.ok() && t->ledger().entries() == confirmed && t->shares().incoming() == 0 &&
          t->balances().frozen() == 0 && t->shares().frozen() == 0 &&
          t->balances().incoming() == 0) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(200));
    }
    return t;
  }

  DriverReport Drive(int64_t orders) {
    DriverOptions o;
    o.users = kUsers;
    o.first_user = 10;  // a routed user id has two digits at least
    o.max_orders = orders;
    o.duration = absl::Seconds(120);
    OrderDriver driver(rpc_.get());  // no zone: the providers send it on
    return driver.Run(o);
  }

  std::unique_ptr<ZoneClients> zone_clients_;
  std::vector<std::unique_ptr<Subprocess>> brokers_;
  std::vector<std::unique_ptr<Subprocess>> zones_;
  std::vector<std::unique_ptr<formica::dms::Consumer>> audits_;
  std::mutex mu_;
  std::map<std::string, std::set<std::string>> audited_;  // zone -> order ids on its dmsd
  std::vector<std::string> misplaced_;
};

TEST_F(FundZones, EachUsersOrdersDataAndMessagesStayInTheZoneOwningTheUser) {
  Audit("rz-a");
  Audit("rz-b");
  DriverReport r = Drive(400);
  EXPECT_EQ(r.unanswered, 0) << r.last_error;
  EXPECT_GT(r.confirmed, 100);
  EXPECT_GT(r.refused, 0) << "no order was refused (and rolled back)";
  EXPECT_EQ(r.repeats_matching, r.repeats);
  absl::StatusOr<v1::FundWideTotals> t = Settled(r.confirmed);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->balances().users(), kUsers);
  EXPECT_EQ(t->balances().available() + t->shares().available(), kUsers * kInitial);
  EXPECT_EQ(t->shares().available(), r.purchased - r.redeemed);
  EXPECT_EQ(t->ledger().entries(), r.confirmed);
  ASSERT_EQ(t->zones_size(), 2);
  EXPECT_EQ(t->zones(0).zone(), "rz-a");
  EXPECT_EQ(t->zones(0).balances().users(), kUsers / 2) << "zone rz-a holds shards 00-49 only";
  // Per user, wherever the call lands first: what the orders gave.
  for (int64_t user = 10; user <= kUsers; ++user) {
    int64_t net = r.net_shares.count(user) > 0 ? r.net_shares.at(user) : 0;
    auto shares = Of(true, user);
    ASSERT_TRUE(shares.ok()) << user << ": " << shares.status();
    EXPECT_EQ(shares->available(), net) << "user " << user;
  }
  // The rows of user 150 (shard 50) are in rz-b's databases, not rz-a's.
  const std::string count150 = "SELECT count(*) FROM accounts WHERE user_id = 150";
  EXPECT_EQ(Query("account", dir_.File("a"), count150), std::vector<int64_t>{0});
  EXPECT_EQ(Query("account", dir_.File("b"), count150), std::vector<int64_t>{1});
  // Each confirmed order's message is on its user's zone's dmsd, and only
  // there; no refused (rolled back) order's message was ever delivered.
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (Audited() < static_cast<size_t>(r.confirmed) && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  absl::SleepFor(absl::Milliseconds(500));  // a late extra message would show by now
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_THAT(misplaced_, ::testing::IsEmpty());
  EXPECT_GT(audited_["rz-a"].size(), 0u);
  EXPECT_GT(audited_["rz-b"].size(), 0u);
  EXPECT_EQ(audited_["rz-a"].size() + audited_["rz-b"].size(), static_cast<size_t>(r.confirmed));
}

TEST_F(FundZones, TheFundWideTotalsAreTheSumOfEachZonesRows) {
  DriverReport r = Drive(300);
  EXPECT_EQ(r.unanswered, 0) << r.last_error;
  absl::StatusOr<v1::FundWideTotals> t = Settled(r.confirmed);
  ASSERT_TRUE(t.ok()) << t.status();
  // Read the databases themselves, zone by zone.
  v1::Totals balances, shares;
  int64_t entries = 0;
  for (const char* zone : {"a", "b"}) {
    const std::string dir = dir_.File(zone);
    std::vector<int64_t> b = Query(
        "account", dir, "SELECT count(*), sum(balance), sum(frozen), sum(incoming) FROM accounts");
    std::vector<int64_t> s = Query(
        "fund", dir, "SELECT count(*), sum(shares), sum(frozen), sum(incoming) FROM holdings");
    std::vector<int64_t> l = Query("ledger", dir, "SELECT count(*) FROM statements");
    ASSERT_EQ(b.size(), 4u);
    ASSERT_EQ(s.size(), 4u);
    ASSERT_EQ(l.size(), 1u);
    const v1::ZoneTotals& z = t->zones(zone[0] == 'a' ? 0 : 1);
    EXPECT_EQ(z.zone(), absl::StrCat("rz-", zone));
    EXPECT_EQ(z.balances().users(), b[0]) << zone;
    EXPECT_EQ(z.balances().available(), b[1]) << zone;
    EXPECT_EQ(z.shares().available(), s[1]) << zone;
    EXPECT_EQ(z.ledger().entries(), l[0]) << zone;
    AddTotals(z.balances(), &balances);
    AddTotals(z.shares(), &shares);
    entries += l[0];
    EXPECT_EQ(b[2] + b[3] + s[2] + s[3], 0) << "zone " << zone << " has money frozen or incoming";
  }
  EXPECT_EQ(t->balances().SerializeAsString(), balances.SerializeAsString());
  EXPECT_EQ(t->shares().SerializeAsString(), shares.SerializeAsString());
  EXPECT_EQ(t->ledger().entries(), entries);
  EXPECT_EQ(t->balances().available() + t->shares().available(), kUsers * kInitial);
  EXPECT_EQ(t->shares().available(), r.purchased - r.redeemed);
}

TEST_F(FundZones, AMessageForAUserAnotherZoneOwnsIsForwardedThere) {
  // As a message left in rz-a's queue while its user's shard moved to rz-b:
  // rz-a's ledger must not skip it but forward it to rz-b's dmsd.
  formica::dms::ProducerOptions po;
  po.producer_group = "fund-test";
  auto producer = formica::dms::Producer::Create(po, In("rz-a"));
  ASSERT_TRUE(producer.ok()) << producer.status();
  v1::OrderConfirmed order;
  order.set_order_id("150/moved-1");
  order.set_user_id("150");
  order.set_kind(v1::PURCHASE);
  order.set_amount(700);
  order.set_day(1);
  formica::dms::OutgoingMessage m;
  m.key = "150";
  m.properties[formica::ldc::kUserProperty] = "150";
  m.dedup_key = "150/moved-1";
  m.body = order.SerializeAsString();
  ASSERT_TRUE((*producer)->Send(kOrdersTopic, m).ok());
  absl::StatusOr<v1::StatementReply> statement;
  for (int i = 0; i < 100; ++i) {
    statement = Statement(150);
    if (statement.ok() && statement->entries_size() > 0) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(statement.ok()) << statement.status();
  ASSERT_EQ(statement->entries_size(), 1) << "rz-b's ledger never got the forwarded message";
  EXPECT_EQ(statement->entries(0).order_id(), "150/moved-1");
  EXPECT_EQ(statement->purchased(), 700);
  const std::string rows = "SELECT count(*) FROM statements WHERE user_id = 150";
  EXPECT_EQ(Query("ledger", dir_.File("b"), rows), std::vector<int64_t>{1});
  EXPECT_EQ(Query("ledger", dir_.File("a"), rows), std::vector<int64_t>{0});
}

TEST_F(FundZones, AfterASwitchAMessageLeftInTheOldZoneIsForwardedToTheNewOwner) {
  // rz-b's fund-server is down (its ledger handles nothing) while a message
  // for user 150 waits on rz-b's dmsd and shard 50 moves to rz-a (the
  // switch goes through once the dead process's registry session lapses).
  zones_[1]->Kill();
  formica::dms::ProducerOptions po;
  po.producer_group = "fund-test";
  auto producer = formica::dms::Producer::Create(po, In("rz-b"));
  ASSERT_TRUE(producer.ok()) << producer.status();
  v1::OrderConfirmed order;
  order.set_order_id("150/queued-1");
  order.set_user_id("150");
  order.set_kind(v1::PURCHASE);
  order.set_amount(900);
  order.set_day(1);
  formica::dms::OutgoingMessage m;
  m.key = "150";
  m.properties[formica::ldc::kUserProperty] = "150";
  m.dedup_key = "150/queued-1";
  m.body = order.SerializeAsString();
  ASSERT_TRUE((*producer)->Send(kOrdersTopic, m).ok());
  auto ctl = Subprocess::Start(
      {formica::testing::BinaryPath("tools/formicactl"), "--registry", dsrd_->address(), "ldc",
       "switch", "--shards", "50", "--to", "rz-a", "--fence-timeout", "20s", "--yes"},
      dir_.File("switch.log"));
  ASSERT_TRUE(ctl.ok());
  EXPECT_EQ((*ctl)->Wait(absl::Seconds(60)), 0) << (*ctl)->Output();
  // Back up under the new rules, rz-b's ledger finds the message queued
  // and forwards it to rz-a, whose ledger writes it there.
  zones_[1] = StartFund("account,fund,gateway,ledger",
                        {"--zone", "rz-b", "--ldc", "--data", dir_.File("b")});
  ASSERT_TRUE(zones_[1] != nullptr);
  const std::string rows = "SELECT count(*) FROM statements WHERE user_id = 150";
  std::vector<int64_t> in_a;
  for (int i = 0; i < 150 && in_a != std::vector<int64_t>{1}; ++i) {
    absl::SleepFor(absl::Milliseconds(200));
    in_a = Query("ledger", dir_.File("a"), rows);
  }
  EXPECT_EQ(in_a, std::vector<int64_t>{1}) << "the message was not forwarded to rz-a";
  EXPECT_EQ(Query("ledger", dir_.File("b"), rows), std::vector<int64_t>{0});
}

TEST_F(FundZones, TheDayClearsOverBothZonesData) {
  DriverReport r = Drive(200);
  EXPECT_EQ(r.unanswered, 0) << r.last_error;
  ASSERT_TRUE(Settled(r.confirmed).ok());
  auto run = [&](const std::string& name, std::vector<std::string> args) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("examples/fund/fund-clear")};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Subprocess::Start(argv, dir_.File(name + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    return std::move(*p);
  };
  auto exported = run("export", {"export", "--registry", dsrd_->address(), "--cut-off", "--zones",
                                 "rz-a,rz-b", "--out", dir_.File("trades-1.csv")});
  ASSERT_EQ(exported->Wait(absl::Seconds(60)), 0) << exported->Output();
  auto trades = ReadTradeFile(dir_.File("trades-1.csv"));
  ASSERT_TRUE(trades.ok()) << trades.status();
  EXPECT_EQ(static_cast<int64_t>(trades->trades.size()), r.confirmed)
      << "the trade file lacks one zone's orders";
  auto worker = run("worker", {"worker", "--registry", dsrd_->address(), "--fund-data",
                               dir_.File("a") + "," + dir_.File("b")});
  ASSERT_TRUE(worker->WaitForOutput("serving on", absl::Seconds(20))) << worker->Output();
  // Told of one zone only: refused as bad input, nothing written.
  auto partial = run("partial", {"run", "--registry", dsrd_->address(), "--trades",
                                 dir_.File("trades-1.csv"), "--work", dir_.File("work"), "--out",
                                 dir_.File("out"), "--check-online", "--zones", "rz-a", "--quiet"});
  EXPECT_EQ(partial->Wait(absl::Seconds(120)), 2) << partial->Output();
  EXPECT_THAT(partial->Output(), ::testing::HasSubstr("answered for zones rz-a,rz-b"));
  EXPECT_FALSE(ReadWholeFile(dir_.File("out/clearing-1.csv")).ok());
  auto cleared =
      run("run", {"run", "--registry", dsrd_->address(), "--trades", dir_.File("trades-1.csv"),
                  "--work", dir_.File("work"), "--out", dir_.File("out"), "--check-online",
                  "--zones", "rz-a,rz-b", "--quiet"});
  ASSERT_EQ(cleared->Wait(absl::Seconds(120)), 0) << cleared->Output();
  EXPECT_THAT(cleared->Output(), ::testing::HasSubstr("reconciled"));
  auto result = ReadClearedFile(dir_.File("out/clearing-1.csv"));
  ASSERT_TRUE(result.ok()) << result.status();
  int64_t closing = 0;
  for (const ClearedRecord& c : result->users) closing += c.closing;
  EXPECT_GE(closing, r.purchased - r.redeemed);  // the day's shares, plus its income
  // A worker that finds a user's rows in two zones' data (here: rz-a's
  // given twice) reports it rather than adding them up.
  ASSERT_EQ(worker->Terminate(), 0) << worker->Output();
  auto twice = run("worker-twice", {"worker", "--registry", dsrd_->address(), "--fund-data",
                                    dir_.File("a") + "," + dir_.File("a")});
  ASSERT_TRUE(twice->WaitForOutput("serving on", absl::Seconds(20))) << twice->Output();
  auto doubled =
      run("doubled", {"run", "--registry", dsrd_->address(), "--trades", dir_.File("trades-1.csv"),
                      "--work", dir_.File("work2"), "--out", dir_.File("out2"), "--check-online",
                      "--zones", "rz-a,rz-b", "--quiet"});
  EXPECT_EQ(doubled->Wait(absl::Seconds(120)), 3) << doubled->Output();
  EXPECT_THAT(doubled->Output(), ::testing::HasSubstr("zones' data at once"));
}

TEST_F(FundZones, TheTotalsServiceRunsOnlyInTheGZoneAndNamesAZoneThatDoesNotAnswer) {
  auto refused = [&](std::vector<std::string> args, const std::string& why) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("examples/fund/fund-server"),
                                     "--registry", dsrd_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("refused.", ++runs_, ".log")));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ((*p)->Wait(absl::Seconds(30)), 2) << (*p)->Output();
    EXPECT_THAT((*p)->Output(), ::testing::HasSubstr(why));
  };
  refused({"--services", "totals"}, "--services totals needs --zone <the gzone> --ldc");
  refused({"--services", "totals", "--zone", "rz-a", "--ldc"},
          "zone 'rz-a' is not the gzone: it hosts the users' services, not 'totals'");
  refused({"--services", "account", "--zone", "gz", "--ldc"},
          "zone 'gz' is the gzone: it hosts the totals service only, not 'account'");
  refused({"--services", "account", "--zone", "rz-c", "--ldc"}, "zone 'rz-c' is not in the LDC");
  // Without one zone's answer there is no fund-wide total.
  ASSERT_TRUE(ReadFundWideTotals(rpc_.get()).ok());
  zones_[1]->Kill();  // rz-b's fund-server
  auto t = ReadFundWideTotals(rpc_.get());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable) << t.status();
  EXPECT_THAT(std::string(t.status().message()), ::testing::HasSubstr("zone rz-b's totals"));
}

}  // namespace
}  // namespace fund::testing
