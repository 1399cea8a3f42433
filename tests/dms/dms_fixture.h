// The DMS end-to-end fixture: a real dsrd and a real dmsd (started,
// killed -9, stopped with SIGTERM and restarted as a user would), with a
// producer, consumers and a raw stub of the broker.
#pragma once

#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/rpc/client.h"
#include "registry_fixture.h"

namespace formica::dms::testing {

using formica::registry::testing::RegistryTest;
using formica::testing::Subprocess;

// Everything a consumer saw, by message body (each test's bodies are unique).
struct Seen {
  absl::Mutex mu;
  std::vector<std::string> handled ABSL_GUARDED_BY(mu);   // in handling order
  std::set<std::string> confirmed ABSL_GUARDED_BY(mu);    // acks the broker made durable
  int redelivered_after_confirm ABSL_GUARDED_BY(mu) = 0;  // must stay 0
  std::map<std::string, absl::Time> at ABSL_GUARDED_BY(mu);

  void Handle(const ReceivedMessage& m) {
    absl::MutexLock lock(&mu);
    if (confirmed.count(m.body) > 0) ++redelivered_after_confirm;
    handled.push_back(m.body);
    at.emplace(m.body, absl::Now());
  }
  void Confirm(const ReceivedMessage& m) {
    absl::MutexLock lock(&mu);
    confirmed.insert(m.body);
  }
  std::set<std::string> Distinct() {
    absl::MutexLock lock(&mu);
    return std::set<std::string>(handled.begin(), handled.end());
  }
  bool WaitDistinct(size_t n, absl::Duration timeout) {
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      if (Distinct().size() >= n) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
  bool WaitConfirmed(size_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return confirmed.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&ready), timeout);
  }
};

class DmsTest : public RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    port_ = formica::testing::PickFreePort();
    StartDmsd();
    registry_ = NewClient("dms-test");
    rpc::ClientOptions options;
    options.app_name = "dms-test";
    options.default_timeout = absl::Seconds(5);
    rpc_ = std::move(*rpc::Client::Create(options, registry_.get()));
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials());
    broker_ = v1::Broker::NewStub(channel_);
  }

  void TearDown() override {
    rpc_.reset();
    registry_.reset();
  }

  // Settings every dmsd of the fixture starts with (on top of the fast
  // retries below).
  virtual std::vector<std::string> DmsdFlags() const { return {}; }

  // dmsd's command line: this fixture's port, data dir and registry, the
  // fixture's flags, then `extra`.
  std::vector<std::string> DmsdCommand(const std::vector<std::string>& extra = {}) const {
    return DmsdCommandAt(port_, dir_.File("dmsd"), extra);
  }
  // The same for another dmsd: its port and data dir.
  std::vector<std::string> DmsdCommandAt(int port, const std::string& data_dir,
                                         const std::vector<std::string>& extra) const {
    std::vector<std::string> argv = {formica::testing::BinaryPath("dms/dmsd"),
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", port),
                                     "--data-dir",
                                     data_dir,
                                     "--registry",
                                     dsrd_->address(),
                                     "--set",
                                     "consume.retry_initial=50ms",
                                     "--set",
                                     "consume.retry_max=200ms",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    std::vector<std::string> fixed = DmsdFlags();
    argv.insert(argv.end(), fixed.begin(), fixed.end());
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  void StartDmsd(const std::vector<std::string>& extra = {}) {
    auto p =
        Subprocess::Start(DmsdCommand(extra), dir_.File(absl::StrCat("dmsd.", ++runs_, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    dmsd_ = std::move(*p);
    ASSERT_TRUE(dmsd_->WaitForOutput("dmsd ready on port", absl::Seconds(20))) << dmsd_->Output();
  }

  void CreateTopic(const std::string& name, int queues) {
    grpc::ClientContext ctx;
    v1::CreateTopicRequest req;
    req.set_name(name);
    req.set_queues(queues);
    v1::TopicInfo info;
    grpc::Status st = broker_->CreateTopic(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(info.queues_size(), queues);
  }

  std::unique_ptr<Producer> NewProducer() {
    ProducerOptions o;
    o.producer_group = "test-producer";
    o.timeout = absl::Seconds(3);
    return std::move(*Producer::Create(o, rpc_.get()));
  }

  ConsumerOptions Options(const std::string& group, const std::string& topic, Seen* seen) {
    ConsumerOptions o;
    o.group = group;
    o.topic = topic;
    o.on_acked = [seen](const ReceivedMessage& m) { seen->Confirm(m); };
    return o;
  }

  std::unique_ptr<Consumer> Consume(ConsumerOptions o, Seen* seen,
                                    ConsumeResult result = ConsumeResult::kSuccess) {
    auto c = Consumer::Start(
        std::move(o),
        [seen, result](const ReceivedMessage& m) {
          seen->Handle(m);
          return result;
        },
        rpc_.get());
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  // The group's dead letters once there are at least `n` (or what there
  // is when `timeout` has passed).
  v1::ListDeadLettersReply WaitForDeadLetters(const std::string& group, int n,
                                              absl::Duration timeout) {
    v1::ListDeadLettersReply letters;
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      grpc::ClientContext ctx;
      v1::ListDeadLettersRequest req;
      req.set_group(group);
      letters.Clear();
      grpc::Status st = broker_->ListDeadLetters(&ctx, req, &letters);
      EXPECT_TRUE(st.ok()) << st.error_message();
      if (!st.ok() || letters.letters_size() >= n) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return letters;
  }

  // formicactl against this dmsd: (exit code, output).
  std::pair<int, std::string> Ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tools/formicactl"), "--dms",
                                     absl::StrCat("127.0.0.1:", port_)};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Subprocess::Start(argv, dir_.File(absl::StrCat("ctl", ++ctl_runs_, ".log")));
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait(absl::Seconds(20));
    return {code, (*p)->Output()};
  }

  // The newest log file of a queue.
  std::string NewestSegment(const std::string& topic, int queue) {
    std::string newest;
    for (const auto& e : std::filesystem::directory_iterator(
             dir_.File(absl::StrCat("dmsd/topics/", topic, "/", queue)))) {
      if (e.path().extension() == ".log" && e.path().string() > newest) newest = e.path().string();
    }
    return newest;
  }

  int port_ = 0;
  int runs_ = 0;
  int ctl_runs_ = 0;
  std::unique_ptr<Subprocess> dmsd_;
  std::unique_ptr<registry::Client> registry_;
  std::unique_ptr<rpc::Client> rpc_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Broker::Stub> broker_;
};

inline OutgoingMessage Msg(const std::string& body, const std::string& key = "") {
  OutgoingMessage m;
  m.body = body;
  m.key = key;
  return m;
}

}  // namespace formica::dms::testing
