// The client's own guarantees: failover, empty-push guard, callbacks off the
// network thread, and never applying an older version (against a registry
// that misbehaves on purpose).
#include <stdexcept>

#include "registry_fixture.h"

namespace formica::registry::testing {
namespace {

TEST_F(RegistryTest, FailsOverToTheNextListedRegistry) {
  ClientOptions options = Options("failover");
  int dead = formica::testing::PickFreePort();
  options.registries = {"127.0.0.1:" + std::to_string(dead), dsrd_->address()};
  options.request_timeout = absl::Seconds(1);
  auto client = NewClient(options);
  for (int i = 0; i < 200 && !client->connected(); ++i) absl::SleepFor(absl::Milliseconds(25));
  ASSERT_TRUE(client->connected());
  EXPECT_EQ(client->connected_registry(), dsrd_->address());
  EXPECT_TRUE(client->Publish(MakeInstance("svc", "127.0.0.1:8600")).ok());
}

TEST_F(RegistryTest, UnpublishWhileDisconnectedReachesTheResumedSession) {
  ClientOptions sub_options = Options("subscriber");
  sub_options.accept_empty_push = true;
  auto subscriber = NewClient(sub_options);
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("svc", seen.Callback()).ok());
  ClientOptions options = Options("provider");
  options.backoff_initial = absl::Milliseconds(600);  // stay down long enough to act
  options.backoff_max = absl::Milliseconds(600);
  auto provider = NewClient(options);
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8650")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  uint64_t session = provider->session_id();
  provider->DropConnectionForTesting();
  for (int i = 0; i < 100 && provider->connected(); ++i) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_FALSE(provider->connected());
  ASSERT_TRUE(provider->Unpublish("svc", "127.0.0.1:8650").ok());
  // The session is resumed (the registry still holds the instance) and the
  // withdrawal is sent then: the instance goes long before any lease.
  ASSERT_TRUE(
      seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.empty(); }, absl::Seconds(3)));
  EXPECT_EQ(provider->session_id(), session);
}

TEST_F(RegistryTest, AnEmptyPushIsIgnoredByDefault) {
  auto subscriber = NewClient("subscriber");  // accept_empty_push = false
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("svc", seen.Callback()).ok());
  auto provider = NewClient("provider");
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8700")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  provider.reset();  // the registry pushes an empty list
  absl::SleepFor(absl::Milliseconds(700));
  auto snapshot = subscriber->GetSnapshot("svc");
  ASSERT_TRUE(snapshot.has_value());
  EXPECT_EQ(snapshot->instances.size(), 1u) << "the last known providers must be kept";
  EXPECT_EQ(seen.Seen().back().instances.size(), 1u);
}

TEST_F(RegistryTest, CallbacksThatThrowOrBlockDoNotBreakTheClient) {
  absl::Notification release;  // declared before the client: its callbacks use them
  std::atomic<int> blocked_calls{0};
  auto subscriber = NewClient("subscriber");
  ASSERT_TRUE(
      subscriber->Subscribe("svc", [](const ServiceSnapshot&) { throw std::runtime_error("boom"); })
          .ok());
  ASSERT_TRUE(subscriber
                  ->Subscribe("svc",
                              [&](const ServiceSnapshot&) {
                                ++blocked_calls;
                                release.WaitForNotificationWithTimeout(absl::Seconds(10));
                              })
                  .ok());
  auto provider = NewClient("provider");
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        provider->Publish(MakeInstance("svc", "127.0.0.1:" + std::to_string(8800 + i))).ok());
  }
  // The network side keeps applying (and acknowledging) while a callback blocks.
  bool newest = false;
  for (int i = 0; i < 200 && !newest; ++i) {
    auto s = subscriber->GetSnapshot("svc");
    newest = s && s->instances.size() == 5;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(newest);
  EXPECT_EQ(blocked_calls.load(), 1);
  release.Notify();
  // After the block: the blocked callback gets the newest, not every version.
  for (int i = 0; i < 100 && blocked_calls.load() < 2; ++i) absl::SleepFor(absl::Milliseconds(20));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(blocked_calls.load(), 2);
}

