// What dmsd's engine tests share: the engines over real storage in a
// temporary directory (group progress, the meta store, the dedup index, the
// topic catalog with topic "orders" of one queue, dead letters, consumer
// groups) and a FakeClock, without a daemon or gRPC. A test fixture derives
// from DmsEngineTest and calls OpenEngines() in its SetUp.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "consumer_groups.h"
#include "dead_letters.h"
#include "dedup_index.h"
#include "formica/common/clock.h"
#include "group_progress.h"
#include "meta_store.h"
#include "process.h"
#include "topic_catalog.h"

namespace formica::dms {

class DmsEngineTest : public ::testing::Test {
 protected:
  // `catalog.data_dir` is the temporary directory's; writes are not synced.
  void OpenEngines(CatalogOptions catalog, absl::Duration dedup_window, GroupOptions groups) {
    auto progress = GroupProgress::Open(dir_.File("progress"));
    ASSERT_TRUE(progress.ok()) << progress.status();
    progress_ = *std::move(progress);
    auto meta = MetaStore::Open(dir_.File("meta"));
    ASSERT_TRUE(meta.ok()) << meta.status();
    meta_ = *std::move(meta);
    dedup_ = std::make_unique<DedupIndex>(meta_.get(), &clock_, dedup_window);
    catalog.data_dir = dir_.path();
    catalog.sync = false;
    topics_ = std::make_unique<TopicCatalog>(catalog, progress_.get(), dedup_.get(), &clock_);
    auto orders = topics_->Open("orders", 1);
    ASSERT_TRUE(orders.ok()) << orders.status();
    orders_ = *orders;
    letters_ = std::make_unique<DeadLetters>(meta_.get(), &clock_);
    groups_ = std::make_unique<ConsumerGroups>(groups, topics_.get(), progress_.get(),
                                               letters_.get(), &clock_);
  }

  formica::testing::TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<GroupProgress> progress_;
  std::unique_ptr<MetaStore> meta_;
  std::unique_ptr<DedupIndex> dedup_;
  std::unique_ptr<TopicCatalog> topics_;
  TopicState* orders_ = nullptr;
  std::unique_ptr<DeadLetters> letters_;
  std::unique_ptr<ConsumerGroups> groups_;
};

}  // namespace formica::dms
