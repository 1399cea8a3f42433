// The fund's daily clearing (fund-clear, docs/fund.md): the files, the
// two-phase income by largest remainder against an independent
// computation, a worker killed mid-run, reruns, and refusals.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "clearing_master.h"
#include "distribution.h"
#include "formica/rpc/client.h"
#include "fund/v1/fund.grpc.pb.h"
#include "registry_fixture.h"
#include "trade_file.h"

namespace fund::testing {
namespace {

using formica::testing::Subprocess;
using ::testing::HasSubstr;

// ---- independent arithmetic: exact fractions compared by cross-multiplying.
// Parts of `total` by weight, largest remainder first, ties to the smaller key.
std::map<int64_t, int64_t> Shares(int64_t total, const std::map<int64_t, int64_t>& weight_by_key) {
  long double sum = 0;
  __int128 exact_sum = 0;
  for (const auto& [k, w] : weight_by_key) exact_sum += w, sum += w;
  std::map<int64_t, int64_t> out;
  if (exact_sum == 0) {
    for (const auto& [k, w] : weight_by_key) out[k] = 0;
    return out;
  }
  struct Rest {
    int64_t key;
    __int128 rest;  // (total * w) mod sum: the fraction is rest / sum
  };
  std::vector<Rest> rests;
  int64_t given = 0;
  for (const auto& [k, w] : weight_by_key) {
    __int128 product = static_cast<__int128>(total) * w;
    out[k] = static_cast<int64_t>(product / exact_sum);
    given += out[k];
    rests.push_back({k, product - static_cast<__int128>(out[k]) * exact_sum});
  }
  std::stable_sort(rests.begin(), rests.end(), [](const Rest& a, const Rest& b) {
    if (a.rest != b.rest) return a.rest > b.rest;
    return a.key < b.key;
  });
  for (int64_t i = 0; i < total - given; ++i) ++out[rests[i].key];
  return out;
}

TEST(LargestRemainder, SumsToTheCentOverRandomPopulations) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 300; ++round) {
    int n = 1 + static_cast<int>(rng() % 400);
    std::vector<int64_t> weights(n), keys(n);
    std::map<int64_t, int64_t> by_key;
    for (int i = 0; i < n; ++i) {
      weights[i] = rng() % 5 == 0 ? 0 : static_cast<int64_t>(rng() % 10000000);
      if (round % 10 == 0) weights[i] = 1000;  // all tied
      keys[i] = static_cast<int64_t>(rng() % 1000000000) * 1000 + i;
      by_key[keys[i]] = weights[i];
    }
    int64_t total = static_cast<int64_t>(rng() % 100000000);
    std::vector<int64_t> parts = LargestRemainder(total, weights, keys);
    int64_t sum = 0;
    int64_t weight_sum = 0;
    for (int i = 0; i < n; ++i) sum += parts[i], weight_sum += weights[i];
    if (weight_sum == 0) continue;
    EXPECT_EQ(sum, total) << "round " << round;
    std::map<int64_t, int64_t> expected = Shares(total, by_key);
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(parts[i], expected[keys[i]]) << "round " << round << " key " << keys[i];
      long double exact = static_cast<long double>(total) * weights[i] / weight_sum;
      EXPECT_LE(std::abs(parts[i] - exact), 1.0L);
    }
    EXPECT_EQ(LargestRemainder(total, weights, keys), parts) << "deterministic";
  }
}

TEST(LargestRemainder, TiesGoToTheSmallerKey) {
  // 10 cents over three equal holders: 3 each, the extra cent to key 5.
  EXPECT_EQ(LargestRemainder(10, {1, 1, 1}, {9, 5, 7}), (std::vector<int64_t>{3, 4, 3}));
}

std::string WithTrailer(const std::string& body, const std::string& trailer_fields) {
  return body + "T," + trailer_fields + "," + absl::StrFormat("%08x", Crc32(body)) + "\n";
}

class TradeFileTest : public ::testing::Test {
 protected:
  absl::Status Read(const std::string& text) {
    std::string path = dir_.File("t.csv");
    EXPECT_TRUE(WriteFileAtomically(path, text).ok());
    return ReadTradeFile(path).status();
  }
  formica::testing::TempDir dir_;
};

