// The registry end to end: a real dsrd process, real clients over loopback.
#include <signal.h>

#include <atomic>
#include <cmath>
#include <thread>

#include "registry_fixture.h"

namespace formica::registry::testing {
namespace {

using ::testing::ElementsAre;

TEST_F(RegistryTest, PublishSubscribeUnpublish) {
  auto provider = NewClient("provider");
  auto subscriber = NewClient("subscriber");
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("fund.Trade", seen.Callback()).ok());

  Instance a = MakeInstance("fund.Trade", "127.0.0.1:9001");
  a.zone = "gz00a";
  a.weight = 250;
  a.tags = {{"version", "1.2.0"}, {"color", "blue"}};
  a.metadata = {{"owner", "team-fund"}};
  ASSERT_TRUE(provider->Publish(a).ok());
  ASSERT_TRUE(provider->Publish(MakeInstance("fund.Trade", "127.0.0.1:9002")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 2; },
                           absl::Seconds(5)));
  ServiceSnapshot two = seen.Seen().back();
  EXPECT_EQ(two.service, "fund.Trade");
  EXPECT_EQ(two.instances[0], a);  // every field intact

  ASSERT_TRUE(provider->Unpublish("fund.Trade", "127.0.0.1:9001").ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  ServiceSnapshot one = seen.Seen().back();
  EXPECT_THAT(Addresses(one), ElementsAre("127.0.0.1:9002"));
  EXPECT_GT(one.version, two.version);
  EXPECT_EQ(provider->Unpublish("fund.Trade", "127.0.0.1:9001").code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, CrashedProviderLeavesWhenItsLeaseLapses) {
  ClientOptions options = Options("subscriber");
  options.accept_empty_push = true;
  auto subscriber = NewClient(options);
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("acct.Balance", seen.Callback()).ok());
  auto agent = StartAgent({"acct.Balance=127.0.0.1:7001"}, /*lease_ms=*/2000);
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  absl::Time killed = absl::Now();
  agent->Kill();  // kill -9: no clean close
  // Within the lease the instance stays: a provider that blips keeps its place.
  absl::SleepFor(absl::Milliseconds(800));
  EXPECT_EQ(seen.Seen().back().instances.size(), 1u);
  // After the lease (2s) plus a sweep, the removal is pushed.
  ASSERT_TRUE(
      seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.empty(); }, absl::Seconds(5)));
  absl::Duration took = absl::Now() - killed;
  EXPECT_GE(took, absl::Milliseconds(1900));
  EXPECT_LE(took, absl::Milliseconds(3500));
}

TEST_F(RegistryTest, CleanCloseRemovesPublicationsAtOnce) {
  ClientOptions options = Options("subscriber");
  options.accept_empty_push = true;
  auto subscriber = NewClient(options);
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("acct.Balance", seen.Callback()).ok());
  auto provider = NewClient("provider");
  ASSERT_TRUE(provider->Publish(MakeInstance("acct.Balance", "127.0.0.1:7002")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  absl::Time closed = absl::Now();
  provider.reset();
  ASSERT_TRUE(
      seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.empty(); }, absl::Seconds(5)));
  EXPECT_LT(absl::Now() - closed, absl::Milliseconds(500));  // far below the 2s lease
}

TEST_F(RegistryTest, VersionsOnlyGrowAcrossChangesAndRestarts) {
  auto provider = NewClient("provider");
  auto subscriber = NewClient("subscriber");
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("svc", seen.Callback()).ok());
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(
        provider->Publish(MakeInstance("svc", "127.0.0.1:" + std::to_string(8000 + i))).ok());
  }
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 20; },
                           absl::Seconds(5)));
  uint64_t before = seen.Seen().back().version;
  ASSERT_TRUE(dsrd_->Restart().ok());
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:9999")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 21; },
                           absl::Seconds(10)));
  EXPECT_GT(seen.Seen().back().version, before);
  std::vector<ServiceSnapshot> all = seen.Seen();
  for (size_t i = 1; i < all.size(); ++i) {
    EXPECT_GT(all[i].version, all[i - 1].version) << "at push " << i;
  }
}

class MergeWindowTest : public RegistryTest {
  std::map<std::string, std::string> DsrdConfig() override {
    auto c = RegistryTest::DsrdConfig();
    c["push.merge_window"] = "600ms";
    return c;
  }
};

