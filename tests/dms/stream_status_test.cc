// dmsd over the wire, with a real dsrd and dmsd and raw gRPC calls of our
// protos: its streams end with the status that explains them (a consumer or
// producer that misbehaves or outlives its broker), and produces with dedup
// keys, answered when durable without holding a server thread, keep their
// dedup semantics under concurrency.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "registry_fixture.h"

namespace formica::dms {
namespace {

using formica::registry::testing::RegistryTest;
using formica::testing::Subprocess;
using ::testing::HasSubstr;

class StreamStatusTest : public RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    port_ = formica::testing::PickFreePort();
    auto p =
        Subprocess::Start({formica::testing::BinaryPath("dms/dmsd"), "--listen",
                           absl::StrCat("127.0.0.1:", port_), "--data-dir", dir_.File("dmsd"),
                           "--registry", dsrd_->address(), "--set", "server.unpublish_grace=0s"},
                          dir_.File("dmsd.log"));
    ASSERT_TRUE(p.ok()) << p.status();
    dmsd_ = std::move(*p);
    ASSERT_TRUE(dmsd_->WaitForOutput("dmsd ready on port", absl::Seconds(20))) << dmsd_->Output();
    broker_ = v1::Broker::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::CreateTopicRequest req;
    req.set_name("orders");
    req.set_queues(2);
    v1::TopicInfo info;
    grpc::Status st = broker_->CreateTopic(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  static v1::ConsumeRequest Subscribe(const std::string& group) {
    v1::ConsumeRequest req;
    req.mutable_subscribe()->set_group(group);
    req.mutable_subscribe()->set_topic("orders");
    return req;
  }

  int port_ = 0;
  std::unique_ptr<Subprocess> dmsd_;
  std::unique_ptr<v1::Broker::Stub> broker_;
};

// A raw Consume stream that has subscribed (the broker's empty reply read).
struct Subscribed {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ConsumeRequest, v1::ConsumeReply>> stream;

  Subscribed(v1::Broker::Stub* broker, const v1::ConsumeRequest& subscribe) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    stream = broker->Consume(&context);
    EXPECT_TRUE(stream->Write(subscribe));
    v1::ConsumeReply reply;
    EXPECT_TRUE(stream->Read(&reply));
    EXPECT_EQ(reply.messages_size(), 0);
  }
  // Reads until the broker ends the stream, then its status.
  grpc::Status End() {
    v1::ConsumeReply reply;
    while (stream->Read(&reply)) {
    }
    return stream->Finish();
  }
};

TEST_F(StreamStatusTest, ASecondSubscribeEndsTheConsumeStreamWithInvalidArgument) {
  Subscribed s(broker_.get(), Subscribe("g1"));
  ASSERT_TRUE(s.stream->Write(Subscribe("g1")));
  grpc::Status st = s.End();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_message(), "a Consume stream subscribes only once");
  EXPECT_TRUE(dmsd_->WaitForOutput("a Consume stream subscribes only once", absl::Seconds(5)))
      << dmsd_->Output();
}

TEST_F(StreamStatusTest, AnAckOfAQueueTheTopicLacksEndsTheStreamWithInvalidArgument) {
  Subscribed s(broker_.get(), Subscribe("g1"));
  v1::ConsumeRequest ack;
  ack.add_acks()->set_queue(99);
  ASSERT_TRUE(s.stream->Write(ack));
  grpc::Status st = s.End();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_message(), "ack: queue 99 does not exist in topic 'orders'");
  EXPECT_TRUE(dmsd_->WaitForOutput("ack: queue 99 does not exist", absl::Seconds(5)))
      << dmsd_->Output();
}