// A registry that pushes versions out of order, as a buggy or lagging
// node might: fault injection over a real gRPC stream.
class OutOfOrderRegistry final : public v1::Registry::Service {
 public:
  grpc::Status Session(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>* stream) override {
    v1::ClientMessage in;
    while (stream->Read(&in)) {
      if (in.has_open()) {
        v1::ServerMessage opened;
        opened.mutable_opened()->set_session_id(1);
        stream->Write(opened);
      } else if (in.has_subscribe()) {
        for (uint64_t version : {5, 3, 7, 6}) {
          v1::ServerMessage push;
          push.mutable_service()->set_service(in.subscribe().service());
          push.mutable_service()->set_version(version);
          v1::Instance* i = push.mutable_service()->add_instances();
          i->set_service(in.subscribe().service());
          i->set_address("127.0.0.1:" + std::to_string(1000 + version));
          stream->Write(push);
        }
      }
    }
    return grpc::Status::OK;
  }
};

TEST(ClientVersionGate, NeverAppliesAnOlderVersion) {
  OutOfOrderRegistry service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  Recorder seen;  // declared before the client: its callbacks use it
  ClientOptions options;
  options.registries = {"127.0.0.1:" + std::to_string(port)};
  auto client = Client::Create(options);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Subscribe("svc", seen.Callback()).ok());
  ASSERT_TRUE(
      seen.WaitFor([](const ServiceSnapshot& s) { return s.version == 7; }, absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(200));
  std::vector<uint64_t> versions;
  for (const auto& s : seen.Seen()) versions.push_back(s.version);
  // 5 applied, 3 refused, 7 applied, 6 refused (callbacks may merge 5 into 7).
  EXPECT_TRUE(versions == std::vector<uint64_t>({5, 7}) || versions == std::vector<uint64_t>({7}))
      << ::testing::PrintToString(versions);
  EXPECT_EQ((*client)->GetSnapshot("svc")->version, 7u);
  client->reset();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

TEST_F(RegistryTest, FormicactlShowsProvidersAndEditsConfig) {
  auto provider = NewClient("provider");
  Instance i = MakeInstance("fund.Trade", "127.0.0.1:9300");
  i.zone = "gz00a";
  i.weight = 250;
  i.tags = {{"color", "green"}};
  ASSERT_TRUE(provider->Publish(i).ok());
  auto run = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {formica::testing::BinaryPath("tools/formicactl"), "--registry",
                                     dsrd_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    static int n = 0;
    auto p = Subprocess::Start(argv, dir_.File("ctl" + std::to_string(++n) + ".log"));
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait(absl::Seconds(20));
    return std::make_pair(code, (*p)->Output());
  };
  auto [code, out] = run({"registry", "get", "fund.Trade"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("127.0.0.1:9300"), std::string::npos) << out;
  EXPECT_NE(out.find("gz00a"), std::string::npos) << out;
  EXPECT_NE(out.find("250"), std::string::npos) << out;
  EXPECT_NE(out.find("color=green"), std::string::npos) << out;
  std::tie(code, out) = run({"registry", "ls"});
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.find("fund.Trade"), std::string::npos) << out;
  std::tie(code, out) = run({"config", "put", "demo/key", "hello"});
  EXPECT_EQ(code, 0) << out;
  std::tie(code, out) = run({"config", "get", "demo/key"});
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.find("hello"), std::string::npos) << out;
  std::tie(code, out) = run({"config", "put", "demo/key", "x", "--expect-version", "0"});
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("FAILED_PRECONDITION"), std::string::npos) << out;
  std::tie(code, out) = run({"config", "delete", "demo/key"});
  EXPECT_EQ(code, 0) << out;
  std::tie(code, out) = run({"config", "get", "demo/key"});
  EXPECT_EQ(code, 1);
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  std::tie(code, out) = run({"health"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(out, "SERVING\n");
  std::tie(code, out) = run({"health", "formica.registry.v1.Registry"});
  EXPECT_EQ(code, 0) << out;
  std::tie(code, out) = run({"registry", "bogus"});
  EXPECT_EQ(code, 2);
}

}  // namespace
}  // namespace formica::registry::testing
