// dsrd's engines without a daemon, a network or real time: the session
// table's leases, the push scheduler's merge window, and RegistryCore over
// the embedded backend driven through fake streams and a FakeClock. Each
// test runs in milliseconds.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "embedded_backend.h"
#include "formica/common/clock.h"
#include "formica/registry/v1/registry.pb.h"
#include "push_scheduler.h"
#include "registry_core.h"
#include "registry_store.h"
#include "session_table.h"

namespace formica::registry {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// ---------------------------------------------------------------------------
// SessionTable

TEST(SessionTable, ExpiresASessionNotSeenWithinItsLease) {
  FakeClock clock;
  SessionTable table(&clock);
  Session& session = table.Add(7);
  session.lease = absl::Seconds(1);
  table.Touch(session);
  clock.Advance(absl::Milliseconds(1000));
  EXPECT_THAT(table.Expired(), IsEmpty());  // exactly one lease: not yet
  clock.Advance(absl::Milliseconds(1));
  EXPECT_THAT(table.Expired(), ElementsAre(7));
}

TEST(SessionTable, TouchStartsTheLeaseOver) {
  FakeClock clock;
  SessionTable table(&clock);
  Session& session = table.Add(7);
  session.lease = absl::Seconds(1);
  table.Touch(session);
  clock.Advance(absl::Milliseconds(800));
  table.Touch(session);
  clock.Advance(absl::Milliseconds(800));
  EXPECT_THAT(table.Expired(), IsEmpty());
}

// ---------------------------------------------------------------------------
// PushScheduler

TEST(PushScheduler, FirstChangeAfterAQuietPeriodIsDueAtOnce) {
  FakeClock clock;
  PushScheduler pushes(&clock, absl::Milliseconds(20), absl::ZeroDuration());
  EXPECT_FALSE(pushes.Due());
  pushes.MarkServiceDirty("a");
  EXPECT_TRUE(pushes.Due());
}

TEST(PushScheduler, MergesChangesWithinTheWindowIntoOneBatch) {
  FakeClock clock;
  PushScheduler pushes(&clock, absl::Milliseconds(20), absl::ZeroDuration());
  pushes.MarkServiceDirty("a");
  ASSERT_TRUE(pushes.Due());
  pushes.TakeBatch();
  clock.Advance(absl::Milliseconds(5));
  pushes.MarkServiceDirty("b");
  clock.Advance(absl::Milliseconds(5));
  pushes.MarkServiceDirty("c");
  EXPECT_FALSE(pushes.Due());
  clock.Advance(absl::Milliseconds(9));
  EXPECT_FALSE(pushes.Due());
  clock.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(pushes.Due());
  PushScheduler::Batch batch = pushes.TakeBatch();
  EXPECT_THAT(batch.services, ElementsAre("b", "c"));
}

TEST(PushScheduler, HoldsEverythingWhileWarmingUp) {
  FakeClock clock;
  PushScheduler pushes(&clock, absl::Milliseconds(20), absl::Seconds(1));
  pushes.MarkServiceDirty("a");
  EXPECT_TRUE(pushes.Held());
  EXPECT_FALSE(pushes.Due());
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(pushes.EndWarmupIfDue());
  EXPECT_FALSE(pushes.EndWarmupIfDue());  // once
  EXPECT_TRUE(pushes.Due());
}

// ---------------------------------------------------------------------------
// RegistryCore over the embedded backend

// Config entries in memory.
class MemoryStore final : public RegistryStore {
 public:
  absl::StatusOr<uint64_t> NextBootEpoch() override { return ++epoch_; }
  absl::StatusOr<StoredConfig> GetConfig(absl::string_view key) override {
    auto it = entries_.find(std::string(key));
    if (it == entries_.end()) {
      return StoredConfig{std::string(key), "", 0, false};
    }
    return it->second;
  }
  absl::StatusOr<std::vector<StoredConfig>> ListConfig(absl::string_view) override {
    return std::vector<StoredConfig>{};
  }
  absl::StatusOr<StoredConfig> PutConfig(absl::string_view key, absl::string_view value,
                                         std::optional<uint64_t>) override {
    StoredConfig& entry = entries_[std::string(key)];
    entry = StoredConfig{std::string(key), std::string(value), ++revision_, true};
    return entry;
  }
  absl::StatusOr<StoredConfig> DeleteConfig(absl::string_view, std::optional<uint64_t>) override {
    return absl::NotFoundError("not here");
  }

