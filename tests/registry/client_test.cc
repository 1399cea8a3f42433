// The client's own guarantees: failover, empty-push guard, callbacks off the
// network thread, and never applying an older version (against a registry
// that misbehaves on purpose).
#include <stdexcept>

#include "json.h"
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
  std::atomic<size_t> blocked_saw{0};  // instances in the blocking callback's last snapshot
  auto subscriber = NewClient("subscriber");
  ASSERT_TRUE(
      subscriber->Subscribe("svc", [](const ServiceSnapshot&) { throw std::runtime_error("boom"); })
          .ok());
  ASSERT_TRUE(subscriber
                  ->Subscribe("svc",
                              [&](const ServiceSnapshot& snapshot) {
                                blocked_saw = snapshot.instances.size();
                                ++blocked_calls;
                                release.WaitForNotificationWithTimeout(absl::Seconds(10));
                              })
                  .ok());
  auto provider = NewClient("provider");
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8800")).ok());
  // The blocking callback is running before the other publishes arrive:
  // deliveries merge to the newest, so a callback that starts late would see
  // only the last version, and there would be nothing newer to deliver after
  // the block.
  for (int i = 0; i < 500 && blocked_calls.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(blocked_calls.load(), 1);
  for (int i = 1; i < 5; ++i) {
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
  EXPECT_EQ(blocked_saw.load(), 5u);
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

// formicactl against the registry at `registry`, as an operator runs it:
// (exit code, what it printed on stdout and stderr).
std::pair<int, std::string> Formicactl(const std::string& registry, const TempDir& dir,
                                       const std::vector<std::string>& args) {
  std::vector<std::string> argv = {formica::testing::BinaryPath("tools/formicactl"), "--registry",
                                   registry};
  argv.insert(argv.end(), args.begin(), args.end());
  static int runs = 0;
  auto p = Subprocess::Start(argv, dir.File("ctl" + std::to_string(++runs) + ".log"));
  EXPECT_TRUE(p.ok());
  int code = (*p)->Wait(absl::Seconds(20));
  return {code, (*p)->Output()};
}

// fund.Trade at 127.0.0.1:9300, zone gz00a, weight 250, color=green.
void PublishFundTrade(Client* provider) {
  Instance i;
  i.service = "fund.Trade";
  i.address = "127.0.0.1:9300";
  i.zone = "gz00a";
  i.weight = 250;
  i.tags = {{"color", "green"}};
  ASSERT_TRUE(provider->Publish(i).ok());
}

TEST_F(RegistryTest, FormicactlShowsProvidersAndEditsConfig) {
  auto provider = NewClient("provider");
  PublishFundTrade(provider.get());
  auto run = [&](const std::vector<std::string>& args) {
    return Formicactl(dsrd_->address(), dir_, args);
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

TEST_F(RegistryTest, FormicactlPrintsEveryReadAsOneJsonDocument) {
  using formica::testing::ParseJson;
  auto provider = NewClient("provider");
  PublishFundTrade(provider.get());
  // As a script runs it: stdout and stderr together must be the document.
  auto run = [&](const std::vector<std::string>& args) {
    return Formicactl(dsrd_->address(), dir_, args);
  };

  auto [code, out] = run({"--output", "json", "registry", "get", "fund.Trade"});
  ASSERT_EQ(code, 0) << out;
  auto snapshot = ParseJson<v1::ServiceSnapshot>(out);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_EQ(snapshot->service(), "fund.Trade");
  ASSERT_EQ(snapshot->instances_size(), 1);
  EXPECT_EQ(snapshot->instances(0).address(), "127.0.0.1:9300");
  EXPECT_EQ(snapshot->instances(0).zone(), "gz00a");
  EXPECT_EQ(snapshot->instances(0).weight(), 250);
  EXPECT_EQ(snapshot->instances(0).tags().at("color"), "green");
  // Field names are the .proto's, and zero values are printed, not left out.
  EXPECT_THAT(out, ::testing::HasSubstr("\"instances\": ["));
  EXPECT_THAT(out, ::testing::HasSubstr("\"version\": \""));

  std::tie(code, out) = run({"-o", "json", "registry", "ls"});
  ASSERT_EQ(code, 0) << out;
  auto services = ParseJson<v1::ListServicesResponse>(out);
  ASSERT_TRUE(services.ok()) << services.status();
  ASSERT_EQ(services->services_size(), 1) << out;
  EXPECT_EQ(services->services(0).service(), "fund.Trade");
  EXPECT_EQ(services->services(0).instances(), 1u);
  EXPECT_EQ(services->services(0).version(), snapshot->version());

  std::tie(code, out) = run({"-o", "json", "registry", "sessions"});
  ASSERT_EQ(code, 0) << out;
  auto sessions = ParseJson<v1::ListSessionsResponse>(out);
  ASSERT_TRUE(sessions.ok()) << sessions.status();
  ASSERT_EQ(sessions->sessions_size(), 1) << out;
  EXPECT_EQ(sessions->sessions(0).client_name(), "provider");
  EXPECT_EQ(sessions->sessions(0).publications(), 1u);

  std::tie(code, out) = run({"-o", "json", "registry", "stop-push", "status"});
  ASSERT_EQ(code, 0) << out;
  auto push = ParseJson<v1::PushSwitchState>(out);
  ASSERT_TRUE(push.ok()) << push.status();
  EXPECT_FALSE(push->stop_push());

  std::tie(code, out) = run({"-o", "json", "cluster", "members"});
  ASSERT_EQ(code, 0) << out;
  auto cluster = ParseJson<v1::ClusterInfo>(out);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EXPECT_EQ(cluster->mode(), "embedded");
  ASSERT_EQ(cluster->nodes_size(), 1);
  EXPECT_TRUE(cluster->nodes(0).self());

  std::tie(code, out) = run({"config", "put", "demo/key", "hello", "-o", "json"});
  ASSERT_EQ(code, 0) << out;
  auto put = ParseJson<v1::PutConfigResponse>(out);
  ASSERT_TRUE(put.ok()) << put.status();
  std::tie(code, out) = run({"-o", "json", "config", "get", "demo/key"});
  ASSERT_EQ(code, 0) << out;
  auto entry = ParseJson<v1::ConfigEntry>(out);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ(entry->value(), "hello");
  EXPECT_EQ(entry->version(), put->entry().version());
  std::tie(code, out) = run({"-o", "json", "config", "ls", "demo/"});
  ASSERT_EQ(code, 0) << out;
  auto entries = ParseJson<v1::ListConfigResponse>(out);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->entries_size(), 1);
  EXPECT_EQ(entries->entries(0).key(), "demo/key");

  std::tie(code, out) = run({"-o", "json", "config", "delete", "demo/key"});
  ASSERT_EQ(code, 0) << out;
  auto deleted = ParseJson<v1::DeleteConfigResponse>(out);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->entry().key(), "demo/key");

  std::tie(code, out) = run({"-o", "json", "health"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(out, "{\n \"status\": \"SERVING\"\n}\n");

  // Errors stay what they were: text on stderr and exit 1; a bad format is a
  // usage error.
  std::tie(code, out) = run({"-o", "json", "config", "get", "no/such/key"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, ::testing::HasSubstr("formicactl: NOT_FOUND"));
  std::tie(code, out) = run({"-o", "yaml", "registry", "ls"});
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, ::testing::HasSubstr("--output wants text or json, not 'yaml'"));
}

}  // namespace
}  // namespace formica::registry::testing
