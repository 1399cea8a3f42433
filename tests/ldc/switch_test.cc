// LDC switches against a real dsrd, with each zone's DDS data source
// (SQLite) behind ldc::ZoneWriteGate: every write is checked, none sampled.
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "formica/dds/data_source.h"
#include "formica/ldc/zone_gate.h"
#include "ldc_fixture.h"

namespace formica::ldc::testing {
namespace {

using ::testing::HasSubstr;

// One admitted write as the data source saw it: the gate's admission and
// release, on one clock shared by both zones (a global sequence).
struct Admission {
  int shard;
  uint64_t admitted;
  uint64_t released;
};

// ZoneWriteGate, recording every admission interval of its zone.
class RecordingGate : public dds::WriteGate {
 public:
  // Cross-zone reads allowed: the test audits every zone's database.
  RecordingGate(Router* router, std::atomic<uint64_t>* clock)
      : gate_(router, ZoneWriteGate::Options{absl::Seconds(5), true}), clock_(clock) {}

  absl::StatusOr<std::unique_ptr<Pass>> Admit(int shard, bool may_wait) override {
    auto pass = gate_.Admit(shard, may_wait);
    if (!pass.ok()) return pass.status();
    return std::unique_ptr<Pass>(new Recorded(this, shard, *std::move(pass)));
  }

  absl::StatusOr<std::string> AdmitRead(int shard) override { return gate_.AdmitRead(shard); }

  std::vector<Admission> admissions() {
    std::lock_guard<std::mutex> lock(mu_);
    return admissions_;
  }

 private:
  class Recorded : public Pass {
   public:
    Recorded(RecordingGate* gate, int shard, std::unique_ptr<Pass> inner)
        : gate_(gate),
          shard_(shard),
          admitted_(gate->clock_->fetch_add(1)),
          inner_(std::move(inner)) {}
    ~Recorded() override {
      uint64_t released = gate_->clock_->fetch_add(1);
      inner_.reset();
      std::lock_guard<std::mutex> lock(gate_->mu_);
      gate_->admissions_.push_back({shard_, admitted_, released});
    }

   private:
    RecordingGate* gate_;
    int shard_;
    uint64_t admitted_;
    std::unique_ptr<Pass> inner_;
  };

  ZoneWriteGate gate_;
  std::atomic<uint64_t>* clock_;
  std::mutex mu_;
  std::vector<Admission> admissions_;
};

struct Zone {
  ZoneClient client;
  std::shared_ptr<RecordingGate> gate;
  std::unique_ptr<dds::ShardedDataSource> ds;
};

class LdcSwitchTest : public LdcTest {
 protected:
  Zone OpenZone(const std::string& zone) {
    Zone z;
    z.client = StartZone(zone);
    z.gate = std::make_shared<RecordingGate>(z.client.router.get(), &clock_);
    dds::DataSourceConfig config;
    for (const char* half : {"low", "high"}) {
      dds::DatabaseConfig db;
      db.name = zone + "-" + half;
      db.target = dir_.File(db.name + ".db");
      db.shards.resize(50);
      for (int s = 0; s < 50; ++s) db.shards[s] = s + (half[0] == 'l' ? 0 : 50);
      config.databases.push_back(db);
    }
    config.sharded_tables = {{"payments", "user_id"}};
    config.write_gate = z.gate;
    auto ds = dds::ShardedDataSource::Open(config);
    EXPECT_TRUE(ds.ok()) << ds.status();
    z.ds = std::move(*ds);
    EXPECT_TRUE(
        z.ds->Execute("CREATE TABLE payments (id INTEGER, user_id TEXT, amount INTEGER)").ok());
    return z;
  }