 private:
  uint64_t epoch_ = 1000;
  uint64_t revision_ = 0;
  std::map<std::string, StoredConfig> entries_;
};

// A stream that keeps what the core sends it.
class FakeStream final : public SessionStream {
 public:
  explicit FakeStream(uint64_t serial)
      : SessionStream("fake:" + std::to_string(serial), "", serial) {}

  void StartSend() override { sent.push_back(*in_flight); }
  void End(const absl::Status& status) override {
    ended = true;
    end_status = status;
  }
  void ReadNext() override {}

  // The service pushes received, oldest first.
  std::vector<v1::ServiceSnapshot> ServicePushes() const {
    std::vector<v1::ServiceSnapshot> out;
    for (const v1::ServerMessage& m : sent) {
      if (m.has_service()) {
        out.push_back(m.service());
      }
    }
    return out;
  }

  std::vector<v1::ServerMessage> sent;
  bool ended = false;
  absl::Status end_status;
};

class RegistryEngineTest : public ::testing::Test {
 protected:
  RegistryEngineTest() {
    options_.registry_id = "engine-test";
    options_.min_lease = absl::Milliseconds(100);
    options_.merge_window = absl::Milliseconds(20);
    options_.push_retry = absl::Hours(1);  // no resends to confuse the counts
  }

  void SetUp() override {
    core_ = std::make_unique<RegistryCore>(options_, &clock_);
    auto backend = EmbeddedBackend::Open({}, std::make_unique<MemoryStore>(), core_->tables());
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    core_->AttachBackend(backend_.get());
  }

  // A new stream with an open session of `lease`.
  FakeStream& Open(const std::string& name, absl::Duration lease) {
    streams_.push_back(std::make_unique<FakeStream>(streams_.size() + 1));
    FakeStream& stream = *streams_.back();
    core_->StreamStarted(&stream);
    v1::ClientMessage open;
    open.mutable_open()->set_client_name(name);
    open.mutable_open()->set_lease_ms(absl::ToInt64Milliseconds(lease));
    Send(stream, open);
    EXPECT_NE(stream.session_id, 0u);
    return stream;
  }

  // Hands `message` to the core and lets every write complete.
  void Send(FakeStream& stream, const v1::ClientMessage& message) {
    core_->Handle(&stream, message);
    Drain();
  }
  void Drain() {
    for (auto& stream : streams_) {
      while (stream->in_flight != nullptr) {
        core_->WriteDone(stream.get(), true);
      }
    }
  }
  void Tick() {
    core_->Tick();
    Drain();
  }

  void Publish(FakeStream& stream, const std::string& address) {
    v1::ClientMessage m;
    m.mutable_publish()->set_request_id(++request_id_);
    v1::Instance* instance = m.mutable_publish()->mutable_instance();
    instance->set_service("orders");
    instance->set_address(address);
    Send(stream, m);
  }
  void Subscribe(FakeStream& stream) {
    v1::ClientMessage m;
    m.mutable_subscribe()->set_request_id(++request_id_);
    m.mutable_subscribe()->set_service("orders");
    Send(stream, m);
  }
  void Heartbeat(FakeStream& stream) {
    v1::ClientMessage m;
    m.mutable_heartbeat()->set_seq(++request_id_);
    Send(stream, m);
  }
  std::vector<std::string> Addresses(const v1::ServiceSnapshot& snapshot) {
    std::vector<std::string> out;
    for (const v1::Instance& i : snapshot.instances()) {
      out.push_back(i.address());
    }
    return out;
  }
  std::vector<std::string> Published() {
    v1::ServiceSnapshot snapshot;
    absl::Status st = core_->GetService("orders", &snapshot);
    return st.ok() ? Addresses(snapshot) : std::vector<std::string>{};
  }