TEST_F(MergeWindowTest, ChangesWithinTheWindowAreMergedIntoOnePush) {
  auto provider = NewClient("provider");
  auto subscriber = NewClient("subscriber");
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("svc", seen.Callback()).ok());
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8000")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(800));  // quiet: the window has passed
  size_t before = seen.Count();
  absl::Time start = absl::Now();
  for (int i = 1; i <= 10; ++i) {
    ASSERT_TRUE(
        provider->Publish(MakeInstance("svc", "127.0.0.1:" + std::to_string(8000 + i))).ok());
  }
  absl::Duration publishing = absl::Now() - start;
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 11; },
                           absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(800));
  // The first change goes out at once; the others ride in one merged push
  // per window they span: one when publishing took less than the window (a
  // slow machine spans more windows, not more pushes per window).
  size_t windows =
      static_cast<size_t>(std::ceil(absl::FDivDuration(publishing, absl::Milliseconds(600))));
  size_t pushes = seen.Count() - before;
  EXPECT_GE(pushes, 1u);
  EXPECT_LE(pushes, 1 + windows) << "10 changes published in " << publishing;
  EXPECT_EQ(seen.Seen().back().instances.size(), 11u);
}

class SlowSubscriberTest : public RegistryTest {
  std::map<std::string, std::string> DsrdConfig() override {
    auto c = RegistryTest::DsrdConfig();
    c["push.merge_window"] = "0s";
    c["limits.max_metadata_bytes"] = "1MiB";
    return c;
  }
};

TEST_F(SlowSubscriberTest, SlowSubscriberKeepsOnlyTheNewestAndDelaysNobody) {
  RawSession slow(dsrd_->address());
  ASSERT_NE(slow.Open(), 0u);
  v1::ClientMessage sub;
  sub.mutable_subscribe()->set_service("big");
  ASSERT_TRUE(slow.Write(sub));

  auto fast = NewClient("fast");
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(fast->Subscribe("big", seen.Callback()).ok());
  auto provider = NewClient("provider");
  constexpr int kChanges = 40;
  Instance inst = MakeInstance("big", "127.0.0.1:8100");
  for (int i = 1; i <= kChanges; ++i) {
    inst.metadata["blob"] = std::string(200 * 1024, static_cast<char>('a' + i % 26));
    inst.weight = i;
    ASSERT_TRUE(provider->Publish(inst).ok());
    absl::SleepFor(absl::Milliseconds(10));
  }
  // The fast subscriber is not held back by the one that reads nothing.
  ASSERT_TRUE(seen.WaitFor(
      [](const ServiceSnapshot& s) {
        return !s.instances.empty() && s.instances[0].weight == kChanges;
      },
      absl::Seconds(5)));
  uint64_t final_version = seen.Seen().back().version;

  // Now the slow one reads: what it gets is a prefix already in flight plus
  // the newest snapshot, never all 40.
  int messages = 0;
  uint64_t last = 0;
  v1::ServerMessage m;
  while (slow.Read(&m)) {
    if (!m.has_service()) continue;
    ++messages;
    EXPECT_GT(m.service().version(), last);
    last = m.service().version();
    if (last == final_version) break;
  }
  EXPECT_EQ(last, final_version);
  EXPECT_LT(messages, kChanges);
}

class RestartTest : public RegistryTest {
  std::map<std::string, std::string> DsrdConfig() override {
    return {{"session.lease", "2s"}, {"push.retry_interval", "300ms"}};  // warm-up: one lease
  }
};

TEST_F(RestartTest, RestartPushesNoEmptyOrPartialList) {
  auto subscriber = NewClient("subscriber");
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("fund.Trade", seen.Callback()).ok());
  std::vector<std::unique_ptr<Client>> providers;
  for (int i = 0; i < 3; ++i) {
    providers.push_back(NewClient("provider" + std::to_string(i)));
    ASSERT_TRUE(providers.back()
                    ->Publish(MakeInstance("fund.Trade", "127.0.0.1:" + std::to_string(9100 + i)))
                    .ok());
  }
  // The first start has a warm-up too: wait for it to end.
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 3; },
                           absl::Seconds(10)));
  uint64_t before = seen.Seen().back().version;
  size_t full_at = seen.Count() - 1;

  ASSERT_TRUE(dsrd_->Restart().ok());
  ASSERT_TRUE(seen.WaitFor([&](const ServiceSnapshot& s) { return s.version > before; },
                           absl::Seconds(15)));
  std::vector<ServiceSnapshot> all = seen.Seen();
  for (size_t i = full_at; i < all.size(); ++i) {
    EXPECT_EQ(all[i].instances.size(), 3u) << "push " << i << " at version " << all[i].version;
  }
  EXPECT_EQ(Addresses(all.back()).size(), 3u);
}