// Acks that wait while another settle is in progress are settled together;
// a bad request after good ones still ends the stream, and the good acks
// sent before it stay acknowledged (they are not dropped with the batch).
TEST_F(StreamStatusTest, AcksSentBeforeABadAckAreKeptWhenTheStreamEnds) {
  constexpr int kMessages = 6;
  for (int i = 0; i < kMessages; ++i) {
    grpc::ClientContext ctx;
    v1::ProduceRequest req;
    req.set_topic("orders");
    req.add_messages()->set_body(absl::StrCat("m", i));
    v1::ProduceReply reply;
    grpc::Status st = broker_->Produce(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  v1::ConsumeRequest subscribe = Subscribe("g1");
  subscribe.mutable_subscribe()->set_concurrent(true);
  std::set<std::pair<int, uint64_t>> acked;
  {
    Subscribed s(broker_.get(), subscribe);
    std::vector<v1::MessageRef> delivered;
    v1::ConsumeReply reply;
    while (delivered.size() < static_cast<size_t>(kMessages) && s.stream->Read(&reply)) {
      for (const v1::Delivered& d : reply.messages()) delivered.push_back(d.ref());
    }
    ASSERT_EQ(delivered.size(), static_cast<size_t>(kMessages));
    // All but the last acked, one request each, written back to back
    // (several wait while the first settles), then an ack of a queue the
    // topic lacks.
    for (int i = 0; i + 1 < kMessages; ++i) {
      v1::ConsumeRequest ack;
      *ack.add_acks() = delivered[i];
      ASSERT_TRUE(s.stream->Write(ack));
      acked.emplace(delivered[i].queue(), delivered[i].offset());
    }
    v1::ConsumeRequest bad;
    bad.add_acks()->set_queue(99);
    ASSERT_TRUE(s.stream->Write(bad));
    grpc::Status st = s.End();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_EQ(st.error_message(), "ack: queue 99 does not exist in topic 'orders'");
  }
  // The group's next member gets only the message never acked.
  Subscribed next(broker_.get(), subscribe);
  v1::ConsumeReply reply;
  std::vector<std::pair<int, uint64_t>> again;
  absl::Time deadline = absl::Now() + absl::Seconds(3);
  while (again.empty() && absl::Now() < deadline && next.stream->Read(&reply)) {
    for (const v1::Delivered& d : reply.messages()) {
      again.emplace_back(d.ref().queue(), d.ref().offset());
    }
  }
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(acked.count(again[0]), 0u) << "an acked message was delivered again";
  next.context.TryCancel();
}

TEST_F(StreamStatusTest, AConsumeStreamThatDoesNotStartWithSubscribeIsRefused) {
  grpc::ClientContext context;
  auto stream = broker_->Consume(&context);
  v1::ConsumeRequest ack;
  ack.add_acks()->set_queue(0);
  ASSERT_TRUE(stream->Write(ack));
  v1::ConsumeReply reply;
  EXPECT_FALSE(stream->Read(&reply));
  grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_message(), "the first request on a Consume stream must subscribe");
}

TEST_F(StreamStatusTest, AConsumerThatFinishesWritingEndsItsStreamOk) {
  Subscribed s(broker_.get(), Subscribe("g1"));
  ASSERT_TRUE(s.stream->WritesDone());
  grpc::Status st = s.End();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
}

TEST_F(StreamStatusTest, AStoppingBrokerEndsConsumeStreamsWithUnavailable) {
  Subscribed s(broker_.get(), Subscribe("g1"));
  dmsd_->Signal(SIGTERM);
  grpc::Status st = s.End();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(st.error_message(), "dmsd is stopping; consume from another broker or later");
  EXPECT_EQ(dmsd_->Wait(absl::Seconds(30)), 0) << dmsd_->Output();
}

// Streams still waiting for their first request when dmsd stops end at
// once, with the status that says why, not after the drain timeout.
TEST_F(StreamStatusTest, AStoppingBrokerEndsStreamsThatSentNothingYetWithUnavailable) {
  grpc::ClientContext consume_context;
  consume_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto consume = broker_->Consume(&consume_context);
  grpc::ClientContext check_context;
  check_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto check = broker_->CheckBack(&check_context);
  absl::SleepFor(absl::Milliseconds(300));  // both calls reach dmsd
  absl::Time start = absl::Now();
  dmsd_->Signal(SIGTERM);
  v1::ConsumeReply reply;
  EXPECT_FALSE(consume->Read(&reply));
  grpc::Status st = consume->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(st.error_message(), "dmsd is stopping; consume from another broker or later");
  v1::CheckRequest req;
  EXPECT_FALSE(check->Read(&req));
  st = check->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(st.error_message(), "dmsd is stopping; connect the checker to another broker or later");
  // Before the drain timeout (5 s), which ended them with CANCELLED.
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_EQ(dmsd_->Wait(absl::Seconds(30)), 0) << dmsd_->Output();
}

TEST_F(StreamStatusTest, ACheckBackStreamWithoutItsProducerGroupIsRefused) {
  grpc::ClientContext context;
  auto stream = broker_->CheckBack(&context);
  ASSERT_TRUE(stream->Write(v1::CheckAnswer()));
  v1::CheckRequest req;
  EXPECT_FALSE(stream->Read(&req));
  grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_message(), "the first message on a CheckBack stream names the producer group");
  EXPECT_TRUE(dmsd_->WaitForOutput("names the producer group", absl::Seconds(5)))
      << dmsd_->Output();
}

