// Messages joined to DTS activities under LDC, against a real dsrd, a real
// dtsd in the GZone and one real dmsd per zone, each dmsd with its own
// transactions participant name: ZoneProducer::SendInActivity stores the
// half message only at the broker of its user's owner zone, that broker's
// participant is the one dtsd's phase two reaches, and the message is
// delivered there once the activity commits, never if it rolls back.
#include <grpcpp/grpcpp.h>

#include <map>
#include <mutex>
#include <set>

#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/activity.h"
#include "formica/ldc/messaging.h"
#include "formica/rpc/client.h"
#include "formica/rpc/zone_routing.h"
#include "ldc_fixture.h"

namespace formica::ldc::testing {
namespace {

constexpr char kTopic[] = "fund.orders";

class LdcActivityMessages : public LdcTest {
 protected:
  void SetUp() override {
    LdcTest::SetUp();
    PublishRules();
    StartDtsd();
    for (const char* zone : {"zone-a", "zone-b"}) StartBroker(zone);
    registry_ = registry::Client::Create(RegistryOptions("initiator")).value();
    rpc::ClientOptions o;
    o.app_name = "initiator";
    o.zone = "zone-a";
    rpc_ = rpc::Client::Create(o, registry_.get()).value();
  }

  void TearDown() override {
    consumers_.clear();
    rpc_.reset();
    registry_.reset();
    brokers_.clear();
    dtsd_.reset();
  }

