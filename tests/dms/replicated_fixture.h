// A replicated dmsd broker group (docs/ha.md) with clients: a producer
// sending with dedup keys and a consumer group, both following the leader
// through the registry, and the history check over what they saw: every
// acknowledged message is delivered, and each is stored once, retried sends
// included.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "dms_group_fixture.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/rpc/client.h"

namespace formica::dms::testing {

inline constexpr char kTopic[] = "orders";

// What the producer had acknowledged and what the consumer group saw.
struct History {
  absl::Mutex mu;
  std::set<std::string> acked ABSL_GUARDED_BY(mu);
  std::set<std::string> retried ABSL_GUARDED_BY(mu);
  std::set<std::string> failed ABSL_GUARDED_BY(mu);  // sends given up (without app retries)
  absl::Time first_ack_after ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  absl::Time killed_at ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  // body -> every (queue, offset) it was delivered from
  std::map<std::string, std::set<std::pair<int, uint64_t>>> delivered ABSL_GUARDED_BY(mu);
  // Consumer acks the broker confirmed durable, and deliveries of those
  // afterwards (must stay 0: the group's progress is replicated).
  std::set<std::string> confirmed ABSL_GUARDED_BY(mu);
  int redelivered_after_confirm ABSL_GUARDED_BY(mu) = 0;

  size_t Acked() {
    absl::MutexLock lock(&mu);
    return acked.size();
  }
  void Killed() {
    absl::MutexLock lock(&mu);
    killed_at = absl::Now();
    first_ack_after = absl::InfinitePast();
  }
  // Kill to the first acknowledged send after it; waits up to `timeout`.
  absl::Duration Failover(absl::Duration timeout) {
    absl::MutexLock lock(&mu);
    auto acked_after = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return first_ack_after > killed_at;
    };
    if (!mu.AwaitWithTimeout(absl::Condition(&acked_after), timeout)) {
      return absl::InfiniteDuration();
    }
    return first_ack_after - killed_at;
  }
};

class ReplicatedDms : public DmsGroupTest {
 protected:
  void SetUp() override {
    DmsGroupTest::SetUp();
    registry_ = NewClient("dms-group-test");
    rpc::ClientOptions options;
    options.app_name = "dms-group-test";
    options.default_timeout = absl::Seconds(3);
    rpc_ = std::move(*rpc::Client::Create(options, registry_.get()));
  }
  void TearDown() override {
    consumer_.reset();
    producer_.reset();
    rpc_.reset();
    registry_.reset();
  }

  // How most tests begin: the group started (configs written before), a
  // ready leader, the clients writing into h_. Returns the leader, or -1
  // when none came in time.
  int StartGroupWithClients() {
    StartAll();
    int leader = WaitForLeader(absl::Seconds(15));
    if (leader >= 0) StartClients(&h_);
    return leader;
  }

  // A producer and a consumer of `group` (a new group starts at the oldest
  // message kept) that record into `h`.
  void StartClients(History* h, const std::string& group = "auditors") {
    ProducerOptions po;
    po.producer_group = "group-test";
    po.timeout = absl::Seconds(2);
    producer_ = std::move(*Producer::Create(po, rpc_.get()));
    ConsumerOptions co;
    co.group = group;
    co.topic = kTopic;
    co.reconnect_delay = absl::Milliseconds(100);
    co.on_acked = [h](const ReceivedMessage& m) {
      absl::MutexLock lock(&h->mu);
      h->confirmed.insert(m.body);
    };
    auto c = Consumer::Start(
        co,
        [h](const ReceivedMessage& m) {
          absl::MutexLock lock(&h->mu);
          if (h->confirmed.count(m.body) > 0) ++h->redelivered_after_confirm;
          h->delivered[m.body].insert({m.queue, m.offset});
          return ConsumeResult::kSuccess;
        },
        rpc_.get());
    ASSERT_TRUE(c.ok()) << c.status();
    consumer_ = std::move(*c);
  }

  // Sends "m<i>" (dedup key the same) one after another until `stop`.
  // With `app_retry`, each is sent again until acknowledged (at least once
  // from the application's side); without, a failed send is given up and
  // recorded. The dedup key holds either to one stored copy. `pace`: a
  // pause after each acknowledged send.
  void ProduceLoop(History* h, std::atomic<bool>* stop, int limit, bool app_retry = true,
                   absl::Duration pace = absl::ZeroDuration()) {
    for (int i = static_cast<int>(h->Acked()); i < limit && !stop->load(); ++i) {
      if (i > 0) absl::SleepFor(pace);
      OutgoingMessage m;
      m.body = absl::StrCat("m", i);
      m.dedup_key = m.body;
      m.key = absl::StrCat("k", i % 7);
      while (!stop->load()) {
        absl::StatusOr<SendReceipt> r = producer_->Send(kTopic, m);
        {
          absl::MutexLock lock(&h->mu);
          if (r.ok()) {
            h->acked.insert(m.body);
            if (h->first_ack_after < h->killed_at && absl::Now() > h->killed_at) {
              h->first_ack_after = absl::Now();
            }
            break;
          }
          if (!app_retry) {
            std::printf("send %s failed: %s\n", m.body.c_str(), r.status().ToString().c_str());
            h->failed.insert(m.body);
            break;
          }
          h->retried.insert(m.body);
        }
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
  }

  void WaitAcked(History* h, size_t n) {
    absl::Time end = absl::Now() + absl::Seconds(20);
    while (h->Acked() < n && absl::Now() < end) absl::SleepFor(absl::Milliseconds(10));
    ASSERT_GE(h->Acked(), n) << Logs();
  }

  // acked ⊆ delivered, and each body stored at one place only.
  void CheckHistory(History* h) {
    absl::Time end = absl::Now() + absl::Seconds(30);
    std::vector<std::string> missing;
    while (true) {
      missing.clear();
      {
        absl::MutexLock lock(&h->mu);
        for (const std::string& id : h->acked) {
          if (h->delivered.count(id) == 0) missing.push_back(id);
        }
      }
      if (missing.empty() || absl::Now() > end) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    absl::MutexLock lock(&h->mu);
    EXPECT_TRUE(missing.empty()) << missing.size() << " acknowledged messages never delivered, "
                                 << "e.g. " << missing.front() << "\n"
                                 << Logs();
    for (const auto& [body, places] : h->delivered) {
      EXPECT_EQ(places.size(), 1u) << body << " is stored " << places.size()
                                   << " times (retried: " << h->retried.count(body) << ")";
    }
    EXPECT_EQ(h->redelivered_after_confirm, 0)
        << "messages whose consumer ack was confirmed were delivered again";
    EXPECT_GT(h->confirmed.size(), 0u);
    std::printf("history: %zu acknowledged, %zu delivered, %zu sends retried, %zu acks confirmed\n",
                h->acked.size(), h->delivered.size(), h->retried.size(), h->confirmed.size());
  }

  History h_;  // outlives the clients that write into it
  std::unique_ptr<registry::Client> registry_;
  std::unique_ptr<rpc::Client> rpc_;
  std::unique_ptr<Producer> producer_;
  std::unique_ptr<Consumer> consumer_;
};

}  // namespace formica::dms::testing
