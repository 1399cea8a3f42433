// formicactl traffic view, set and clear against a real dsrd and echo
// providers: what is set is what callers do, bad routes change nothing, and
// two operators cannot overwrite each other silently.
#include <gmock/gmock.h>

#include <map>
#include <regex>

#include "traffic_fixture.h"

namespace formica::rpc::testing {
namespace {

using ::testing::HasSubstr;

class TrafficSetTest : public TrafficTest {
 protected:
  void SetUp() override {
    TrafficTest::SetUp();
    blue1_ = StartEcho({"--tag", "color=blue", "--tag", "version=1"});
    blue2_ = StartEcho({"--tag", "color=blue", "--tag", "version=1"});
    green_ = StartEcho({"--tag", "color=green", "--tag", "version=2"});
    ASSERT_TRUE(AwaitProviders(3));
  }
  std::unique_ptr<Subprocess> blue1_, blue2_, green_;
};

TEST_F(TrafficSetTest, SetRouteIsWhatViewShowsAndWhatCallersDo) {
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:67,color=green:33"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("route: none -> color=blue:67,color=green:33 (version"));
  EXPECT_EQ(Route(), "color=blue:67,color=green:33");
  ASSERT_EQ(Ctl({"traffic", "view", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("route color=blue:67,color=green:33"));
  EXPECT_THAT(out, ::testing::ContainsRegex("color=blue +67.0% +2 +2 "));
  EXPECT_THAT(out, ::testing::ContainsRegex("color=green +33.0% +1 +1 "));
  // Callers follow it (once the push arrived).
  auto client = NewRpcClient();
  absl::SleepFor(absl::Milliseconds(500));
  constexpr int kCalls = 3000;  // sd of the share: 0.009
  int green = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto r = Echo(*client);
    ASSERT_TRUE(r.ok()) << r.status();
    green += r->served_by() == Address(*green_);
  }
  EXPECT_NEAR(green / static_cast<double>(kCalls), 0.33, 0.04);
  // The view counts what each group served.
  ASSERT_EQ(Ctl({"traffic", "view", kEcho, "-o", "json"}, &out), 0) << out;
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(out, m, std::regex("\"group\": \"color=green\"[^}]*\"calls\": \"(\\d+)\"")))
      << out;
  EXPECT_EQ(std::stoi(m[1]), green);
  // stats: per provider, what it served.
  ASSERT_EQ(Ctl({"traffic", "stats", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex(Address(*green_) + " +color=green,version=2 +" +
                                            std::to_string(green) + " +0 +0.00 "));
  // --by groups by another tag.
  ASSERT_EQ(Ctl({"traffic", "view", kEcho, "--by", "version"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("version=1 +67.0% +2 +2 "));
  // clear: back to weights.
  ASSERT_EQ(Ctl({"traffic", "clear", kEcho}, &out), 0) << out;
  EXPECT_EQ(Route(), "");
  ASSERT_EQ(Ctl({"traffic", "view", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("color=green +33.3% +1 +1 "));
}

TEST_F(TrafficSetTest, WatchRefreshesWithWhatEachGroupServedSinceTheLastView) {
  StartLoad(absl::Milliseconds(5));
  auto watch = StartCtl({"traffic", "view", kEcho, "--watch", "--every", "700ms"});
  ASSERT_TRUE(watch->WaitForOutput("calls over the last life of each provider", absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(2500));
  std::string out = watch->Output();
  watch->Terminate();
  StopLoad();
  // Refreshed views count the calls of their interval: fewer than the load's
  // total, more than none.
  size_t at = out.find("calls over the last 700ms");
  ASSERT_NE(at, std::string::npos) << out;
  std::smatch m;
  std::string refreshed = out.substr(at);
  ASSERT_TRUE(std::regex_search(refreshed, m, std::regex("color=blue +66.7% +2 +2 +(\\d+) ")))
      << refreshed;
  EXPECT_GT(std::stoi(m[1]), 0);
  EXPECT_LT(static_cast<size_t>(std::stoi(m[1])), Load().size());
}

TEST_F(TrafficSetTest, BadRoutesAreRefusedNamingWhatIsWrongAndChangeNothing) {
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  uint64_t version = 0;
  Route(&version);
  struct Case {
    std::string route;
    std::string says;
  } cases[] = {
      {"color=blue:60,color=green:33", "INVALID_ARGUMENT: route percents add up to 93, not 100"},
      {"color=blue:67,color=purple:33",
       "INVALID_ARGUMENT: no provider of formica.test.Echo carries color=purple; their tags: "
       "color=blue (2), color=green (1)"},
      {"color=blue", "INVALID_ARGUMENT: route 'color=blue' is not key=value:percent"},
      {"color=blue:50,color=blue:50", "INVALID_ARGUMENT: tag color=blue is given twice"},
      {"color=blue:150", "is not key=value:percent"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Ctl({"traffic", "set", kEcho, c.route}, &out), 1) << c.route;
    EXPECT_THAT(out, HasSubstr(c.says)) << c.route;
    uint64_t now = 0;
    EXPECT_EQ(Route(&now), "color=blue:100") << c.route;
    EXPECT_EQ(now, version) << c.route;
  }
  EXPECT_EQ(Ctl({"traffic", "set", "nobody.Home", "color=blue:100"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("NOT_FOUND: the registry lists no provider of 'nobody.Home'"));
  // "0": only if there is no route yet.
  EXPECT_EQ(Ctl({"traffic", "set", kEcho, "color=green:100", "--expect-version", "0"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("FAILED_PRECONDITION: the route of formica.test.Echo is no longer at "
                             "version 0 (now version " +
                             std::to_string(version) + ": 'color=blue:100')"));
  EXPECT_EQ(Route(), "color=blue:100");
}

// Both operators saw the same version: exactly one wins, the other is told
// and changes nothing.
TEST_F(TrafficSetTest, TwoOperatorsRacingOnOneVersionOneWins) {
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  for (int round = 0; round < 5; ++round) {
    uint64_t version = 0;
    Route(&version);
    std::string v = std::to_string(version);
    auto a =
        StartCtl({"traffic", "set", kEcho, "color=blue:50,color=green:50", "--expect-version", v});
    auto b =
        StartCtl({"traffic", "set", kEcho, "color=blue:10,color=green:90", "--expect-version", v});
    int ca = a->Wait(absl::Seconds(30));
    int cb = b->Wait(absl::Seconds(30));
    ASSERT_EQ(ca + cb, 1) << a->Output() << b->Output();
    Subprocess& loser = ca == 1 ? *a : *b;
    EXPECT_THAT(loser.Output(),
                HasSubstr("FAILED_PRECONDITION: the route of formica.test.Echo is no "
                          "longer at version " +
                          v));
    EXPECT_EQ(Route(), ca == 0 ? "color=blue:50,color=green:50" : "color=blue:10,color=green:90");
    ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  }
}

// Without --expect-version each operator's set is checked against the
// version it read: every accepted set replaced exactly the route the one
// before it wrote (none was lost unseen).
TEST_F(TrafficSetTest, RacingOperatorsNeverLoseAnUpdateUnseen) {
  std::vector<std::string> routes = {
      "color=blue:90,color=green:10", "color=blue:80,color=green:20",
      "color=blue:70,color=green:30", "color=blue:60,color=green:40",
      "color=blue:50,color=green:50", "color=blue:40,color=green:60"};
  std::vector<std::unique_ptr<Subprocess>> ctls;
  for (const std::string& r : routes) ctls.push_back(StartCtl({"traffic", "set", kEcho, r}));
  std::map<uint64_t, std::pair<std::string, std::string>> accepted;  // version -> (from, to)
  int refused = 0;
  for (auto& c : ctls) {
    int code = c->Wait(absl::Seconds(30));
    std::smatch m;
    std::string out = c->Output();
    if (code == 0) {
      ASSERT_TRUE(
          std::regex_search(out, m, std::regex("route: (\\S+) -> (\\S+) \\(version (\\d+)\\)")))
          << out;
      accepted[std::stoull(m[3])] = {m[1], m[2]};
    } else {
      EXPECT_THAT(out, HasSubstr("FAILED_PRECONDITION")) << out;
      ++refused;
    }
  }
  ASSERT_FALSE(accepted.empty());
  std::string previous = "none";
  for (const auto& [version, change] : accepted) {
    EXPECT_EQ(change.first, previous) << "version " << version;
    previous = change.second;
  }
  EXPECT_EQ(Route(), previous);
  EXPECT_EQ(accepted.size() + refused, routes.size());
}

}  // namespace
}  // namespace formica::rpc::testing