TEST_F(StreamStatusTest, AStoppingBrokerEndsCheckBackStreamsWithUnavailable) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto stream = broker_->CheckBack(&context);
  v1::CheckAnswer hello;
  hello.set_producer_group("payments");
  ASSERT_TRUE(stream->Write(hello));
  // The broker lists a connected checker nowhere; give it a moment to take
  // the first message before it stops.
  absl::SleepFor(absl::Milliseconds(300));
  dmsd_->Signal(SIGTERM);
  v1::CheckRequest req;
  while (stream->Read(&req)) {
  }
  grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(st.error_message(), "dmsd is stopping; connect the checker to another broker or later");
  EXPECT_EQ(dmsd_->Wait(absl::Seconds(30)), 0) << dmsd_->Output();
}

TEST_F(StreamStatusTest, AProducerThatFinishesWritingEndsItsCheckBackStreamOk) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto stream = broker_->CheckBack(&context);
  v1::CheckAnswer hello;
  hello.set_producer_group("payments");
  ASSERT_TRUE(stream->Write(hello));
  ASSERT_TRUE(stream->WritesDone());
  v1::CheckRequest req;
  while (stream->Read(&req)) {
  }
  grpc::Status st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
}

// Many produces at once, each key sent by many: every call is answered,
// each key is stored once, and every duplicate is answered with the first
// send's queue and offset.
TEST_F(StreamStatusTest, ConcurrentProducesWithDedupKeysAreAllAnsweredAndStoredOnce) {
  constexpr int kKeys = 8, kSendsPerKey = 24;
  struct Call {
    grpc::ClientContext context;
    v1::ProduceRequest request;
    v1::ProduceReply reply;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Call>> calls;
  absl::Mutex mu;
  int answered = 0;
  for (int i = 0; i < kSendsPerKey; ++i) {
    for (int k = 0; k < kKeys; ++k) {
      auto call = std::make_unique<Call>();
      call->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      call->request.set_topic("orders");
      v1::Message* m = call->request.add_messages();
      m->set_key(absl::StrCat("account-", k));
      m->set_body(absl::StrCat("transfer-", k));
      m->set_dedup_key(absl::StrCat("transfer-", k));
      if (i % 3 == 0) *call->request.add_messages() = *m;  // twice in one request too
      calls.push_back(std::move(call));
    }
  }
  for (auto& call : calls) {
    Call* c = call.get();
    broker_->async()->Produce(&c->context, &c->request, &c->reply,
                              [&mu, &answered, c](grpc::Status st) {
                                absl::MutexLock lock(&mu);
                                c->status = std::move(st);
                                ++answered;
                              });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return answered == static_cast<int>(calls.size());
    };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60)))
        << answered << " of " << calls.size() << " produces answered";
  }
  std::map<std::string, std::set<std::pair<int, uint64_t>>> placed;  // key -> receipts
  std::map<std::string, int> stored;                                 // key -> non-duplicates
  for (const auto& call : calls) {
    ASSERT_TRUE(call->status.ok()) << call->status.error_message();
    ASSERT_EQ(call->reply.receipts_size(), call->request.messages_size());
    for (int j = 0; j < call->reply.receipts_size(); ++j) {
      const v1::Receipt& r = call->reply.receipts(j);
      const std::string& key = call->request.messages(j).dedup_key();
      placed[key].insert({r.queue(), r.offset()});
      if (!r.duplicate()) ++stored[key];
    }
  }
  ASSERT_EQ(placed.size(), static_cast<size_t>(kKeys));
  for (const auto& [key, receipts] : placed) {
    EXPECT_EQ(receipts.size(), 1u) << key << " answered with several places";
    EXPECT_EQ(stored[key], 1) << key;
  }
  // The topic holds each key once.
  Subscribed s(broker_.get(), Subscribe("audit"));
  std::map<std::string, int> seen;
  int messages = 0;
  absl::Time until = absl::Now() + absl::Seconds(20);
  while (messages < kKeys && absl::Now() < until) {
    v1::ConsumeReply reply;
    ASSERT_TRUE(s.stream->Read(&reply));
    v1::ConsumeRequest acks;
    for (const v1::Delivered& d : reply.messages()) {
      ++seen[d.message().body()];
      ++messages;
      *acks.add_acks() = d.ref();
    }
    if (acks.acks_size() > 0) {
      ASSERT_TRUE(s.stream->Write(acks));
    }
  }
  EXPECT_EQ(messages, kKeys);
  for (int k = 0; k < kKeys; ++k) EXPECT_EQ(seen[absl::StrCat("transfer-", k)], 1) << k;
  grpc::ClientContext ctx;
  v1::GetLagRequest req;
  req.set_group("audit");
  v1::GetLagReply lag;
  ASSERT_TRUE(broker_->GetLag(&ctx, req, &lag).ok());
  uint64_t end = 0;
  for (const v1::QueueLag& q : lag.queues()) end += q.end_offset();
  EXPECT_EQ(end, static_cast<uint64_t>(kKeys)) << "messages in the topic";
}