  void Ack(FakeStream& stream, uint64_t version) {
    v1::ClientMessage m;
    m.mutable_ack()->set_service("orders");
    m.mutable_ack()->set_version(version);
    Send(stream, m);
  }

  RegistryCoreOptions options_;
  FakeClock clock_;
  std::unique_ptr<RegistryCore> core_;
  std::unique_ptr<EmbeddedBackend> backend_;
  std::vector<std::unique_ptr<FakeStream>> streams_;
  uint64_t request_id_ = 0;
};

TEST_F(RegistryEngineTest, ASessionSilentForItsLeaseExpiresAndItsPublicationsGo) {
  FakeStream& subscriber = Open("subscriber", absl::Minutes(1));
  FakeStream& provider = Open("provider", absl::Seconds(1));
  Subscribe(subscriber);
  Publish(provider, "10.0.0.1:80");
  Tick();
  ASSERT_THAT(Published(), ElementsAre("10.0.0.1:80"));
  ASSERT_THAT(Addresses(subscriber.ServicePushes().back()), ElementsAre("10.0.0.1:80"));

  clock_.Advance(absl::Milliseconds(1001));
  Tick();

  EXPECT_TRUE(provider.ended);
  EXPECT_TRUE(absl::IsUnavailable(provider.end_status)) << provider.end_status;
  EXPECT_THAT(std::string(provider.end_status.message()), ::testing::HasSubstr("lapsed"));
  EXPECT_THAT(Published(), IsEmpty());
  EXPECT_THAT(Addresses(subscriber.ServicePushes().back()), IsEmpty());
  EXPECT_FALSE(subscriber.ended);
}

TEST_F(RegistryEngineTest, AHeartbeatWithinTheLeaseKeepsTheSessionAndItsPublications) {
  FakeStream& subscriber = Open("subscriber", absl::Minutes(1));
  FakeStream& provider = Open("provider", absl::Seconds(1));
  Subscribe(subscriber);
  Publish(provider, "10.0.0.1:80");
  Tick();
  size_t pushes = subscriber.ServicePushes().size();

  for (int i = 0; i < 5; ++i) {
    clock_.Advance(absl::Milliseconds(600));
    Heartbeat(provider);
    Tick();
  }

  EXPECT_FALSE(provider.ended) << provider.end_status;
  EXPECT_THAT(Published(), ElementsAre("10.0.0.1:80"));
  EXPECT_EQ(subscriber.ServicePushes().size(), pushes);  // nothing changed for them
}

TEST_F(RegistryEngineTest, ChangesWithinTheMergeWindowGoOutAsOnePush) {
  FakeStream& subscriber = Open("subscriber", absl::Minutes(1));
  FakeStream& provider = Open("provider", absl::Minutes(1));
  Subscribe(subscriber);
  Publish(provider, "10.0.0.1:80");
  Tick();  // the first change after a quiet period goes at once
  size_t before = subscriber.ServicePushes().size();
  ASSERT_THAT(Addresses(subscriber.ServicePushes().back()), ElementsAre("10.0.0.1:80"));

  clock_.Advance(absl::Milliseconds(5));
  Publish(provider, "10.0.0.2:80");
  Tick();
  clock_.Advance(absl::Milliseconds(5));
  Publish(provider, "10.0.0.3:80");
  Tick();
  clock_.Advance(absl::Milliseconds(9));
  Tick();
  EXPECT_EQ(subscriber.ServicePushes().size(), before);  // still inside the window

  clock_.Advance(absl::Milliseconds(1));
  Tick();
  ASSERT_EQ(subscriber.ServicePushes().size(), before + 1);
  EXPECT_THAT(Addresses(subscriber.ServicePushes().back()),
              ElementsAre("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"));
}

TEST_F(RegistryEngineTest, AChangeAfterTheMergeWindowMakesANewPushAtOnce) {
  FakeStream& subscriber = Open("subscriber", absl::Minutes(1));
  FakeStream& provider = Open("provider", absl::Minutes(1));
  Subscribe(subscriber);
  Publish(provider, "10.0.0.1:80");
  Tick();
  ASSERT_THAT(Addresses(subscriber.ServicePushes().back()), ElementsAre("10.0.0.1:80"));
  size_t before = subscriber.ServicePushes().size();
  uint64_t version = subscriber.ServicePushes().back().version();

  clock_.Advance(absl::Milliseconds(50));
  Publish(provider, "10.0.0.2:80");
  Tick();  // no further wait

  ASSERT_EQ(subscriber.ServicePushes().size(), before + 1);
  EXPECT_GT(subscriber.ServicePushes().back().version(), version);
  EXPECT_THAT(Addresses(subscriber.ServicePushes().back()),
              ElementsAre("10.0.0.1:80", "10.0.0.2:80"));
}

TEST_F(RegistryEngineTest, AConfigChangeReachesItsWatchersAtOnce) {
  FakeStream& watcher = Open("watcher", absl::Minutes(1));
  v1::ClientMessage watch;
  watch.mutable_watch_config()->set_request_id(++request_id_);
  watch.mutable_watch_config()->set_key("feature/x");
  Send(watcher, watch);
  clock_.Advance(absl::Milliseconds(5));  // inside a merge window, were it a service

  absl::StatusOr<StoredConfig> written =
      backend_->config_store()->PutConfig("feature/x", "on", std::nullopt);
  ASSERT_TRUE(written.ok()) << written.status();
  core_->ConfigChanged(*written);
  Tick();

  std::vector<v1::ConfigEntry> pushes;
  for (const v1::ServerMessage& m : watcher.sent) {
    if (m.has_config()) {
      pushes.push_back(m.config());
    }
  }
  ASSERT_EQ(pushes.size(), 1u);
  EXPECT_EQ(pushes[0].value(), "on");
  EXPECT_EQ(pushes[0].version(), written->version);
}

class RegistryRetryTest : public RegistryEngineTest {
 protected:
  RegistryRetryTest() { options_.push_retry = absl::Seconds(1); }
};

TEST_F(RegistryRetryTest, AnUnacknowledgedPushIsSentAgainAfterTheRetryInterval) {
  FakeStream& subscriber = Open("subscriber", absl::Minutes(1));
  FakeStream& provider = Open("provider", absl::Minutes(1));
  Subscribe(subscriber);
  Publish(provider, "10.0.0.1:80");
  Tick();
  size_t before = subscriber.ServicePushes().size();
  uint64_t version = subscriber.ServicePushes().back().version();

  clock_.Advance(absl::Milliseconds(999));
  Tick();
  EXPECT_EQ(subscriber.ServicePushes().size(), before);
  clock_.Advance(absl::Milliseconds(1));
  Tick();
  ASSERT_EQ(subscriber.ServicePushes().size(), before + 1);
  EXPECT_EQ(subscriber.ServicePushes().back().version(), version);

  Ack(subscriber, version);
  clock_.Advance(absl::Seconds(5));
  Tick();
  EXPECT_EQ(subscriber.ServicePushes().size(), before + 1);  // acknowledged: no more
}

class RegistryWarmupTest : public RegistryEngineTest {
 protected:
  RegistryWarmupTest() { options_.warmup = absl::Seconds(1); }
};

TEST_F(RegistryWarmupTest, NothingIsPushedBeforeTheWarmupEndsThenOnlyTheWholeList) {
  FakeStream& subscriber = Open("subscriber", absl::Minutes(1));
  FakeStream& provider = Open("provider", absl::Minutes(1));
  Subscribe(subscriber);
  Publish(provider, "10.0.0.1:80");
  Tick();
  clock_.Advance(absl::Milliseconds(500));
  Publish(provider, "10.0.0.2:80");
  Tick();
  EXPECT_THAT(subscriber.ServicePushes(), IsEmpty());

  clock_.Advance(absl::Milliseconds(500));
  Tick();
  // No empty or partial list: every push (the release may repeat the same
  // version until it is acknowledged) carries both instances.
  ASSERT_THAT(subscriber.ServicePushes(), ::testing::Not(IsEmpty()));
  for (const v1::ServiceSnapshot& push : subscriber.ServicePushes()) {
    EXPECT_THAT(Addresses(push), ElementsAre("10.0.0.1:80", "10.0.0.2:80"));
  }
}

}  // namespace
}  // namespace formica::registry
