// Distributed ids: unique across threads and workers, growing, routed to
// their user's shard, and still growing when the clock steps back.
#include "formica/dds/ids.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "router.h"

namespace formica::dds {
namespace {

const absl::Time kT0 =
    absl::FromCivil(absl::CivilSecond(2026, 11, 25, 12, 0, 0), absl::UTCTimeZone());

TEST(IdGenerator, IdsCarryTheShardAndRouteWithTheirUser) {
  FakeClock clock(kT0);
  auto ids = std::move(*IdGenerator::Create(3, &clock));
  for (int shard : {0, 7, 34, 99}) {
    int64_t id = *ids->Next(shard);
    EXPECT_GT(id, 0);
    EXPECT_EQ(*LastTwoDigits(std::to_string(id)), shard) << id;
    EXPECT_EQ(IdGenerator::TimeOf(id), kT0);
  }
  EXPECT_FALSE(ids->Next(100).ok());
  EXPECT_FALSE(ids->Next(-1).ok());
  EXPECT_FALSE(IdGenerator::Create(64, &clock).ok());
}

TEST(IdGenerator, IdsGrowEvenWhenTheClockStepsBackOrAMillisecondFillsUp) {
  FakeClock clock(kT0);
  auto ids = std::move(*IdGenerator::Create(0, &clock));
  int64_t last = 0;
  for (int i = 0; i < 3000; ++i) {  // more than one millisecond holds
    int64_t id = *ids->Next(12);
    ASSERT_GT(id, last) << i;
    last = id;
  }
  clock.Advance(-absl::Seconds(5));  // NTP stepped the clock back
  for (int i = 0; i < 10; ++i) {
    int64_t id = *ids->Next(12);
    ASSERT_GT(id, last);
    last = id;
  }
  clock.Advance(absl::Seconds(10));
  EXPECT_GT(*ids->Next(12), last);
}

TEST(IdGenerator, UniqueAcrossThreadsAndWorkers) {
  FakeClock clock(kT0);  // everyone in the same millisecond: the hard case
  auto a = std::move(*IdGenerator::Create(1, &clock));
  auto b = std::move(*IdGenerator::Create(2, &clock));
  absl::Mutex mu;
  std::set<int64_t> seen;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      IdGenerator* g = t % 2 == 0 ? a.get() : b.get();
      std::vector<int64_t> mine;
      for (int i = 0; i < 2000; ++i) mine.push_back(*g->Next(42));
      absl::MutexLock lock(&mu);
      seen.insert(mine.begin(), mine.end());
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(seen.size(), 8000u);
}

}  // namespace
}  // namespace formica::dds
