// The fund's online path end to end (examples/fund, docs/fund.md): orders
// through the gateway as business activities across the account and fund
// services, with the ledger consuming the confirmed messages — under
// injected participant failures and kill -9 of dtsd and dmsd.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <thread>

#include "clearing_master.h"
#include "fund_fixture.h"
#include "postgres.h"
#include "trade_file.h"

namespace fund::testing {
namespace {

using ::testing::HasSubstr;

}  // namespace

using FundOnline = FundTest;

TEST_F(FundOnline, MoneyAndSharesAddUpThroughParticipantFailuresAndDaemonKills) {
  // Account and fund answer UNAVAILABLE after 5% of their successful tries
  // (work done, answer lost): those activities roll back and their cancels
  // must undo the tries.
  auto books = StartFund("account,fund", {"--fail-rate", "0.05"});
  auto front = StartFund("gateway,ledger");
  ASSERT_TRUE(books && front);
  std::atomic<int64_t> sent{0};
  DriverOptions o;
  o.users = kUsers;
  o.concurrency = 8;
  o.max_orders = 1500;
  o.duration = absl::Seconds(240);
  o.max_amount = 30000;
  o.repeat_ratio = 0.05;
  o.call_timeout = absl::Seconds(5);
  o.before_order = [&](int64_t k) { sent = k; };
  OrderDriver driver(rpc_.get());
  DriverReport report;
  std::thread run([&] { report = driver.Run(o); });
  auto wait_sent = [&](int64_t n) {
    while (sent.load() < n && run.joinable()) absl::SleepFor(absl::Milliseconds(20));
  };
  wait_sent(300);
  dtsd_->Kill();  // SIGKILL
  absl::SleepFor(absl::Milliseconds(300));
  StartDtsd();
  wait_sent(800);
  dmsd_->Kill();
  absl::SleepFor(absl::Milliseconds(300));
  StartDmsd();
  run.join();

  EXPECT_GE(report.orders, 1400) << "orders answered";
  EXPECT_EQ(report.unanswered, 0);
  EXPECT_GT(report.confirmed, 500);
  EXPECT_GT(report.refused, 0) << "amounts up to 300.00 on 1000.00 accounts must refuse some";
  EXPECT_GT(report.call_errors, 0) << "injected failures and kills must have failed some calls";
  EXPECT_GT(report.repeats, 0);
  EXPECT_EQ(report.repeats_matching, report.repeats);
  for (const std::string& m : report.repeat_mismatches) ADD_FAILURE() << m;

  absl::StatusOr<FundTotals> t;
  absl::Time until = absl::Now() + absl::Seconds(90);
  while (absl::Now() < until) {
    t = ReadTotals(rpc_.get());
    if (t.ok() && t->balances.frozen() == 0 && t->balances.incoming() == 0 &&
        t->shares.frozen() == 0 && t->shares.incoming() == 0 &&
        t->ledger.entries() == report.confirmed) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(t.ok()) << t.status();
  // Nothing left frozen or in transit; money is conserved.
  EXPECT_EQ(t->balances.frozen() + t->balances.incoming(), 0);
  EXPECT_EQ(t->shares.frozen() + t->shares.incoming(), 0);
  EXPECT_EQ(t->balances.available() + t->shares.available(), kUsers * kInitial);
  EXPECT_EQ(t->shares.available(), report.purchased - report.redeemed);
  // The ledger has every confirmed order once, and nothing else.
  EXPECT_EQ(t->ledger.entries(), report.confirmed);
  EXPECT_EQ(t->ledger.purchased(), report.purchased);
  EXPECT_EQ(t->ledger.redeemed(), report.redeemed);
  // Per user: shares, balance and statement as the client was answered.
  for (int64_t user = 1; user <= kUsers; ++user) {
    int64_t net = report.net_shares.count(user) > 0 ? report.net_shares.at(user) : 0;
    auto shares = Of(true, user);
    auto balance = Of(false, user);
    auto statement = Statement(user);
    ASSERT_TRUE(shares.ok() && balance.ok() && statement.ok()) << user;
    EXPECT_EQ(shares->available(), net) << "user " << user;
    EXPECT_EQ(balance->available(), kInitial - net) << "user " << user;
    EXPECT_EQ(statement->purchased() - statement->redeemed(), net) << "user " << user;
  }
}

TEST_F(FundOnline, RefusalsAndBadOrdersAreAnsweredAsTheClientGetsThem) {
  auto books = StartFund("account,fund");
  auto front = StartFund("gateway,ledger");
  ASSERT_TRUE(books && front);
  OrderDriver driver(rpc_.get());
  auto order = [](const std::string& id, const std::string& user, v1::Kind kind, int64_t amount) {
    v1::Order o;
    o.set_client_order_id(id);
    o.set_user_id(user);
    o.set_kind(kind);
    o.set_amount(amount);
    return o;
  };
  // More than the balance: refused, nothing frozen.
  auto r = driver.Place(order("big", "7", v1::PURCHASE, kInitial + 1), absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->confirmed());
  EXPECT_EQ(r->refusal(), absl::StrCat("insufficient balance: user 7 has ", kInitial,
                                       " available, needs ", kInitial + 1));
  // Redeeming shares one does not have.
  r = driver.Place(order("red", "8", v1::REDEEM, 1), absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->confirmed());
  EXPECT_THAT(r->refusal(), HasSubstr("insufficient shares: user 8 has 0 available"));
  // A user without an account.
  r = driver.Place(order("ghost", "999999", v1::PURCHASE, 5), absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->confirmed());
  EXPECT_THAT(r->refusal(), HasSubstr("user 999999 has no balance"));
  // A confirmed order, then its repeat: the first result, not a second purchase.
  auto first = driver.Place(order("buy-1", "9", v1::PURCHASE, 500), absl::Seconds(10));
  ASSERT_TRUE(first.ok() && first->confirmed()) << first.status();
  auto again = driver.Place(order("buy-1", "9", v1::PURCHASE, 500), absl::Seconds(10));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->confirmed());
  EXPECT_TRUE(again->repeated());
  EXPECT_EQ(again->activity_id(), first->activity_id());
  // The refused one repeated: refused again with the same words.
  auto refused_again =
      driver.Place(order("big", "7", v1::PURCHASE, kInitial + 1), absl::Seconds(10));
  ASSERT_TRUE(refused_again.ok());
  EXPECT_TRUE(refused_again->repeated());
  EXPECT_FALSE(refused_again->confirmed());
  // The same id for another order.
  auto reused = driver.Place(order("buy-1", "9", v1::PURCHASE, 501), absl::Seconds(10));
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(
      reused.status().message(),
      HasSubstr("client order id buy-1 of user 9 was used for another order (PURCHASE of 500)"));
  // Bad input: INVALID_ARGUMENT naming what is wrong.
  struct Bad {
    v1::Order order;
    std::string says;
  };
  for (const Bad& bad : std::vector<Bad>{
           {order("x1", "abc", v1::PURCHASE, 5), "user id 'abc' is not 1 to 18 decimal digits"},
           {order("x2", "9", v1::PURCHASE, 0), "amount must be positive, got 0"},
           {order("x 3", "9", v1::PURCHASE, 5), "client_order_id 'x 3' must be"},
           {order("x4", "9", v1::KIND_UNSPECIFIED, 5), "kind must be PURCHASE or REDEEM"}}) {
    auto b = driver.Place(bad.order, absl::Seconds(10));
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << b.status();
    EXPECT_THAT(b.status().message(), HasSubstr(bad.says));
  }
  // Only buy-1 moved anything; nothing stays frozen.
  absl::SleepFor(absl::Milliseconds(500));
  auto b7 = Of(false, 7);
  auto b9 = Of(false, 9);
  auto s9 = Of(true, 9);
  ASSERT_TRUE(b7.ok() && b9.ok() && s9.ok());
  EXPECT_EQ(b7->available(), kInitial);
  EXPECT_EQ(b7->frozen(), 0);
  EXPECT_EQ(b9->available(), kInitial - 500);
  EXPECT_EQ(s9->available(), 500);
  auto all = ReadTotals(rpc_.get());
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->balances.frozen() + all->shares.frozen(), 0);
}