  void StartDtsd() {
    std::vector<std::string> argv = {formica::testing::BinaryPath("dts/dtsd"),
                                     "--listen",
                                     absl::StrCat("127.0.0.1:", formica::testing::PickFreePort()),
                                     "--data-dir",
                                     dir_.File("dtsd"),
                                     "--registry",
                                     dsrd_->address(),
                                     "--set",
                                     "server.zone=global",
                                     "--set",
                                     "phase_two.retry_initial=50ms",
                                     "--set",
                                     "phase_two.retry_max=400ms",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    auto p = Subprocess::Start(argv, dir_.File("dtsd.log"));
    ASSERT_TRUE(p.ok()) << p.status();
    dtsd_ = std::move(*p);
    ASSERT_TRUE(dtsd_->WaitForOutput("dtsd ready on port", absl::Seconds(20))) << dtsd_->Output();
  }

  // A dmsd in `zone` whose participant is formica.dms.Transactions.<zone>.
  // Its check-back comes only after a minute: a message delivered sooner
  // was confirmed by dtsd's phase two at this very broker.
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
                                     "transactions.participant=formica.dms.Transactions." + zone,
                                     "--set",
                                     "transactions.check_after=60s",
                                     "--set",
                                     "topics.create=fund.orders:4",
                                     "--set",
                                     "server.unpublish_grace=0s"};
    auto p = Subprocess::Start(argv, dir_.File("dmsd-" + zone + ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE((*p)->WaitForOutput("dmsd ready on port", absl::Seconds(20))) << (*p)->Output();
    brokers_.push_back(std::move(*p));
    stubs_[zone] = dms::v1::Broker::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  // The half messages `zone`'s broker holds undecided.
  std::vector<dms::v1::HalfMessage> Halves(const std::string& zone) {
    grpc::ClientContext ctx;
    dms::v1::ListHalfMessagesRequest req;
    dms::v1::ListHalfMessagesReply reply;
    grpc::Status st = stubs_[zone]->ListHalfMessages(&ctx, req, &reply);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return {reply.messages().begin(), reply.messages().end()};
  }

  // A consumer of `zone`'s broker only, recording the bodies it gets.
  void StartConsumer(const std::string& zone) {
    auto c = std::make_unique<ZoneConsumer>();
    c->client = StartZone(zone, zone + "-ledger");
    c->pinned = std::make_unique<rpc::PinnedZoneRouting>(zone);
    rpc::ClientOptions options;
    options.zone = zone;
    options.zone_routing = c->pinned.get();
    c->rpc = rpc::Client::Create(options, c->client.registry.get()).value();
    dms::ConsumerOptions o;
    o.group = "ledger";
    o.topic = kTopic;
    o.start_timeout = absl::Seconds(20);
    c->consumer = dms::Consumer::Start(
                      o,
                      [this, zone](const dms::ReceivedMessage& m) {
                        std::lock_guard<std::mutex> lock(mu_);
                        delivered_[m.body].insert(zone);
                        return dms::ConsumeResult::kSuccess;
                      },
                      c->rpc.get())
                      .value();
    consumers_.push_back(std::move(c));
  }

  std::map<std::string, std::set<std::string>> Delivered() {
    std::lock_guard<std::mutex> lock(mu_);
    return delivered_;
  }

  struct ZoneConsumer {
    ZoneClient client;
    std::unique_ptr<rpc::PinnedZoneRouting> pinned;
    std::unique_ptr<rpc::Client> rpc;
    std::unique_ptr<dms::Consumer> consumer;
  };

  std::unique_ptr<Subprocess> dtsd_;
  std::vector<std::unique_ptr<Subprocess>> brokers_;
  std::map<std::string, std::unique_ptr<dms::v1::Broker::Stub>> stubs_;
  std::unique_ptr<registry::Client> registry_;
  std::unique_ptr<rpc::Client> rpc_;
  std::vector<std::unique_ptr<ZoneConsumer>> consumers_;
  std::mutex mu_;
  std::map<std::string, std::set<std::string>> delivered_;  // body -> zones it was delivered in
};

dms::OutgoingMessage ForUser(const std::string& user, const std::string& body) {
  dms::OutgoingMessage m;
  m.key = user;
  m.properties[kUserProperty] = user;
  m.body = body;
  return m;
}

TEST_F(LdcActivityMessages, AMessageStaysInItsUsersZoneAndIsDeliveredOnlyAfterCommit) {
  StartConsumer("zone-a");
  StartConsumer("zone-b");
  ZoneClient gateway = StartZone("zone-a", "gateway");
  dms::ProducerOptions po;
  po.producer_group = "gateway";
  auto producer = ZoneProducer::Create(gateway.router.get(), gateway.registry.get(), po).value();

  // Users of both zones: 2088010..2088019 (zone-a), 2088060..2088069 (zone-b).
  // Even ones commit, odd ones roll back.
  std::map<std::string, std::string> zone_of;
  std::set<std::string> committed, rolled_back;
  for (int i = 0; i < 20; ++i) {
    const std::string user = absl::StrCat(2088000 + (i < 10 ? 10 + i : 50 + i));
    const std::string body = absl::StrCat("order-", user);
    zone_of[body] = i < 10 ? "zone-a" : "zone-b";
    dts::ActivityOptions options;
    options.name = "test.Order";
    auto activity = dts::Activity::Begin(rpc_.get(), options);
    ASSERT_TRUE(activity.ok()) << activity.status();
    std::string txn;
    absl::Status st = (*activity)->Run([&]() -> absl::Status {
      auto id = producer->SendInActivity(kTopic, ForUser(user, body));
      if (!id.ok()) return id.status();
      txn = *id;
      return absl::OkStatus();
    });
    ASSERT_TRUE(st.ok()) << st;
    // The half message is at the owner zone's broker, and only there.
    for (const std::string zone : {"zone-a", "zone-b"}) {
      int here = 0;
      for (const auto& h : Halves(zone)) here += h.transaction_id() == txn;
      EXPECT_EQ(here, zone == zone_of[body] ? 1 : 0) << body << " at " << zone;
    }
    if (i % 2 == 0) {
      ASSERT_TRUE((*activity)->Commit().ok());
      committed.insert(body);
    } else {
      ASSERT_TRUE((*activity)->Rollback("the test rolls it back").ok());
      rolled_back.insert(body);
    }
  }
  // Committed: delivered, once per zone consumer group, in the owner zone
  // only; well before any check-back (60 s), so by dtsd's phase two.
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (Delivered().size() < committed.size() && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  // Phase two of the rolled-back ones has had time to run too.
  until = absl::Now() + absl::Seconds(10);
  while (absl::Now() < until && (!Halves("zone-a").empty() || !Halves("zone-b").empty())) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(Halves("zone-a").empty()) << "undecided half messages left in zone-a";
  EXPECT_TRUE(Halves("zone-b").empty()) << "undecided half messages left in zone-b";
  absl::SleepFor(absl::Milliseconds(500));  // a late delivery would show by now
  auto delivered = Delivered();
  for (const std::string& body : committed) {
    ASSERT_EQ(delivered.count(body), 1u) << body << " was committed but not delivered";
    EXPECT_EQ(delivered[body], std::set<std::string>{zone_of[body]})
        << body << " was delivered outside its user's zone";
  }
  for (const std::string& body : rolled_back) {
    EXPECT_EQ(delivered.count(body), 0u) << body << " was rolled back but delivered";
  }
  EXPECT_EQ(delivered.size(), committed.size());
}

TEST_F(LdcActivityMessages, SendInActivityOutsideAnActivityIsRefused) {
  ZoneClient gateway = StartZone("zone-a", "gateway");
  dms::ProducerOptions po;
  po.producer_group = "gateway";
  auto producer = ZoneProducer::Create(gateway.router.get(), gateway.registry.get(), po).value();
  auto id = producer->SendInActivity(kTopic, ForUser("2088060", "lost"));
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << id.status();
  EXPECT_THAT(std::string(id.status().message()), ::testing::HasSubstr("no activity id"));
  EXPECT_TRUE(Halves("zone-b").empty());
}

}  // namespace
}  // namespace formica::ldc::testing
