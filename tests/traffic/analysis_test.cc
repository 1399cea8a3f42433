// The judgement of a shift's or a release's window (formicactl/traffic.h,
// Analyse) on counts made up to the shape a loaded machine gives: the
// others' p99 is compared on a sample as large as the target's, so a thin
// window of the others' does not blame a healthy target for the machine's
// pauses, and a slow target is still stopped, at 100% too.
#include <gtest/gtest.h>

#include "traffic.h"

namespace formica::ctl {
namespace {

// The latency bucket a call of `us` microseconds is counted in.
int BucketFor(int64_t us) {
  for (int i = 0; i < rpc::kLatencyBuckets - 1; ++i) {
    if (us <= rpc::LatencyBucketBoundUs(i)) return i;
  }
  return rpc::kLatencyBuckets - 1;
}

// `fast` calls of 300 us and `slow` ones of `slow_us`, all OK.
rpc::CallSeries Calls(uint64_t fast, uint64_t slow, int64_t slow_us = 10'000) {
  rpc::CallSeries s;
  s.calls_by_code[0] = fast + slow;
  s.latency_buckets[BucketFor(300)] += fast;
  s.latency_buckets[BucketFor(slow_us)] += slow;
  return s;
}

rpc::CallSeries Sum(rpc::CallSeries a, const rpc::CallSeries& b) {
  a.Add(b);
  return a;
}

const std::vector<ProviderInfo> kProviders = {
    {"10.0.0.1:1", "", 1, {{"color", "blue"}}},
    {"10.0.0.2:1", "", 1, {{"color", "green"}}},
};

// Three windows: blue alone served 2,000 calls (2% of them caught in a
// 10 ms pause of the machine), then 1,000 more; in the last window blue
// served `blue_last` calls and green `green_last`.
struct Shift {
  std::vector<Served> readings;
  Served after;
};
Shift ThreeWindows(rpc::CallSeries blue_last, rpc::CallSeries green_last) {
  Shift s;
  rpc::CallSeries blue = Calls(0, 0);
  rpc::CallSeries green = Calls(0, 0);
  s.readings.push_back({{"10.0.0.1:1", blue}, {"10.0.0.2:1", green}});
  blue = Sum(blue, Calls(1960, 40));
  s.readings.push_back({{"10.0.0.1:1", blue}, {"10.0.0.2:1", green}});
  blue = Sum(blue, Calls(980, 20));
  s.readings.push_back({{"10.0.0.1:1", blue}, {"10.0.0.2:1", green}});
  s.after = {{"10.0.0.1:1", Sum(blue, blue_last)}, {"10.0.0.2:1", Sum(green, green_last)}};
  return s;
}

TEST(AnalysisTest, AHealthyTargetIsNotBlamedForPausesTheOthersThinWindowMissed) {
  // The last window: blue served 31 calls and none met a pause; green 300,
  // 2% of them in pauses, as blue's calls before. Against the 31 alone
  // green's p99 (10 ms) is 30 times blue's; against blue's last 300+ calls
  // it is the same.
  Shift s = ThreeWindows(Calls(31, 0), Calls(294, 6));
  Analysis a = Analyse(Thresholds{}, "color", "green", kProviders, s.readings, s.after);
  EXPECT_EQ(a.verdict, Verdict::kPass) << a.summary;
  EXPECT_NE(a.summary.find("others 31 calls"), std::string::npos) << a.summary;
  EXPECT_NE(a.summary.find("over their last 1031 calls"), std::string::npos) << a.summary;

  // The same window judged on its own (no earlier readings) is the thin
  // comparison, and blames green.
  Analysis thin = Analyse(Thresholds{}, "color", "green", kProviders, {s.readings.back()}, s.after);
  EXPECT_EQ(thin.verdict, Verdict::kFail) << thin.summary;
}

TEST(AnalysisTest, ASlowTargetIsStoppedAgainstTheWidenedBaseline) {
  // Every green call takes 30 ms.
  Shift s = ThreeWindows(Calls(31, 0), Calls(0, 300, 30'000));
  Analysis a = Analyse(Thresholds{}, "color", "green", kProviders, s.readings, s.after);
  EXPECT_EQ(a.verdict, Verdict::kFail) << a.summary;
  EXPECT_NE(a.summary.find("target p99"), std::string::npos) << a.summary;
}

TEST(AnalysisTest, AtAHundredPercentTheTargetsP99IsJudgedOnTheOthersEarlierCalls) {
  // Blue gets no call at 100%: its earlier calls are the baseline.
  Shift slow = ThreeWindows(Calls(0, 0), Calls(0, 300, 30'000));
  EXPECT_EQ(Analyse(Thresholds{}, "color", "green", kProviders, slow.readings, slow.after).verdict,
            Verdict::kFail);
  Shift healthy = ThreeWindows(Calls(0, 0), Calls(294, 6));
  Analysis a = Analyse(Thresholds{}, "color", "green", kProviders, healthy.readings, healthy.after);
  EXPECT_EQ(a.verdict, Verdict::kPass) << a.summary;
}

TEST(AnalysisTest, TooFewTargetCallsAreNoVerdictAndFailuresStillCountPerWindow) {
  Shift few = ThreeWindows(Calls(300, 0), Calls(10, 0));
  EXPECT_EQ(Analyse(Thresholds{}, "color", "green", kProviders, few.readings, few.after).verdict,
            Verdict::kNoData);
  rpc::CallSeries failing = Calls(270, 0);
  failing.calls_by_code[14] = 30;  // UNAVAILABLE: 10% of green's calls
  Shift s = ThreeWindows(Calls(300, 0), failing);
  Analysis a = Analyse(Thresholds{}, "color", "green", kProviders, s.readings, s.after);
  EXPECT_EQ(a.verdict, Verdict::kFail) << a.summary;
  EXPECT_NE(a.summary.find("target failed 10.00% of calls"), std::string::npos) << a.summary;
}

}  // namespace
}  // namespace formica::ctl