TEST_F(RegistryTest, CacheServesAColdStartWhileTheRegistryIsDown) {
  auto provider = NewClient("provider");
  ASSERT_TRUE(provider->Publish(MakeInstance("acct.Balance", "127.0.0.1:7100")).ok());
  ClientOptions options = Options("cached");
  options.cache_dir = dir_.File("cache");
  {
    auto subscriber = NewClient(options);
    ASSERT_TRUE(subscriber->Subscribe("acct.Balance", nullptr).ok());
    ASSERT_TRUE(subscriber->AwaitSnapshot("acct.Balance", absl::Seconds(5)).ok());
  }
  dsrd_->Kill9();
  auto cold = NewClient(options);
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(cold->Subscribe("acct.Balance", seen.Callback()).ok());
  auto snapshot = cold->AwaitSnapshot("acct.Balance", absl::Seconds(2));
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_TRUE(snapshot->from_cache);
  EXPECT_THAT(Addresses(*snapshot), ElementsAre("127.0.0.1:7100"));
  ASSERT_TRUE(seen.WaitForCount(1, absl::Seconds(2)));  // the callback got it too
  EXPECT_FALSE(cold->connected());
}

TEST_F(RegistryTest, ConfigEntriesSurviveRestartAndAreWatched) {
  absl::Mutex mu;  // declared before the client: its callbacks use them
  std::vector<ConfigValue> pushes;
  auto client = NewClient("config");
  auto put = client->PutConfig("ldc/rules", "zone-a: 00-49");
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_TRUE(client
                  ->WatchConfig("ldc/rules",
                                [&](const ConfigValue& v) {
                                  absl::MutexLock lock(&mu);
                                  pushes.push_back(v);
                                })
                  .ok());
  auto count = [&]() {
    absl::MutexLock lock(&mu);
    return pushes.size();
  };
  for (int i = 0; i < 100 && count() < 1; ++i) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_EQ(count(), 1u);

  ASSERT_TRUE(dsrd_->Restart().ok());
  auto got = client->GetConfig("ldc/rules");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->value, "zone-a: 00-49");
  EXPECT_EQ(got->version, put->version);

  // Once the watch is restored on the new registry process, changes are pushed.
  for (int i = 0; i < 250 && !client->connected(); ++i) absl::SleepFor(absl::Milliseconds(20));
  absl::SleepFor(absl::Milliseconds(200));
  auto put2 = client->PutConfig("ldc/rules", "zone-a: 00-59");
  ASSERT_TRUE(put2.ok());
  EXPECT_GT(put2->version, put->version);
  for (int i = 0; i < 250 && count() < 2; ++i) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_EQ(count(), 2u);
  ASSERT_TRUE(client->DeleteConfig("ldc/rules").ok());
  for (int i = 0; i < 250 && count() < 3; ++i) absl::SleepFor(absl::Milliseconds(20));
  absl::MutexLock lock(&mu);
  ASSERT_EQ(pushes.size(), 3u);
  EXPECT_EQ(pushes[1].value, "zone-a: 00-59");
  EXPECT_FALSE(pushes[2].exists);
  EXPECT_GT(pushes[2].version, pushes[1].version);
  EXPECT_EQ(client->GetConfig("ldc/rules").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, CompareAndSetHasExactlyOneWinner) {
  auto a = NewClient("a");
  auto b = NewClient("b");
  for (int round = 0; round < 20; ++round) {
    auto current = a->PutConfig("weights/fund", "round" + std::to_string(round));
    ASSERT_TRUE(current.ok());
    std::atomic<int> wins{0};
    std::atomic<int> conflicts{0};
    auto attempt = [&](Client* c, const std::string& value) {
      auto r = c->PutConfig("weights/fund", value, current->version);
      if (r.ok()) {
        ++wins;
      } else if (r.status().code() == absl::StatusCode::kFailedPrecondition) {
        ++conflicts;
        EXPECT_NE(r.status().message().find("not the expected"), absl::string_view::npos);
      }
    };
    std::thread ta(attempt, a.get(), "from-a");
    std::thread tb(attempt, b.get(), "from-b");
    ta.join();
    tb.join();
    EXPECT_EQ(wins.load(), 1) << "round " << round;
    EXPECT_EQ(conflicts.load(), 1) << "round " << round;
  }
  // Create-only: expected version 0 on an existing key conflicts.
  EXPECT_EQ(a->PutConfig("weights/fund", "x", 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(a->PutConfig("weights/new", "x", 0).ok());
}

class StopPushTest : public RegistryTest {};

TEST_F(StopPushTest, StopPushHoldsAndReleasesOnlyTheNewest) {
  auto provider = NewClient("provider");
  auto subscriber = NewClient("subscriber");
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("svc", seen.Callback()).ok());
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8200")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  auto stub = Stub();
  auto set = [&](bool on) {
    grpc::ClientContext ctx;
    v1::SetPushSwitchRequest req;
    req.set_stop_push(on);
    v1::PushSwitchState state;
    ASSERT_TRUE(stub->SetPushSwitch(&ctx, req, &state).ok());
    EXPECT_EQ(state.stop_push(), on);
  };
  set(true);
  size_t before = seen.Count();
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(
        provider->Publish(MakeInstance("svc", "127.0.0.1:" + std::to_string(8200 + i))).ok());
    absl::SleepFor(absl::Milliseconds(100));
  }
  absl::SleepFor(absl::Milliseconds(700));  // beyond the retry interval too
  EXPECT_EQ(seen.Count(), before) << "a push went out while stop-push was on";
  set(false);
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 4; },
                           absl::Seconds(5)));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(seen.Count(), before + 1) << "release must push the newest snapshot only";
}