// A consumer that subscribes, stops reading while dmsd is still writing it
// large messages and cancels its call: what it never received goes to the
// next member of the group at once, without using an attempt. The next
// member's replies fit in gRPC's default receive limit.
TEST_F(StreamStatusTest, MessagesACancelledConsumerNeverReceivedGoToTheNextMemberAtOnce) {
  constexpr int kMessages = 8;
  const std::string body(600 << 10, 'x');
  for (int i = 0; i < kMessages; ++i) {
    grpc::ClientContext ctx;
    v1::ProduceRequest req;
    req.set_topic("orders");
    v1::Message* m = req.add_messages();
    m->set_key(absl::StrCat("account-", i));
    m->set_body(absl::StrCat(i, "-", body));
    v1::ProduceReply reply;
    grpc::Status st = broker_->Produce(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  v1::ConsumeRequest subscribe = Subscribe("settlement");
  subscribe.mutable_subscribe()->set_max_attempts(1);
  subscribe.mutable_subscribe()->set_concurrent(true);
  {
    // A client that takes no more than HTTP/2's initial 64 KiB window
    // unless it reads: none of the messages reaches it whole.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
    auto stalled = v1::Broker::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials(), args));
    Subscribed dead(stalled.get(), subscribe);
    absl::SleepFor(absl::Seconds(1));  // dmsd writes it what it holds
    dead.context.TryCancel();
    EXPECT_EQ(dead.stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(dmsd_->WaitForOutput("a member left (0 members)", absl::Seconds(1)))
      << dmsd_->Output();

  Subscribed live(broker_.get(), subscribe);
  std::set<std::string> got;
  absl::Time start = absl::Now();
  while (static_cast<int>(got.size()) < kMessages) {
    v1::ConsumeReply reply;
    ASSERT_TRUE(live.stream->Read(&reply)) << live.stream->Finish().error_message();
    v1::ConsumeRequest acks;
    for (const v1::Delivered& d : reply.messages()) {
      EXPECT_EQ(d.attempt(), 1) << d.message().body().substr(0, 2);
      got.insert(d.message().body().substr(0, d.message().body().find('-')));
      *acks.add_acks() = d.ref();
    }
    if (acks.acks_size() > 0) {
      ASSERT_TRUE(live.stream->Write(acks));
    }
  }
  // Well before the ack timeout (30 s) would have freed them.
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  grpc::ClientContext ctx;
  v1::GetLagRequest req;
  req.set_group("settlement");
  v1::GetLagReply lag;
  ASSERT_TRUE(broker_->GetLag(&ctx, req, &lag).ok());
  EXPECT_EQ(lag.dead_letters(), 0u);
}

// A reply larger than the client takes (one message at limits.max_body_bytes
// exceeds gRPC's default receive limit) leaves dmsd's write pending; when the
// consumer cancels, its stream ends at once and the message goes to the next
// member without using an attempt.
TEST_F(StreamStatusTest, AConsumerThatCancelsWhileAReplyIsPendingLeavesAtOnce) {
  {
    grpc::ClientContext ctx;
    v1::ProduceRequest req;
    req.set_topic("orders");
    req.add_messages()->set_body(std::string(4 << 20, 'x'));
    v1::ProduceReply reply;
    grpc::Status st = broker_->Produce(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  v1::ConsumeRequest subscribe = Subscribe("settlement");
  subscribe.mutable_subscribe()->set_max_attempts(1);
  {
    Subscribed dead(broker_.get(), subscribe);
    absl::SleepFor(absl::Seconds(1));  // dmsd starts writing it the message
    dead.context.TryCancel();
    EXPECT_EQ(dead.stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(dmsd_->WaitForOutput("a member left (0 members)", absl::Seconds(1)))
      << dmsd_->Output();

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto roomy = v1::Broker::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials(), args));
  Subscribed live(roomy.get(), subscribe);
  v1::ConsumeReply reply;
  ASSERT_TRUE(live.stream->Read(&reply)) << live.stream->Finish().error_message();
  ASSERT_EQ(reply.messages_size(), 1);
  EXPECT_EQ(reply.messages(0).attempt(), 1);
  EXPECT_EQ(reply.messages(0).message().body().size(), size_t{4 << 20});
  grpc::ClientContext ctx;
  v1::GetLagRequest req;
  req.set_group("settlement");
  v1::GetLagReply lag;
  ASSERT_TRUE(broker_->GetLag(&ctx, req, &lag).ok());
  EXPECT_EQ(lag.dead_letters(), 0u);
}

}  // namespace
}  // namespace formica::dms
