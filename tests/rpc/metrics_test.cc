// Call metrics (formica/rpc/metrics.h): what rpc::Server and rpc::Client
// count, read from real providers over their Stats service and from the
// calling process.
#include "formica/rpc/metrics.h"

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <future>
#include <map>

#include "absl/strings/str_cat.h"
#include "echo_fixture.h"

namespace formica::rpc {
namespace {

using testing::EchoTest;
using testing::kEcho;

TEST(CallSeries, QuantileFallsInTheBucketOfTheCalls) {
  CallSeries s;
  // 90 calls of at most 1.024 ms (bucket 6: 512..1024 us), 10 of 33..65 ms.
  s.latency_buckets[6] = 90;
  s.latency_buckets[12] = 10;
  s.calls_by_code[0] = 100;
  EXPECT_GT(LatencyQuantileMs(s, 0.5), 0.512);
  EXPECT_LE(LatencyQuantileMs(s, 0.5), 1.024);
  EXPECT_GT(LatencyQuantileMs(s, 0.99), 32.768);
  EXPECT_LE(LatencyQuantileMs(s, 0.99), 65.536);
  EXPECT_EQ(LatencyQuantileMs(CallSeries{}, 0.99), 0);
}

TEST(CallSeries, MinusGivesWhatHappenedBetweenTwoReads) {
  CallSeries before;
  before.calls_by_code[0] = 10;
  before.calls_by_code[13] = 1;
  CallSeries after = before;
  after.calls_by_code[0] = 25;
  after.calls_by_code[13] = 6;
  after.calls_by_code[5] = 2;  // NOT_FOUND: the caller's problem, not a failure
  CallSeries d = after.Minus(before);
  EXPECT_EQ(d.calls(), 22u);
  EXPECT_EQ(d.failures(), 5u);
}

class MetricsTest : public EchoTest {};

// The provider counts every call of each method with its status code and
// latency; the caller counts per provider and method.
TEST_F(MetricsTest, ProvidersAndCallersCountCallsCodesAndLatency) {
  auto good = StartEcho({"--tag", "color=blue"});
  auto bad = StartEcho({"--tag", "color=green", "--fail-percent", "20"});
  ASSERT_TRUE(AwaitProviders(2));
  auto client = NewRpcClient();
  std::map<std::string, int> calls_to;
  std::map<std::string, int> failures_at;
  for (int i = 0; i < 400; ++i) {
    test::EchoRequest request;
    request.set_sleep_ms(i % 50 == 0 ? 20 : 0);
    auto response = Echo(*client, {}, request);
    absl::Status st = response.status();
    // Only the bad provider fails (and a failed call is not retried).
    std::string provider = st.ok() ? response->served_by() : Address(*bad);
    ++calls_to[provider];
    if (!st.ok()) {
      EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
      ++failures_at[provider];
    }
  }
  EXPECT_EQ(failures_at[Address(*good)], 0);
  for (auto* p : {good.get(), bad.get()}) {
    std::string address = Address(*p);
    // The provider counts a call once its handler returned, which may be
    // just after the caller has the reply: read until the last one is in.
    absl::StatusOr<v1::StatsReply> stats;
    const v1::CallSeries* echo = nullptr;
    for (absl::Time end = absl::Now() + absl::Seconds(2);;) {
      stats = Stats(address);
      ASSERT_TRUE(stats.ok()) << stats.status();
      echo = nullptr;
      for (const auto& s : stats->series()) {
        if (s.side() == "server" && s.method() == "Echo") echo = &s;
      }
      if ((echo != nullptr && echo->calls() >= static_cast<uint64_t>(calls_to[address])) ||
          absl::Now() > end) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_EQ(stats->provider(), address);
    ASSERT_NE(echo, nullptr) << stats->DebugString();
    EXPECT_EQ(echo->service(), kEcho);
    EXPECT_EQ(echo->provider(), address);
    EXPECT_EQ(echo->calls(), static_cast<uint64_t>(calls_to[address])) << address;
    EXPECT_EQ(echo->failures(), static_cast<uint64_t>(failures_at[address])) << address;
    auto code = [&](int c) {
      auto it = echo->calls_by_code().find(c);
      return it == echo->calls_by_code().end() ? 0 : it->second;
    };
    EXPECT_EQ(code(13), static_cast<uint64_t>(failures_at[address]));
    EXPECT_EQ(code(0), static_cast<uint64_t>(calls_to[address] - failures_at[address]));
    uint64_t in_buckets = 0;
    for (uint64_t n : echo->latency_buckets()) in_buckets += n;
    EXPECT_EQ(in_buckets, echo->calls());
    EXPECT_EQ(echo->latency_buckets_size(), kLatencyBuckets);
    EXPECT_EQ(stats->latency_bounds_us_size(), kLatencyBuckets - 1);
    // The 20 ms calls are in the histogram's tail.
    CallSeries series;
    for (int i = 0; i < kLatencyBuckets; ++i) series.latency_buckets[i] = echo->latency_buckets(i);
    EXPECT_GE(LatencyQuantileMs(series, 0.999), 16.0);
  }
  // 20% of the bad provider's calls failed, exactly (its flag is deterministic).
  EXPECT_NEAR(failures_at[Address(*bad)], calls_to[Address(*bad)] / 5, 1);
  // The caller counted the same calls per provider and method (Echo; no
  // series without a method).
  std::map<std::string, CallSeries> seen;
  for (const CallSeries& s : CallMetricsSnapshot()) {
    if (s.side != CallSeries::Side::kClient || s.service != kEcho) continue;
    EXPECT_EQ(s.method, "Echo") << s.provider;
    seen[s.provider] = s;
  }
  for (auto* p : {good.get(), bad.get()}) {
    std::string address = Address(*p);
    EXPECT_EQ(seen[address].calls(), static_cast<uint64_t>(calls_to[address]));
    EXPECT_EQ(seen[address].failures(), static_cast<uint64_t>(failures_at[address]));
  }
}

// A call through grpc::GenericStub names its method by the caller's string,
// which is gone when the call ends (here a temporary): the caller counts it
// under the method "" and never reads the name (ASan saw a use after free
// when it did).
TEST_F(MetricsTest, AGenericStubsCallIsCountedWithoutReadingItsName) {
  auto echo = StartEcho({});
  ASSERT_TRUE(AwaitProviders(1));
  auto client = NewRpcClient();
  auto generic_calls = [&] {
    uint64_t n = 0;
    for (const CallSeries& s : CallMetricsSnapshot()) {
      if (s.side == CallSeries::Side::kClient && s.service == kEcho && s.method.empty()) {
        n += s.calls();
      }
    }
    return n;
  };
  const uint64_t before = generic_calls();
  test::EchoRequest request;
  request.set_message("generic");
  for (int i = 0; i < 3; ++i) {
    grpc::ByteBuffer response;
    absl::Status st = client->Call(
        kEcho, {}, [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
          grpc::GenericStub stub(channel);
          std::string bytes = request.SerializeAsString();
          grpc::Slice slice(bytes);
          grpc::ByteBuffer body(&slice, 1);
          std::promise<grpc::Status> done;
          stub.UnaryCall(ctx, absl::StrCat("/", kEcho, "/Echo"), grpc::StubOptions(), &body,
                         &response, [&done](grpc::Status s) { done.set_value(s); });
          return done.get_future().get();
        });
    ASSERT_TRUE(st.ok()) << st;
  }
  EXPECT_EQ(generic_calls() - before, 3u);
}

}  // namespace
}  // namespace formica::rpc
