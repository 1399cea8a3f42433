// Balancing policies against their contracts. Statistical checks use enough
// picks that the stated tolerance is more than 8 standard deviations wide.
#include "balancer.h"

#include <gtest/gtest.h>

#include <map>

namespace formica::rpc {
namespace {

std::vector<std::shared_ptr<EndpointState>> Make(const std::vector<int32_t>& weights) {
  std::vector<std::shared_ptr<EndpointState>> out;
  for (size_t i = 0; i < weights.size(); ++i) {
    out.push_back(
        std::make_shared<EndpointState>("10.0.0." + std::to_string(i) + ":80", weights[i]));
  }
  return out;
}

std::map<std::string, int> Count(Balancer& b, int picks, std::optional<uint64_t> key = {}) {
  std::map<std::string, int> counts;
  for (int i = 0; i < picks; ++i) {
    PickContext c;
    c.hash_key = key.has_value() ? std::optional<uint64_t>(HashKey(std::to_string(i))) : key;
    counts[b.Pick(c)->address()]++;
  }
  return counts;
}

// Shares within +-tolerance (absolute) of weight / total.
void ExpectShares(const std::map<std::string, int>& counts, const std::vector<int32_t>& weights,
                  int picks, double tolerance) {
  double total = 0;
  for (int32_t w : weights) total += w;
  for (size_t i = 0; i < weights.size(); ++i) {
    std::string address = "10.0.0." + std::to_string(i) + ":80";
    double share = counts.count(address) ? counts.at(address) / static_cast<double>(picks) : 0;
    EXPECT_NEAR(share, weights[i] / total, tolerance) << address;
  }
}

TEST(WeightedRandom, FollowsWeightsWithinOnePercent) {
  std::vector<int32_t> weights = {100, 200, 700};
  auto b = NewBalancer(Policy::kWeightedRandom, Make(weights));
  constexpr int kPicks = 300000;  // sd of a share <= 0.0009
  ExpectShares(Count(*b, kPicks), weights, kPicks, 0.01);
}

TEST(SmoothRoundRobin, IsExactAndSmooth) {
  auto endpoints = Make({5, 1, 1});
  auto b = NewBalancer(Policy::kRoundRobin, endpoints);
  std::string order;
  for (int i = 0; i < 14; ++i) {
    order += static_cast<char>('a' + (b->Pick({})->address()[7] - '0'));
  }
  EXPECT_EQ(order, "aabacaaaabacaa");  // nginx's sequence, twice; never five a's in a row
  std::vector<int32_t> weights = {3, 2, 5};
  auto exact = NewBalancer(Policy::kRoundRobin, Make(weights));
  auto counts = Count(*exact, 1000);  // 100 periods of 10
  EXPECT_EQ(counts["10.0.0.0:80"], 300);
  EXPECT_EQ(counts["10.0.0.1:80"], 200);
  EXPECT_EQ(counts["10.0.0.2:80"], 500);
}

TEST(LeastActive, AvoidsBusyProvidersAndSplitsTiesByWeight) {
  auto endpoints = Make({100, 100, 300});
  auto b = NewBalancer(Policy::kLeastActive, endpoints);
  endpoints[2]->CallStarted();  // the heavy one is busy
  for (int i = 0; i < 1000; ++i) {
    EXPECT_NE(b->Pick({})->address(), "10.0.0.2:80");
  }
  endpoints[2]->CallFinished(absl::Milliseconds(1));
  constexpr int kPicks = 200000;
  ExpectShares(Count(*b, kPicks), {100, 100, 300}, kPicks, 0.01);
}

TEST(P2cEwma, MovesTrafficAwayFromASlowProvider) {
  auto endpoints = Make({100, 100, 100, 100});
  auto b = NewBalancer(Policy::kP2cEwma, endpoints);
  for (int i = 0; i < 20; ++i) {
    for (int e = 0; e < 4; ++e) {
      endpoints[e]->CallStarted();
      endpoints[e]->CallFinished(e == 3 ? absl::Milliseconds(50) : absl::Milliseconds(1));
    }
  }
  auto counts = Count(*b, 100000);
  // The slow one only wins when it is drawn against itself, which P2C never
  // does: it gets nothing while the others are this much faster.
  EXPECT_EQ(counts["10.0.0.3:80"], 0);
  for (int e = 0; e < 3; ++e) {
    EXPECT_NEAR(counts["10.0.0." + std::to_string(e) + ":80"] / 100000.0, 1 / 3.0, 0.02);
  }
  // In-flight calls count too: a fast provider with a queue loses its edge.
  for (int i = 0; i < 200; ++i) endpoints[0]->CallStarted();
  auto busy = Count(*b, 10000);
  EXPECT_LT(busy["10.0.0.0:80"], 100);
}

TEST(ConsistentHash, SameKeySameProviderAndOneInNMovesOnJoin) {
  auto four = Make({100, 100, 100, 100});
  auto b4 = NewBalancer(Policy::kConsistentHash, four);
  auto five = four;
  five.push_back(std::make_shared<EndpointState>("10.0.0.4:80", 100));
  auto b5 = NewBalancer(Policy::kConsistentHash, five);
  constexpr int kKeys = 100000;
  int moved = 0;
  int reshuffled = 0;  // moved between old providers
  std::map<std::string, int> load;
  for (int k = 0; k < kKeys; ++k) {
    PickContext c;
    c.hash_key = HashKey("user-" + std::to_string(k));
    EndpointState* before = b4->Pick(c);
    EXPECT_EQ(before, b4->Pick(c));  // stable
    EndpointState* after = b5->Pick(c);
    if (after->address() != before->address()) {
      ++moved;
      reshuffled += after->address() != "10.0.0.4:80";
    }
    load[after->address()]++;
  }
  // Ideal: 1/5 of the keys move, all to the newcomer. Maglev trades a little
  // extra movement between old providers for its even spread.
  EXPECT_NEAR(moved / static_cast<double>(kKeys), 0.2, 0.03);
  EXPECT_LT(reshuffled / static_cast<double>(kKeys), 0.01) << reshuffled;
  for (const auto& [address, n] : load) {
    EXPECT_NEAR(n / static_cast<double>(kKeys), 0.2, 0.02) << address;  // no hot spot
  }
}

TEST(ConsistentHash, HonoursWeights) {
  std::vector<int32_t> weights = {100, 300};
  auto b = NewBalancer(Policy::kConsistentHash, Make(weights));
  constexpr int kKeys = 100000;
  ExpectShares(Count(*b, kKeys, uint64_t{0}), weights, kKeys, 0.02);
}

TEST(Balancers, SkipWeightZeroUnlessAllAreZero) {
  for (Policy p : {Policy::kWeightedRandom, Policy::kRoundRobin, Policy::kLeastActive,
                   Policy::kConsistentHash, Policy::kP2cEwma}) {
    auto b = NewBalancer(p, Make({0, 100}));
    for (int i = 0; i < 500; ++i) {
      PickContext c;
      c.hash_key = HashKey(std::to_string(i));
      EXPECT_EQ(b->Pick(c)->address(), "10.0.0.1:80") << PolicyName(p);
    }
    auto drained = NewBalancer(p, Make({0, 0}));
    EXPECT_NE(drained->Pick({}), nullptr) << PolicyName(p);
    EXPECT_EQ(NewBalancer(p, {})->Pick({}), nullptr) << PolicyName(p);
  }
}

TEST(WarmedWeight, RampsLinearlyFromOneToFull) {
  EXPECT_EQ(WarmedWeight(100, absl::ZeroDuration(), absl::Seconds(60)), 1);
  EXPECT_EQ(WarmedWeight(100, absl::Seconds(30), absl::Seconds(60)), 50);
  EXPECT_EQ(WarmedWeight(100, absl::Seconds(60), absl::Seconds(60)), 100);
  EXPECT_EQ(WarmedWeight(100, absl::Hours(1), absl::Seconds(60)), 100);
  EXPECT_EQ(WarmedWeight(100, absl::Seconds(1), absl::ZeroDuration()), 100);
  EXPECT_EQ(WarmedWeight(0, absl::Seconds(1), absl::Seconds(60)), 0);
}

TEST(Policies, ParseByNameWithAClearError) {
  EXPECT_EQ(*ParsePolicy("p2c_ewma"), Policy::kP2cEwma);
  EXPECT_EQ(*ParsePolicy("round_robin"), Policy::kRoundRobin);
  auto bad = ParsePolicy("fastest");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'fastest' is not one of weighted_random"),
            absl::string_view::npos);
}

TEST(HashKey, IsStable) {
  // Fixed values: the same in every process, build and machine.
  EXPECT_EQ(HashKey("user-42"), HashKey(std::string("user-") + "42"));
  EXPECT_NE(HashKey("user-42"), HashKey("user-43"));
  EXPECT_EQ(HashKey("user-42"), 0xe1a2fed0654c3d97ull);
}

}  // namespace
}  // namespace formica::rpc