TEST_F(TradeFileTest, MalformedOrTruncatedFilesAreRefusedNamingTheLine) {
  const std::string body = "H,FUNDTRADE,1,4\nD,a,101,P,500\nD,b,102,R,20\n";
  EXPECT_TRUE(Read(WithTrailer(body, "2,500,20")).ok());
  struct Case {
    std::string text;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {body, "line 4: truncated: no trailer"},
           {body + "T,2,500,20,0000", "line 4: truncated: the last line has no end of line"},
           {body + "T,2,500,20,deadbeef\n", "line 4: checksum deadbeef does not match"},
           {WithTrailer(body, "3,500,20"), "line 4: the trailer counts 3 records, the file has 2"},
           {WithTrailer(body, "2,501,20"), "line 4: the trailer's totals 501/20 differ"},
           {WithTrailer("H,FUNDTRADE,1,4\nD,a,101,P,500\nD,b,102,X,20\n", "2,500,20"),
            "line 3: kind 'X' is neither P nor R"},
           {WithTrailer("H,FUNDTRADE,1,4\nD,a,101,P,5x0\nD,b,102,R,20\n", "2,500,20"),
            "line 2: amount '5x0' is not a positive integer"},
           {WithTrailer("H,FUNDTRADE,1,4\nD,a,101,P,500\nD,a,102,R,20\n", "2,500,20"),
            "line 3: order id 'a' is empty or repeated"},
           {WithTrailer("H,FUNDTRADE,1,4\nD,a,101,P,500,9\n", "1,500,0"),
            "line 2: a record has 5 fields, this one 6"},
           {WithTrailer("H,FUNDTRADE,2,4\n", "0,0,0"), "line 1: expected header"},
           {"", "line 1: empty file: no header"}}) {
    absl::Status st = Read(c.text);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.says;
    EXPECT_THAT(st.message(), HasSubstr(c.says));
  }
}

// ---- with real workers -----------------------------------------------------

class ClearingTest : public formica::registry::testing::RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    registry_ = NewClient("clearing-test");
    formica::rpc::ClientOptions o;
    o.app_name = "clearing-test";
    o.policies[v1::ClearingWorker::service_full_name()] = "round_robin";
    o.eject_after_failures = 1;
    rpc_ = std::move(*formica::rpc::Client::Create(o, registry_.get()));
  }
  void TearDown() override {
    rpc_.reset();
    registry_.reset();
  }
  std::unique_ptr<Subprocess> StartWorker(int delay_ms = 0) {
    auto p =
        Subprocess::Start({formica::testing::BinaryPath("examples/fund/fund-clear"), "worker",
                           "--registry", dsrd_->address(), "--delay-ms", std::to_string(delay_ms)},
                          dir_.File(absl::StrCat("worker.", ++workers_, ".log")));
    EXPECT_TRUE(p.ok());
    EXPECT_TRUE((*p)->WaitForOutput("clearing worker serving on", absl::Seconds(20)));
    return std::move(*p);
  }

  // A random day: `users` holders in the previous day's result file and
  // `trades` purchases and redemptions (never more than held) on day 5.
  void MakeDay(int users, int trades, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string records;
    int64_t opening_total = 0;
    for (int i = 0; i < users; ++i) {
      int64_t user = 1000 + i * 7 + static_cast<int64_t>(rng() % 7);
      int64_t shares = rng() % 4 == 0 ? 0 : static_cast<int64_t>(rng() % 5000000);
      held_[user] = shares;
      opening_[user] = shares;
      records += FormatClearedRecord({user, 0, 0, 0, 0, shares});
      opening_total += shares;
    }
    ASSERT_TRUE(WriteFileAtomically(dir_.File("opening.csv"),
                                    ClearedFileText(4, records, users, 0, 0, opening_total))
                    .ok());
    TradeFile day;
    day.day = 5;
    std::vector<int64_t> ids;
    for (const auto& [u, s] : held_) ids.push_back(u);
    for (int i = 0; i < trades; ++i) {
      int64_t user = rng() % 5 == 0 ? 900000 + static_cast<int64_t>(rng() % 300)  // new users
                                    : ids[rng() % ids.size()];
      bool purchase = held_[user] == 0 || rng() % 2 == 0;
      int64_t amount = purchase ? 1 + static_cast<int64_t>(rng() % 300000)
                                : 1 + static_cast<int64_t>(rng() % held_[user]);
      held_[user] += purchase ? amount : -amount;
      day.trades.push_back({absl::StrCat("o", i), user, purchase, amount});
    }
    ASSERT_TRUE(WriteTradeFile(dir_.File("trades.csv"), day).ok());
  }

  ClearingOptions Options(const std::string& out) {
    ClearingOptions o;
    o.trades_file = dir_.File("trades.csv");
    o.opening_file = dir_.File("opening.csv");
    o.work_dir = dir_.File("work");
    o.out_dir = dir_.File(out);
    o.income = 987654;
    o.parallel = 4;
    o.progress = false;
    return o;
  }

  std::map<int64_t, int64_t> held_;  // before income: opening + trades
  std::map<int64_t, int64_t> opening_;
  int workers_ = 0;
  std::unique_ptr<formica::registry::Client> registry_;
  std::unique_ptr<formica::rpc::Client> rpc_;
};

