// dsrd's session stream ends with the status that explains it, as the
// client receives it over the wire (a raw stream of our protos against a
// real dsrd).
#include "registry_fixture.h"

namespace formica::registry::testing {
namespace {

using ::testing::HasSubstr;

// Reads until dsrd ends the stream, then its status.
grpc::Status End(RawSession& s) {
  v1::ServerMessage m;
  while (s.Read(&m)) {
  }
  return s.Finish();
}

class SessionStatusTest : public RegistryTest {};

TEST_F(SessionStatusTest, ASecondOpenEndsTheStreamWithInvalidArgument) {
  RawSession s(dsrd_->address());
  ASSERT_NE(s.Open(), 0u);
  v1::ClientMessage again;
  again.mutable_open()->set_client_name("raw");
  ASSERT_TRUE(s.Write(again));
  grpc::Status st = End(s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_message(), "this stream already has a session");
  EXPECT_TRUE(
      dsrd_->process()->WaitForOutput("this stream already has a session", absl::Seconds(5)));
}

TEST_F(SessionStatusTest, AStreamThatDoesNotOpenFirstIsRefused) {
  RawSession s(dsrd_->address());
  v1::ClientMessage beat;
  beat.mutable_heartbeat()->set_seq(1);
  ASSERT_TRUE(s.Write(beat));
  grpc::Status st = End(s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_message(), "the first message on a session stream must be 'open'");
}

TEST_F(SessionStatusTest, AnEmptyMessageEndsTheStreamWithInvalidArgument) {
  RawSession s(dsrd_->address());
  ASSERT_NE(s.Open(), 0u);
  ASSERT_TRUE(s.Write(v1::ClientMessage()));
  grpc::Status st = End(s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_message(), "empty message on a session stream");
}

TEST_F(SessionStatusTest, ResumingAnUnknownSessionEndsWithNotFound) {
  RawSession s(dsrd_->address());
  EXPECT_EQ(s.Open(/*resume=*/12345), 0u);
  grpc::Status st = End(s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("session 12345 not found"));
}

TEST_F(SessionStatusTest, ASessionEndedByAnOperatorEndsWithUnavailable) {
  RawSession s(dsrd_->address());
  uint64_t id = s.Open();
  ASSERT_NE(id, 0u);
  grpc::ClientContext ctx;
  v1::KillSessionRequest req;
  req.set_session_id(id);
  v1::KillSessionResponse resp;
  ASSERT_TRUE(Stub()->KillSession(&ctx, req, &resp).ok());
  grpc::Status st = End(s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(st.error_message(), absl::StrCat("session ", id, " ended by an operator"));
}

TEST_F(SessionStatusTest, AClosedSessionEndsOk) {
  RawSession s(dsrd_->address());
  ASSERT_NE(s.Open(), 0u);
  v1::ClientMessage close;
  close.mutable_close();
  ASSERT_TRUE(s.Write(close));
  grpc::Status st = End(s);
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
}

TEST_F(SessionStatusTest, AStoppingRegistryEndsEveryStreamWithUnavailable) {
  RawSession opened(dsrd_->address());
  ASSERT_NE(opened.Open(), 0u);
  // A stream that has sent nothing yet is ended the same way.
  RawSession idle(dsrd_->address());
  RawSession probe(dsrd_->address());
  ASSERT_NE(probe.Open(), 0u);  // idle's stream has reached dsrd by now
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_EQ(dsrd_->Stop(), 0);
  for (RawSession* s : {&opened, &idle}) {
    grpc::Status st = End(*s);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_EQ(st.error_message(), "the registry is shutting down");
  }
}

}  // namespace
}  // namespace formica::registry::testing
