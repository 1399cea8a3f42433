// Topic on real files: a key keeps its queue and its order under concurrent
// producers, across reopen; the queue count cannot change under a topic.
#include "topic.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <thread>

#include "process.h"

namespace formica::dms {
namespace {

using formica::testing::TempDir;

std::unique_ptr<Topic> OpenTopic(const std::string& dir, int queues = 4) {
  TopicOptions o;
  o.dir = dir;
  o.queues = queues;
  auto t = Topic::Open(o, nullptr);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// Every key's messages, in queue order, must carry sequence numbers 0, 1, 2...
void ExpectPerKeyOrder(Topic& topic, int keys, int per_key) {
  std::map<std::string, int> next;
  std::map<std::string, int> queue_of;
  for (int q = 0; q < topic.queues(); ++q) {
    std::vector<std::pair<uint64_t, v1::StoredMessage>> out;
    ASSERT_TRUE(topic.Read(q, 0, 100000, &out).ok());
    for (const auto& [offset, m] : out) {
      auto [it, fresh] = queue_of.emplace(m.key(), q);
      EXPECT_EQ(it->second, q) << m.key() << " is in two queues";
      EXPECT_EQ(std::stoi(m.properties().at("seq")), next[m.key()]) << m.key();
      next[m.key()]++;
    }
  }
  ASSERT_EQ(static_cast<int>(next.size()), keys);
  for (const auto& [key, n] : next) EXPECT_EQ(n, per_key) << key;
}

TEST(Topic, AKeyKeepsItsQueueAndOrderUnderConcurrentProducersAndReopen) {
  TempDir dir;
  constexpr int kKeys = 8;
  constexpr int kPerKey = 100;
  {
    auto topic = OpenTopic(dir.path());
    std::vector<std::thread> producers;
    for (int k = 0; k < kKeys; ++k) {
      producers.emplace_back([&, k] {
        for (int i = 0; i < kPerKey; ++i) {
          v1::StoredMessage m;
          m.set_key("user-" + std::to_string(k));
          (*m.mutable_properties())["seq"] = std::to_string(i);
          m.set_body("body");
          auto p = topic->Produce(m);
          ASSERT_TRUE(p.ok()) << p.status();
          EXPECT_EQ(p->queue, topic->QueueFor(m.key()));
        }
      });
    }
    for (auto& p : producers) p.join();
    ExpectPerKeyOrder(*topic, kKeys, kPerKey);
  }
  auto again = OpenTopic(dir.path());
  ExpectPerKeyOrder(*again, kKeys, kPerKey);
  EXPECT_EQ(again->QueueFor("user-3"), static_cast<int>(Crc32c("user-3") % 4))
      << "routing is stable across restarts and builds";
}

TEST(Topic, KeylessMessagesSpreadOverQueues) {
  TempDir dir;
  auto topic = OpenTopic(dir.path());
  std::set<int> used;
  for (int i = 0; i < 8; ++i) used.insert(topic->Produce(v1::StoredMessage())->queue);
  EXPECT_EQ(used.size(), 4u);
}

TEST(Topic, TheQueueCountCannotChangeAndBadInputIsRefused) {
  TempDir dir;
  { OpenTopic(dir.path(), 4); }
  TopicOptions o;
  o.dir = dir.path();
  o.queues = 8;
  auto changed = Topic::Open(o, nullptr);
  EXPECT_EQ(changed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(changed.status().message().find("has 4 queues, not 8"), absl::string_view::npos)
      << changed.status();
  o.queues = 0;  // reopen with the count it was created with
  auto stored = Topic::Open(o, nullptr);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)->queues(), 4);
  stored->reset();
  TempDir fresh;
  o.dir = fresh.path();  // a new topic needs a count
  EXPECT_EQ(Topic::Open(o, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  auto topic = OpenTopic(dir.path(), 4);
  std::vector<std::pair<uint64_t, v1::StoredMessage>> out;
  EXPECT_EQ(topic->Read(4, 0, 1, &out).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TopicDirectory, EveryNameHasOneDirectoryAndEveryDirectoryOneName) {
  for (const std::string& name :
       {std::string("orders"), std::string("..."), std::string("-"), std::string("a."),
        std::string("Ab"), std::string("aB"), std::string("AB"), std::string(128, 'Q'),
        std::string("Fund.Orders_2-x")}) {
    std::string dir = TopicDirectory(name);
    EXPECT_LE(dir.size(), 162u) << name;
    EXPECT_EQ(TopicOfDirectory(dir), name) << dir;
  }
  EXPECT_EQ(TopicDirectory("orders"), "orders") << "plain names stay as they were";
  EXPECT_EQ(TopicDirectory("Ab"), "^ab^1");
  EXPECT_EQ(TopicDirectory("aB"), "^ab^2");
  // Directory names no topic has.
  for (const char* dir :
       {".", "..", "", "Ab", "^ab^0", "^ab^4", "^ab", "^ab^1x", "^a^1^1", "lost+found", "^ab^F"}) {
    EXPECT_EQ(TopicOfDirectory(dir), std::nullopt) << dir;
  }
}

}  // namespace
}  // namespace formica::dms
