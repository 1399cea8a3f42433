// Housekeeping with a fake clock, without a daemon: retention removes whole
// segments once they are older than the retention age (never the newest),
// and the dedup sweep runs once per interval.
#include "housekeeping.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "disk_watermark.h"
#include "engine_fixture.h"

namespace formica::dms {
namespace {

constexpr absl::Duration kRetention = absl::Hours(72);
constexpr absl::Duration kInterval = absl::Seconds(10);
constexpr absl::Duration kWindow = absl::Seconds(5);  // shorter than the interval

class DmsHousekeeping : public DmsEngineTest {
 protected:
  void SetUp() override {
    // Segments carry the wall clock's write times; the fake one starts there.
    clock_.Set(absl::Now());
    CatalogOptions co;
    co.segment_bytes = 4096;
    OpenEngines(co, kWindow, GroupOptions());
    if (HasFatalFailure()) return;
    topic_ = orders_->topic.get();
    HousekeepingOptions ho;
    ho.retention_age = kRetention;
    ho.interval = kInterval;
    housekeeping_ = std::make_unique<Housekeeping>(ho, topics_.get(), groups_.get(), dedup_.get(),
                                                   &disk_, &clock_);
  }

  // Messages of 1 KiB with dedup keys, several segments' worth.
  void Produce(int n) {
    for (int i = 0; i < n; ++i) {
      v1::StoredMessage m;
      m.set_body(std::string(1024, 'x'));
      m.set_dedup_key(absl::StrCat("key-", produced_));
      m.set_born_unix_ms(absl::ToUnixMillis(clock_.Now()));
      auto p = topic_->Produce(m);
      ASSERT_TRUE(p.ok()) << p.status();
      ASSERT_TRUE(dedup_
                      ->Index(*topics_->Find("orders"),
                              {{m.dedup_key(), DedupEntry{p->queue, p->offset, m.born_unix_ms()}}},
                              {})
                      .ok());
      ++produced_;
    }
  }

  bool Indexed(int i) {
    auto found = meta_->Find("orders", absl::StrCat("key-", i));
    return found.ok() && found->has_value();
  }

  DiskWatermark disk_{dir_.path(), 1.0};
  Topic* topic_ = nullptr;
  std::unique_ptr<Housekeeping> housekeeping_;
  int produced_ = 0;
};

TEST_F(DmsHousekeeping, RetentionRemovesSegmentsOlderThanTheRetentionAgeButNeverTheNewest) {
  Produce(20);
  housekeeping_->RunOnce();
  EXPECT_EQ(topic_->first_offset(0), 0u) << "nothing is old yet";

  clock_.Advance(kRetention - absl::Minutes(1));
  housekeeping_->RunOnce();
  EXPECT_EQ(topic_->first_offset(0), 0u) << "not before the retention age";

  clock_.Advance(absl::Minutes(2));
  housekeeping_->RunOnce();
  EXPECT_GT(topic_->first_offset(0), 0u) << "old segments removed";
  EXPECT_LT(topic_->first_offset(0), topic_->end_offset(0)) << "the newest segment is kept";
}

TEST_F(DmsHousekeeping, TheDedupSweepRunsOncePerInterval) {
  Produce(1);
  housekeeping_->RunOnce();  // the first round sweeps
  EXPECT_TRUE(Indexed(0)) << "within the window";
  clock_.Advance(kWindow + absl::Seconds(1));
  housekeeping_->RunOnce();
  EXPECT_TRUE(Indexed(0)) << "out of the window, but the next sweep is not due";

  clock_.Advance(kInterval - kWindow - absl::Seconds(1));
  housekeeping_->RunOnce();
  EXPECT_FALSE(Indexed(0)) << "swept once the interval passed";
}

}  // namespace
}  // namespace formica::dms