TEST_F(ClearingTest, ClearsASmallPopulationAsComputedIndependently) {
  auto w1 = StartWorker();
  auto w2 = StartWorker();
  MakeDay(600, 2500, 11);
  ClearingMaster master(rpc_.get());
  auto r = master.Run(Options("out"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->day, 5);
  EXPECT_EQ(r->income, 987654);
  // Independently: shards' totals, the income by shard, then by user.
  std::map<int64_t, std::map<int64_t, int64_t>> by_shard;
  std::map<int64_t, int64_t> shard_totals;
  for (const auto& [u, s] : held_) {
    by_shard[u % 100][u] = s;
    shard_totals[u % 100] += s;
  }
  for (int s = 0; s < 100; ++s) shard_totals[s] += 0;
  std::map<int64_t, int64_t> shard_income = Shares(987654, shard_totals);
  std::map<int64_t, int64_t> income;
  for (const auto& [s, users] : by_shard) {
    for (const auto& [u, i] : Shares(shard_income[s], users)) income[u] = i;
  }
  auto out = ReadClearedFile(r->output);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->users.size(), held_.size());
  int64_t income_sum = 0;
  for (const ClearedRecord& rec : out->users) {
    ASSERT_TRUE(held_.count(rec.user)) << rec.user;
    EXPECT_EQ(rec.opening, opening_[rec.user]) << rec.user;
    EXPECT_EQ(rec.opening + rec.purchased - rec.redeemed, held_[rec.user]) << rec.user;
    EXPECT_EQ(rec.income, income[rec.user]) << rec.user;
    EXPECT_EQ(rec.closing, held_[rec.user] + income[rec.user]) << rec.user;
    income_sum += rec.income;
  }
  EXPECT_EQ(income_sum, 987654) << "to the cent";
}

TEST_F(ClearingTest, AWorkerKilledMidRunChangesNothingAndARerunIsByteIdentical) {
  auto w1 = StartWorker(40);
  auto w2 = StartWorker(40);
  MakeDay(400, 1500, 12);
  ClearingMaster master(rpc_.get());
  auto reference = master.Run(Options("reference"));
  ASSERT_TRUE(reference.ok()) << reference.status();
  auto expected = ReadWholeFile(reference->output);
  ASSERT_TRUE(expected.ok());
  // Again, into another directory, killing one worker a second in (about a
  // third of the way through phase one); a third takes its place.
  absl::StatusOr<ClearingReport> r;
  std::atomic<bool> finished{false};
  std::thread run([&] {
    r = master.Run(Options("out"));
    finished = true;
  });
  absl::SleepFor(absl::Milliseconds(700));
  w1->Kill();
  EXPECT_FALSE(finished.load()) << "the kill must land mid-run";
  auto w3 = StartWorker(40);
  run.join();
  ASSERT_TRUE(r.ok()) << r.status();
  auto got = ReadWholeFile(r->output);
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(*got == *expected) << "the killed worker's shards must come out the same";
  // A rerun of the finished day: nothing changes, the same bytes.
  auto again = master.Run(Options("out"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->unchanged);
  auto rerun = ReadWholeFile(again->output);
  ASSERT_TRUE(rerun.ok());
  EXPECT_TRUE(*rerun == *expected);
}

TEST_F(ClearingTest, ABadTradeFileIsRefusedNamingTheLineAndNothingIsWritten) {
  auto w1 = StartWorker();
  MakeDay(50, 100, 13);
  auto text = ReadWholeFile(dir_.File("trades.csv"));
  ASSERT_TRUE(text.ok());
  // Cut in the middle of a record: truncated.
  ASSERT_TRUE(WriteFileAtomically(dir_.File("trades.csv"), text->substr(0, text->size() / 2)).ok());
  ClearingMaster master(rpc_.get());
  auto r = master.Run(Options("out"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("trades.csv line "));
  EXPECT_THAT(r.status().message(), HasSubstr("truncated"));
  struct stat st;
  EXPECT_NE(::stat(dir_.File("out").c_str(), &st), 0) << "nothing may be written";
  EXPECT_NE(::stat(dir_.File("work").c_str(), &st), 0) << "nothing may be split";
}

TEST_F(ClearingTest, AUserRedeemingMoreThanHeldStopsTheDayNamingTheUser) {
  auto w1 = StartWorker();
  MakeDay(50, 100, 14);
  auto day = ReadTradeFile(dir_.File("trades.csv"));
  ASSERT_TRUE(day.ok());
  int64_t user = held_.begin()->first;
  day->trades.push_back({"too-much", user, false, held_[user] + 1});
  ASSERT_TRUE(WriteTradeFile(dir_.File("trades.csv"), *day).ok());
  ClearingMaster master(rpc_.get());
  auto r = master.Run(Options("out"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("user ", user, ": redeemed ")));
  struct stat st;
  EXPECT_NE(::stat(dir_.File("out/clearing-5.csv").c_str(), &st), 0);
  auto report = ReadWholeFile(dir_.File("out/clearing-5.differences"));
  ASSERT_TRUE(report.ok());
  EXPECT_THAT(*report, HasSubstr(absl::StrCat("user ", user, ": ")));
}

}  // namespace
}  // namespace fund::testing
