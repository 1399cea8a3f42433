// dmsd's streams end with the status that explains them, as the client
// receives it over the wire: a real dsrd and dmsd, and raw gRPC streams of
// our protos acting as a consumer or producer that misbehaves or outlives
// its broker.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

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

}  // namespace
}  // namespace formica::dms
