// Messages under LDC against a real dsrd and one real dmsd per zone: each
// message handled once, in its user's owner zone at the time it is handled,
// through a switch that leaves messages queued in the old zone.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/ldc/messaging.h"
#include "formica/rpc/client.h"
#include "formica/rpc/zone_routing.h"
#include "ldc_fixture.h"

namespace formica::ldc::testing {
namespace {

constexpr char kTopic[] = "fund.orders";

dms::ProducerOptions ForwardGroup(const std::string& zone) {
  dms::ProducerOptions o;
  o.producer_group = zone + "-forward";
  return o;
}

// One handling of a message: where, and who owned its user then.
struct Handling {
  std::string zone;
  std::string owner;
  bool forwarded = false;
};

class LdcDmsTest : public LdcTest {
 protected:
  void SetUp() override {
    LdcTest::SetUp();
    PublishRules();
    for (const char* zone : {"zone-a", "zone-b"}) StartBroker(zone);
  }

  void TearDown() override {
    Release();  // a consumer still held would never stop
    zones_.clear();
    brokers_.clear();
  }

  void StartBroker(const std::string& zone) {
    int port = formica::testing::PickFreePort();
    std::vector<std::string> argv = {formica::testing::BinaryPath("dms/dmsd"),
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", port),
                                     "--data-dir",
                                     dir_.File("dmsd-" + zone),
                                     "--registry",
                                     dsrd_->address(),
                                     "--set",
                                     "server.zone=" + zone,
                                     "--set",
                                     "consume.retry_initial=50ms",
                                     "--set",
                                     "consume.retry_max=200ms",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    auto p = Subprocess::Start(argv, dir_.File("dmsd-" + zone + ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE((*p)->WaitForOutput("dmsd ready on port", absl::Seconds(20))) << (*p)->Output();
    brokers_.push_back(std::move(*p));
    auto stub = dms::v1::Broker::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    dms::v1::CreateTopicRequest req;
    req.set_name(kTopic);
    req.set_queues(4);
    dms::v1::TopicInfo info;
    grpc::Status st = stub->CreateTopic(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  // A zone's consumer process: Router, forwarding producer, and a consumer
  // of its own zone's broker whose handler records each handling.
  struct Zone {
    ZoneClient client;
    std::unique_ptr<rpc::PinnedZoneRouting> only_here;
    std::unique_ptr<rpc::Client> rpc;
    std::unique_ptr<ZoneProducer> forward;
    std::unique_ptr<dms::Consumer> consumer;
  };

  // `hold_after` > 0: after that many messages this zone's consumer waits
  // (outside ZoneHandler, holding no write permit) until Release().
  void StartConsumer(const std::string& zone, absl::Duration per_message, int hold_after = 0) {
    auto z = std::make_unique<Zone>();
    z->client = StartZone(zone, zone + "-billing");
    z->only_here = std::make_unique<rpc::PinnedZoneRouting>(zone);
    rpc::ClientOptions options;
    options.zone = zone;
    options.zone_routing = z->only_here.get();
    z->rpc = rpc::Client::Create(options, z->client.registry.get()).value();
    z->forward =
        ZoneProducer::Create(z->client.router.get(), z->client.registry.get(), ForwardGroup(zone))
            .value();
    dms::ConsumerOptions c;
    c.group = "billing";
    c.topic = kTopic;
    c.threads = 1;
    Router* router = z->client.router.get();
    auto handler = [this, zone, router, per_message](const dms::ReceivedMessage& m) {
      // Runs under the write permit: the route is the one it is handled under.
      Route route = router->RouteUser(m.properties.at(kUserProperty)).value();
      {
        std::lock_guard<std::mutex> lock(mu_);
        handled_[m.dedup_key].push_back(
            {zone, route.owner, m.properties.count(kForwardedFromProperty) > 0});
      }
      absl::SleepFor(per_message);
      return dms::ConsumeResult::kSuccess;
    };
    dms::MessageHandler zoned = ZoneHandler(router, z->forward.get(), handler);
    auto held = [this, hold_after, zoned,
                 seen = std::make_shared<std::atomic<int>>(0)](const dms::ReceivedMessage& m) {
      if (hold_after > 0 && seen->fetch_add(1) >= hold_after) {
        std::unique_lock<std::mutex> lock(mu_);
        released_cv_.wait(lock, [this] { return released_; });
      }
      return zoned(m);
    };
    z->consumer = dms::Consumer::Start(c, held, z->rpc.get()).value();
    zones_.push_back(std::move(z));
  }

  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    released_cv_.notify_all();
  }

  size_t HandledKeys() {
    std::lock_guard<std::mutex> lock(mu_);
    return handled_.size();
  }

  std::vector<std::unique_ptr<Subprocess>> brokers_;
  std::vector<std::unique_ptr<Zone>> zones_;
  std::mutex mu_;
  std::map<std::string, std::vector<Handling>> handled_;
  bool released_ = false;
  std::condition_variable released_cv_;
};

std::string UserOf(int i) { return absl::StrCat(2088000 + i % 100); }

dms::ProducerOptions Group(const std::string& name) {
  dms::ProducerOptions o;
  o.producer_group = name;
  return o;
}

TEST_F(LdcDmsTest, EachMessageIsHandledOnceInItsUsersOwnerZoneThroughASwitch) {
  // zone-a handles 100 messages, then holds the rest until the switch is
  // done, so its queue still holds shards 00-49's messages when they move
  // to zone-b.
  StartConsumer("zone-a", absl::ZeroDuration(), /*hold_after=*/100);
  StartConsumer("zone-b", absl::ZeroDuration());
  ZoneClient gateway = StartZone("zone-a", "gateway");
  auto producer =
      ZoneProducer::Create(gateway.router.get(), gateway.registry.get(), Group("gateway")).value();
  int sent = 0;
  auto send = [&](int n) {
    for (int i = 0; i < n; ++i, ++sent) {
      dms::OutgoingMessage m;
      m.key = UserOf(sent);
      m.properties[kUserProperty] = UserOf(sent);
      m.dedup_key = absl::StrCat("order-", sent);
      m.body = "buy";
      auto r = producer->Send(kTopic, m);
      ASSERT_TRUE(r.ok()) << r.status();
    }
  };
  send(600);
  SwitchOptions options;
  options.shards = *ParseShards("00-49");
  options.to = "zone-b";
  auto result = admin_->Switch(options);
  ASSERT_TRUE(result.ok()) << result.status();
  Release();
  send(400);  // after the switch: 00-49 go to zone-b's broker directly

  absl::Time until = absl::Now() + absl::Seconds(60);
  while (HandledKeys() < static_cast<size_t>(sent) && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::SleepFor(absl::Milliseconds(500));  // a second handling would show by now
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(handled_.size(), static_cast<size_t>(sent)) << "messages were lost";
  int forwarded = 0, in_a = 0, in_b = 0;
  for (const auto& [key, handlings] : handled_) {
    ASSERT_EQ(handlings.size(), 1u) << key << " was handled " << handlings.size() << " times";
    const Handling& h = handlings[0];
    EXPECT_EQ(h.zone, h.owner) << key << " was handled outside its owner zone";
    forwarded += h.forwarded;
    (h.zone == "zone-a" ? in_a : in_b)++;
  }
  EXPECT_GT(forwarded, 0) << "no message was left in zone-a to forward";
  EXPECT_GT(in_a, 0);
  EXPECT_GT(in_b, 0);
  std::printf("handled %d in zone-a, %d in zone-b, %d of them forwarded from zone-a\n", in_a, in_b,
              forwarded);
}

TEST_F(LdcDmsTest, AMessageWithoutADedupKeyIsNotZoneRouted) {
  ZoneClient gateway = StartZone("zone-a", "gateway");
  auto producer =
      ZoneProducer::Create(gateway.router.get(), gateway.registry.get(), Group("gateway")).value();
  dms::OutgoingMessage m;
  m.properties[kUserProperty] = "2088042";
  auto r = producer->Send(kTopic, m);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("needs a dedup key"));
}

}  // namespace
}  // namespace formica::ldc::testing
