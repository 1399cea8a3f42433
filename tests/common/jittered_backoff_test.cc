// JitteredBackoff, the wait between retries (the registry client's
// reconnects): each wait lies in [step/2, step], the step doubles up to the
// cap, and Reset starts over. Pure arithmetic on durations: no clock, no
// sleep.
#include "formica/internal/jittered_backoff.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace formica {
namespace {

constexpr absl::Duration kInitial = absl::Milliseconds(100);
constexpr absl::Duration kMax = absl::Seconds(1);

TEST(JitteredBackoff, WaitsBetweenHalfAndAllOfAStepThatDoublesUpToTheCap) {
  // The step before each wait: 100, 200, 400, 800, then 1000 (the cap).
  const std::vector<int64_t> steps_ms = {100, 200, 400, 800, 1000, 1000, 1000};
  for (uint64_t seed = 0; seed < 200; ++seed) {
    JitteredBackoff backoff(kInitial, kMax, seed);
    for (size_t i = 0; i < steps_ms.size(); ++i) {
      absl::Duration step = absl::Milliseconds(steps_ms[i]);
      ASSERT_EQ(backoff.step(), step) << "wait " << i;
      absl::Duration wait = backoff.Next();
      ASSERT_GE(wait, step / 2) << "wait " << i << " seed " << seed;
      ASSERT_LE(wait, step) << "wait " << i << " seed " << seed;
    }
  }
}

TEST(JitteredBackoff, ResetStartsOverAtTheInitialStep) {
  JitteredBackoff backoff(kInitial, kMax, 7);
  for (int i = 0; i < 10; ++i) backoff.Next();
  ASSERT_EQ(backoff.step(), kMax);
  backoff.Reset();
  EXPECT_EQ(backoff.step(), kInitial);
  absl::Duration wait = backoff.Next();
  EXPECT_GE(wait, kInitial / 2);
  EXPECT_LE(wait, kInitial);
  EXPECT_EQ(backoff.step(), 2 * kInitial);
}

TEST(JitteredBackoff, SpreadsWaitsOverTheWholeRange) {
  // Clients that lost the same registry must not all come back at once.
  absl::Duration lowest = absl::InfiniteDuration();
  absl::Duration highest = absl::ZeroDuration();
  for (uint64_t seed = 0; seed < 500; ++seed) {
    absl::Duration wait = JitteredBackoff(kInitial, kMax, seed).Next();
    lowest = std::min(lowest, wait);
    highest = std::max(highest, wait);
  }
  EXPECT_LT(lowest, absl::Milliseconds(55));
  EXPECT_GT(highest, absl::Milliseconds(95));
}

}  // namespace
}  // namespace formica