TEST_F(FundOnline, RunsOnPostgreSQLThroughADdsFile) {
  auto pg = formica::testing::PostgresServer::Start();
  ASSERT_TRUE(pg.ok()) << pg.status();
  for (const char* service : {"account", "fund", "gateway", "ledger"}) {
    std::string yaml = "dds:\n  databases:\n";
    for (int i = 0; i < 2; ++i) {
      std::string db = absl::StrCat(service, i);
      ASSERT_TRUE((*pg)->CreateDatabase(db).ok());
      absl::StrAppend(&yaml, "    ", db, ":\n      postgres: \"", (*pg)->Dsn(db),
                      "\"\n      shards: ", i == 0 ? "0-49" : "50-99", "\n");
    }
    ASSERT_TRUE(WriteFileAtomically(dir_.File(absl::StrCat("dds-", service, ".yaml")), yaml).ok());
  }
  const std::string dds = dir_.File("dds-{service}.yaml");
  auto books = StartFund("account,fund", {"--dds", dds});
  auto front = StartFund("gateway,ledger", {"--dds", dds});
  ASSERT_TRUE(books && front);
  DriverOptions o;
  o.users = kUsers;
  o.max_orders = 300;
  o.duration = absl::Seconds(120);
  OrderDriver driver(rpc_.get());
  DriverReport r = driver.Run(o);
  EXPECT_EQ(r.unanswered, 0);
  EXPECT_GT(r.confirmed, 100);
  EXPECT_EQ(r.repeats_matching, r.repeats);
  absl::StatusOr<FundTotals> t;
  for (int i = 0; i < 150; ++i) {
    t = ReadTotals(rpc_.get());
    if (t.ok() && t->ledger.entries() == r.confirmed && t->shares.incoming() == 0 &&
        t->balances.frozen() == 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->balances.available() + t->shares.available(), kUsers * kInitial);
  EXPECT_EQ(t->shares.available(), r.purchased - r.redeemed);
  EXPECT_EQ(t->ledger.entries(), r.confirmed);
  EXPECT_EQ(t->balances.users(), kUsers);
  struct stat st;
  EXPECT_NE(::stat(dir_.File("account-0.db").c_str(), &st), 0) << "no SQLite file was used";
}

TEST_F(FundOnline, ACutOffClosesTheDayAndItsClearingReconcilesWithTheOnlineHoldings) {
  auto books = StartFund("account,fund");
  auto front = StartFund("gateway,ledger");
  ASSERT_TRUE(books && front);
  auto worker =
      Subprocess::Start({formica::testing::BinaryPath("examples/fund/fund-clear"), "worker",
                         "--registry", dsrd_->address(), "--fund-data", dir_.path()},
                        dir_.File("worker.log"));
  ASSERT_TRUE(worker.ok());
  ASSERT_TRUE((*worker)->WaitForOutput("serving on", absl::Seconds(20)));
  DriverOptions o;
  o.users = kUsers;
  o.max_orders = 300;
  o.repeat_ratio = 0;
  o.duration = absl::Seconds(120);
  OrderDriver driver(rpc_.get());
  DriverReport day1 = driver.Run(o);
  ASSERT_EQ(day1.unanswered, 0);
  // The cut-off and the export, as an operator runs them.
  auto exported = Subprocess::Start(
      {formica::testing::BinaryPath("examples/fund/fund-clear"), "export", "--registry",
       dsrd_->address(), "--cut-off", "--out", dir_.File("trades-1.csv")},
      dir_.File("export.log"));
  ASSERT_TRUE(exported.ok());
  ASSERT_EQ((*exported)->Wait(absl::Seconds(60)), 0) << (*exported)->Output();
  EXPECT_THAT((*exported)->Output(), HasSubstr("cut-off: day 1 closed, orders now go to day 2"));
  auto trades = ReadTradeFile(dir_.File("trades-1.csv"));
  ASSERT_TRUE(trades.ok()) << trades.status();
  EXPECT_EQ(trades->day, 1);
  EXPECT_EQ(static_cast<int64_t>(trades->trades.size()), day1.confirmed);
  int64_t purchased = 0;
  for (const TradeRecord& t : trades->trades) purchased += t.purchase ? t.amount : 0;
  EXPECT_EQ(purchased, day1.purchased);
  // Cleared against the online holdings: reconciled, each user's closing
  // is what the fund holds plus the day's income.
  ClearingMaster master(rpc_.get());
  ClearingOptions co;
  co.trades_file = dir_.File("trades-1.csv");
  co.work_dir = dir_.File("work");
  co.out_dir = dir_.File("out");
  co.check_online = true;
  co.progress = false;
  co.income = 5000;
  auto r = master.Run(co);
  ASSERT_TRUE(r.ok()) << r.status();
  auto cleared = ReadClearedFile(r->output);
  ASSERT_TRUE(cleared.ok());
  int64_t income = 0;
  for (const ClearedRecord& c : cleared->users) {
    auto held = Of(true, c.user);
    ASSERT_TRUE(held.ok());
    EXPECT_EQ(c.closing - c.income, held->available()) << "user " << c.user;
    income += c.income;
  }
  EXPECT_EQ(income, 5000);
  // An order after the cut-off belongs to day 2...
  v1::Order late;
  late.set_client_order_id("late");
  const int64_t user = trades->trades.front().user;  // one the day-1 clearing knows
  late.set_user_id(std::to_string(user));
  late.set_kind(v1::PURCHASE);
  late.set_amount(100);
  auto placed = driver.Place(late, absl::Seconds(10));
  ASSERT_TRUE(placed.ok() && placed->confirmed()) << placed.status();
  EXPECT_EQ(placed->day(), 2);
  // ...so day 1 checked against the holdings now names that user.
  co.out_dir = dir_.File("out-again");
  auto again = master.Run(co);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr(absl::StrCat("user ", user, ": the fund holds")));
}

}  // namespace fund::testing