  std::atomic<uint64_t> clock_{1};
};

std::string UserOf(int i) { return absl::StrCat(2088000 + i); }  // shard = i % 100

int64_t CountRows(dds::ShardedDataSource* ds, const std::string& user) {
  auto r = ds->Execute("SELECT count(*) FROM payments WHERE user_id = $1", {user});
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::get<int64_t>(r->rows[0][0]) : -1;
}

TEST_F(LdcSwitchTest, DataSourceWritesOnlyItsZonesShardsAndNamesTheOwner) {
  PublishRules();
  Zone a = OpenZone("zone-a");
  ASSERT_TRUE(a.ds->Execute("INSERT INTO payments (id, user_id, amount) VALUES ($1, $2, $3)",
                            {int64_t{1}, std::string("2088042"), int64_t{5}})
                  .ok());
  auto refused = a.ds->Execute("INSERT INTO payments (id, user_id, amount) VALUES ($1, $2, $3)",
                               {int64_t{2}, std::string("2088077"), int64_t{5}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("shard 77 is owned by zone zone-b"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("nothing written"));
  // In a transaction too, and nothing of it stays.
  auto tx = a.ds->Begin(std::string("2088077"));
  ASSERT_TRUE(tx.ok());
  EXPECT_EQ(
      (*tx)
          ->Execute("UPDATE payments SET amount = 1 WHERE user_id = $1", {std::string("2088077")})
          .status()
          .code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CountRows(a.ds.get(), "2088077"), 0);
  EXPECT_EQ(CountRows(a.ds.get(), "2088042"), 1);
  // The audit's data source reads zone-b's shard from zone-a's copy and says so.
  auto cross = a.ds->Execute("SELECT * FROM payments WHERE user_id = $1", {std::string("2088077")});
  ASSERT_TRUE(cross.ok()) << cross.status();
  EXPECT_EQ(cross->read_elsewhere, (std::map<int, std::string>{{77, "zone-b"}}));
  auto own = a.ds->Execute("SELECT * FROM payments WHERE user_id = $1", {std::string("2088042")});
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_TRUE(own->read_elsewhere.empty());
}

// Without cross-zone reads, a read of another zone's shard is refused
// naming the owner, and one spanning shards is refused as a whole.
TEST_F(LdcSwitchTest, ACrossZoneReadIsRefusedUnlessAllowed) {
  PublishRules();
  ZoneClient a = StartZone("zone-a");
  dds::DataSourceConfig config;
  dds::DatabaseConfig db;
  db.name = "zone-a";
  db.target = dir_.File("reads.db");
  config.databases = {db};
  config.sharded_tables = {{"payments", "user_id"}};
  config.write_gate = std::make_shared<ZoneWriteGate>(a.router.get());
  auto ds = dds::ShardedDataSource::Open(config).value();
  ASSERT_TRUE(ds->Execute("CREATE TABLE payments (id INTEGER, user_id TEXT, amount INTEGER)").ok());
  EXPECT_TRUE(
      ds->Execute("SELECT * FROM payments WHERE user_id = $1", {std::string("2088042")}).ok());
  auto refused = ds->Execute("SELECT * FROM payments WHERE user_id = $1", {std::string("2088077")});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("read refused: shard 77 is owned by zone zone-b"));
  EXPECT_EQ(ds->Execute("SELECT count(*) FROM payments").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Writers in both zones write users of shards 00-49 (zone-a's, moving to
// zone-b) and 50-99 (zone-b's, staying) all through a switch. Per write:
// no admission in zone-b of a moved shard overlaps or precedes one in
// zone-a; every acknowledged write is in its zone's database; zone-b's
// writers for the moving shards see delay, not errors.
TEST_F(LdcSwitchTest, SwitchUnderLoadNeverAcceptsAShardInTwoZones) {
  PublishRules();
  Zone a = OpenZone("zone-a");
  Zone b = OpenZone("zone-b");
  constexpr int kUsers = 100;  // one user per shard
  std::atomic<bool> stop{false};
  std::atomic<int64_t> next_id{1};
  std::mutex mu;
  std::map<std::pair<std::string, std::string>, int64_t> acked;  // (zone, user) -> writes
  std::map<std::string, int64_t> unavailable;                    // zone -> plain writes failed
  std::map<std::string, int64_t> tx_retried;  // zone -> transactions refused in the fence
  std::map<std::string, int64_t> not_owner;
  std::map<std::string, std::string> other_errors;
  // A writer: plain INSERTs, or (`hold` > 0) transactions that stay open
  // `hold` after their insert, so that writes admitted under old rules are
  // still running when newer rules arrive.
  auto writer = [&](Zone* zone, const std::string& name, int first, int users, int step,
                    absl::Duration hold) {
    int i = first;
    while (!stop.load()) {
      std::string user = UserOf(i % users);
      i += step;
      absl::Status r;
      const bool in_transaction = hold > absl::ZeroDuration();
      if (!in_transaction) {
        r = zone->ds
                ->Execute("INSERT INTO payments (id, user_id, amount) VALUES ($1, $2, $3)",
                          {next_id.fetch_add(1), user, int64_t{1}})
                .status();
      } else {
        auto tx = zone->ds->Begin(user);
        r = tx.ok()
                ? (*tx)
                      ->Execute("INSERT INTO payments (id, user_id, amount) VALUES ($1, $2, $3)",
                                {next_id.fetch_add(1), user, int64_t{1}})
                      .status()
                : tx.status();
        if (r.ok()) {
          absl::SleepFor(hold);
          r = (*tx)->Commit();
        }
        tx = nullptr;
        absl::SleepFor(hold / 5);  // leave the database to the other writers a while
      }
      std::lock_guard<std::mutex> lock(mu);
      if (r.ok()) {
        ++acked[{name, user}];
      } else if (r.code() == absl::StatusCode::kUnavailable) {
        // A transaction is refused at once in the fence (it holds locks);
        // its caller retries it. A plain write waits and must not fail.
        ++(in_transaction ? tx_retried : unavailable)[name];
      } else if (r.code() == absl::StatusCode::kFailedPrecondition) {
        ++not_owner[name];
      } else {
        other_errors[name] = r.ToString();
      }
      if (!r.ok()) absl::SleepFor(absl::Milliseconds(1));
    }
  };
  std::vector<std::thread> writers;
  // zone-a: a slow transaction writer on shards 00-04 (each transaction
  // open 100 ms), two plain writers on the users of 00-49. zone-b: three plain
  // writers on every user, and one per shard 00-04 that waits for it to move.
  writers.emplace_back(writer, &a, "zone-a", 0, 5, 1, absl::Milliseconds(100));
  for (int t = 0; t < 2; ++t) {
    writers.emplace_back(writer, &a, "zone-a", t + 1, kUsers / 2, 7, absl::ZeroDuration());
  }
  for (int t = 0; t < 3; ++t) {
    writers.emplace_back(writer, &b, "zone-b", t + 3, kUsers, 7, absl::ZeroDuration());
  }
  for (int k = 0; k < 5; ++k) {
    writers.emplace_back(writer, &b, "zone-b", k, 5, 0, absl::ZeroDuration());
  }
  // The distinct shards of 00-99 a zone's gate admitted writes of so far.
  auto shards_written = [](Zone& zone, int from, int to) {
    std::set<int> shards;
    for (const Admission& w : zone.gate->admissions()) {
      if (w.shard >= from && w.shard <= to) shards.insert(w.shard);
    }
    return static_cast<int>(shards.size());
  };
  // The phases last until the writers did what they are there for, not a
  // fixed time: on a loaded machine a synced write can take tens of ms.
  auto await = [&](const std::function<bool()>& done, const char* what) {
    absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (!done() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(50));
    EXPECT_TRUE(done()) << what;
  };
  // Before: zone-a writes its moving shards (at least 10 of them) for at
  // least a second.
  absl::SleepFor(absl::Milliseconds(1000));
  await([&] { return shards_written(a, 0, 49) >= 10; }, "zone-a wrote too few shards of 00-49");
  SwitchOptions options;
  options.shards = *ParseShards("00-49");
  options.to = "zone-b";
  absl::StatusOr<SwitchResult> result = admin_->Switch(options);
  if (!result.ok()) {
    stop = true;
    for (auto& t : writers) t.join();
  }
  ASSERT_TRUE(result.ok()) << result.status();
  // After: zone-b writes every shard, the moved ones included, for at least
  // 1.5 s, while zone-a's writers keep trying the moved shards.
  absl::SleepFor(absl::Milliseconds(1500));
  await([&] { return shards_written(b, 0, 99) == 100; }, "zone-b did not write every shard");
  stop = true;
  for (auto& t : writers) t.join();

  EXPECT_EQ(result->moved, *ParseShards("00-49"));
  EXPECT_EQ(result->from, std::set<std::string>{"zone-a"});
  EXPECT_TRUE(result->converged);
  EXPECT_EQ(result->clients, 2);
  EXPECT_EQ(a.client.router->rules()->owner[10], "zone-b");
  std::printf("fence wait %s, fenced %s, converged %s\n",
              absl::FormatDuration(result->fence_wait).c_str(),
              absl::FormatDuration(result->fenced_for).c_str(),
              absl::FormatDuration(result->converge).c_str());

  // Per shard: every zone-a admission ended before the first zone-b one began.
  std::map<int, uint64_t> last_release_a, first_admit_b;
  std::map<int, int> admitted_a, admitted_b;
  for (const Admission& w : a.gate->admissions()) {
    last_release_a[w.shard] = std::max(last_release_a[w.shard], w.released);
    ++admitted_a[w.shard];
  }
  for (const Admission& w : b.gate->admissions()) {
    auto& first = first_admit_b[w.shard];
    first = first == 0 ? w.admitted : std::min(first, w.admitted);
    ++admitted_b[w.shard];
  }
  int written_in_both = 0;
  for (int s = 0; s < 100; ++s) {
    if (s < 50) {
      EXPECT_GT(admitted_b[s], 0) << "shard " << s << " was never written in zone-b";
      if (admitted_a[s] > 0) ++written_in_both;
      EXPECT_LT(last_release_a[s], first_admit_b[s])
          << "shard " << s << " was written in zone-a after zone-b began writing it";
    } else {
      EXPECT_EQ(admitted_a[s], 0) << "zone-a wrote zone-b's shard " << s;
      EXPECT_GT(admitted_b[s], 0) << "shard " << s;
    }
  }
  EXPECT_GE(written_in_both, 5) << "too few moving shards were written before the switch";
  // No acknowledged write lost, none stored twice: each zone's database
  // holds exactly what it acknowledged, user by user.
  int64_t total = 0;
  for (int i = 0; i < kUsers; ++i) {
    std::string user = UserOf(i);
    int64_t in_a = acked[{"zone-a", user}];
    int64_t in_b = acked[{"zone-b", user}];
    EXPECT_EQ(CountRows(a.ds.get(), user), in_a) << user;
    EXPECT_EQ(CountRows(b.ds.get(), user), in_b) << user;
    total += acked[{"zone-a", user}] + acked[{"zone-b", user}];
  }
  EXPECT_GT(total, 300);
  // The fence delayed writes; it failed none within the gate's 5 s wait.
  EXPECT_EQ(unavailable["zone-a"], 0);
  EXPECT_EQ(unavailable["zone-b"], 0);
  EXPECT_TRUE(other_errors.empty()) << other_errors.begin()->second;
  EXPECT_GT(not_owner["zone-a"], 0);  // zone-a's writers kept trying the moved shards
  EXPECT_GT(not_owner["zone-b"], 0);  // and zone-b's tried them before the switch
}

// In the fence a plain write waits (here up to 300 ms) and then fails
// retryably; a transaction's write fails at once.
TEST_F(LdcSwitchTest, AFencedWriteWaitsAndATransactionsFailsAtOnce) {
  PublishRules();
  ZoneClient a = StartZone("zone-a");
  VersionedRules current = admin_->Get().value();
  RuleSet fenced = current.rules;
  fenced.fenced = {42};
  uint64_t version = admin_->Put(fenced, current.version).value();
  ASSERT_TRUE(a.router->AwaitVersion(version, absl::Seconds(10)).ok());
  dds::DataSourceConfig config;
  dds::DatabaseConfig db;
  db.name = "zone-a";
  db.target = dir_.File("fence.db");
  config.databases = {db};
  config.sharded_tables = {{"payments", "user_id"}};
  config.write_gate = std::make_shared<ZoneWriteGate>(a.router.get(), absl::Milliseconds(300));
  auto ds = dds::ShardedDataSource::Open(config).value();
  ASSERT_TRUE(ds->Execute("CREATE TABLE payments (id INTEGER, user_id TEXT, amount INTEGER)").ok());
  const char* insert = "INSERT INTO payments (id, user_id, amount) VALUES ($1, $2, $3)";

  absl::Time start = absl::Now();
  auto plain = ds->Execute(insert, {int64_t{1}, std::string("2088042"), int64_t{1}});
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(plain.status().message()), HasSubstr("shard 42 is fenced"));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));

  auto tx = ds->Begin(std::string("2088042"));
  ASSERT_TRUE(tx.ok());
  start = absl::Now();
  auto in_tx = (*tx)->Execute(insert, {int64_t{2}, std::string("2088042"), int64_t{1}});
  EXPECT_EQ(in_tx.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(200));
  tx->reset();
  EXPECT_EQ(CountRows(ds.get(), "2088042"), 0);
  // Shard 41, not fenced, is written at once.
  EXPECT_TRUE(ds->Execute(insert, {int64_t{3}, std::string("2088041"), int64_t{1}}).ok());

  // A switch while shards are fenced is refused, changing nothing.
  SwitchOptions options;
  options.shards = {1};
  options.to = "zone-b";
  auto refused = admin_->Switch(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("shards 42 are fenced"));
  EXPECT_EQ(admin_->Get()->version, version);
}

TEST_F(LdcSwitchTest, AWriteGateNeedsTheLastTwoDigitsShardFunction) {
  PublishRules();
  ZoneClient a = StartZone("zone-a");
  dds::DataSourceConfig config;
  dds::DatabaseConfig db;
  db.name = "zone-a";
  db.target = dir_.File("modulo.db");
  config.databases = {db};
  config.function = dds::ShardFunction::kModulo;
  config.shards = 16;
  config.write_gate = std::make_shared<ZoneWriteGate>(a.router.get());
  auto ds = dds::ShardedDataSource::Open(config);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ds.status().message()), HasSubstr("last_two_digits"));
}

// A process whose registry session is lost writes nothing until it has
// reported its rules on a new session (it dropped out of the count).
TEST_F(LdcSwitchTest, AClientThatLostItsSessionWritesOnlyAfterReportingAgain) {
  PublishRules();
  ZoneClient a = StartZone("zone-a");
  uint64_t first_session = a.registry->session_id();
  ASSERT_TRUE(a.router->AdmitWrite(42, absl::Now()).ok());
  ASSERT_EQ(dsrd_->Stop(), 0);  // sessions are gone with it
  absl::Time until = absl::Now() + absl::Seconds(10);
  while (a.registry->connected() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
  auto refused = a.router->AdmitWrite(42, absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("not yet confirmed"));
  ASSERT_TRUE(dsrd_->Restart().ok());
  // Back on a new session, the write is admitted once the report is confirmed.
  auto admitted = a.router->AdmitWrite(42, absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  EXPECT_NE(a.registry->session_id(), first_session);
  std::map<std::string, uint64_t> applied = Applied();
  EXPECT_EQ(applied["zone-a"], a.router->version());
}

}  // namespace
}  // namespace formica::ldc::testing