TEST_F(RegistryTest, UnacknowledgedPushIsRetriedUntilAcked) {
  auto provider = NewClient("provider");
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8300")).ok());
  RawSession raw(dsrd_->address());
  ASSERT_NE(raw.Open(), 0u);
  v1::ClientMessage sub;
  sub.mutable_subscribe()->set_service("svc");
  ASSERT_TRUE(raw.Write(sub));
  v1::ServerMessage first;
  ASSERT_TRUE(raw.ReadUntil([](const v1::ServerMessage& m) { return m.has_service(); }, &first));
  absl::Time got_first = absl::Now();
  v1::ServerMessage again;
  ASSERT_TRUE(raw.ReadUntil([](const v1::ServerMessage& m) { return m.has_service(); }, &again));
  EXPECT_EQ(again.service().version(), first.service().version());
  EXPECT_GE(absl::Now() - got_first, absl::Milliseconds(250));  // after push.retry_interval

  // Acknowledge; then a heartbeat round-trip shows no more repeats arrive.
  v1::ClientMessage ack;
  ack.mutable_ack()->set_service("svc");
  ack.mutable_ack()->set_version(first.service().version());
  ASSERT_TRUE(raw.Write(ack));
  absl::SleepFor(absl::Milliseconds(1000));
  v1::ClientMessage beat;
  beat.mutable_heartbeat()->set_seq(77);
  ASSERT_TRUE(raw.Write(beat));
  v1::ServerMessage m;
  int repeats_after_ack = 0;
  while (raw.Read(&m)) {
    if (m.has_heartbeat_ack() && m.heartbeat_ack().seq() == 77) break;
    if (m.has_service()) ++repeats_after_ack;
  }
  // At most one repeat could have been in flight when the ack arrived.
  EXPECT_LE(repeats_after_ack, 1);
}

TEST_F(RegistryTest, ReconciliationRepairsAMissedVersion) {
  auto provider = NewClient("provider");
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8400")).ok());
  RawSession raw(dsrd_->address());
  ASSERT_NE(raw.Open(), 0u);
  v1::ClientMessage sub;
  sub.mutable_subscribe()->set_service("svc");
  ASSERT_TRUE(raw.Write(sub));
  v1::ServerMessage m;
  ASSERT_TRUE(raw.ReadUntil([](const v1::ServerMessage& x) { return x.has_service(); }, &m));
  uint64_t current = m.service().version();
  v1::ClientMessage ack;
  ack.mutable_ack()->set_service("svc");
  ack.mutable_ack()->set_version(current);
  ASSERT_TRUE(raw.Write(ack));
  // The client says it holds an older version (it lost one): the registry
  // sends the current snapshot again.
  v1::ClientMessage reconcile;
  (*reconcile.mutable_reconcile()->mutable_services())["svc"] = current - 1;
  ASSERT_TRUE(raw.Write(reconcile));
  ASSERT_TRUE(raw.ReadUntil([](const v1::ServerMessage& x) { return x.has_service(); }, &m));
  EXPECT_EQ(m.service().version(), current);
  EXPECT_EQ(m.service().instances_size(), 1);
}

TEST_F(RegistryTest, SessionResumesAfterANetworkBlipWithoutFlapping) {
  auto provider = NewClient("provider");
  auto subscriber = NewClient("subscriber");
  Recorder& seen = NewRecorder();
  ASSERT_TRUE(subscriber->Subscribe("svc", seen.Callback()).ok());
  ASSERT_TRUE(provider->Publish(MakeInstance("svc", "127.0.0.1:8500")).ok());
  ASSERT_TRUE(seen.WaitFor([](const ServiceSnapshot& s) { return s.instances.size() == 1; },
                           absl::Seconds(5)));
  uint64_t session = provider->session_id();
  size_t before = seen.Count();
  provider->DropConnectionForTesting();
  for (int i = 0; i < 200 && !(provider->connected() && provider->session_id() == session); ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(provider->connected());
  EXPECT_EQ(provider->session_id(), session) << "the session should have been resumed";
  absl::SleepFor(absl::Milliseconds(500));
  std::string history;
  for (const auto& snap : seen.Seen()) {
    history += " v" + std::to_string(snap.version) + ":" + std::to_string(snap.instances.size());
  }
  EXPECT_EQ(seen.Count(), before) << "a resumed session must not make its providers flap;"
                                  << history;
}

}  // namespace
}  // namespace formica::registry::testing
