// formicactl ldc as an operator runs it, against a real dsrd and client
// processes (ldc_agent) that the tests stop, kill and restart.
#include <signal.h>

#include <thread>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "formica/internal/process_metrics.h"
#include "ldc_fixture.h"

namespace formica::ldc::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The agent's output contains "reported N" for N >= `version`.
bool AgentReported(Subprocess* agent, uint64_t version, absl::Duration timeout) {
  return agent->WaitForOutput(absl::StrCat("reported ", version, "\n"), timeout);
}

TEST_F(LdcTest, ApplyPublishesRulesAndABadSetIsRefusedNamingTheFault) {
  auto [code, out] = Ctl({"ldc", "apply", WriteFile("rules.yaml", kTwoZones)});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("published at version"));
  uint64_t version = admin_->Get()->version;

  const std::string bad = R"(
ldc:
  zones:
    zone-a: {kind: rzone, shards: "00-50"}
    zone-b: {kind: rzone, shards: "50-99"}
    global: {kind: gzone}
)";
  std::tie(code, out) = Ctl({"ldc", "apply", WriteFile("bad.yaml", bad)});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(out, HasSubstr("shard 50 is owned by both zone-a and zone-b"));
  const std::string no_gzone = R"(ldc: {zones: {zone-a: {shards: "00-99"}}})";
  std::tie(code, out) = Ctl({"ldc", "apply", WriteFile("nog.yaml", no_gzone)});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("no gzone"));
  // A stale compare-and-set changes nothing either.
  std::tie(code, out) =
      Ctl({"ldc", "apply", WriteFile("again.yaml", kTwoZones), "--expect-version", "0"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("FAILED_PRECONDITION"));

  EXPECT_EQ(admin_->Get()->version, version);  // the current rules stay
  std::tie(code, out) = Ctl({"ldc", "status"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("rules version ", version)));
  EXPECT_THAT(out, HasSubstr("zone-a"));
  EXPECT_THAT(out, HasSubstr("00-49"));
  EXPECT_THAT(out, HasSubstr("50-99"));
  EXPECT_THAT(out, HasSubstr("czone"));

  std::tie(code, out) = Ctl({"ldc", "route", "2088077"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("shard 77, owner zone-b (dc-2, shanghai)"));
  std::tie(code, out) = Ctl({"ldc", "route", "abc"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("user id 'abc' does not end in two digits"));
}

// The process's metrics (every rpc::Server's page) carry the rules version
// its routers applied and reported.
TEST_F(LdcTest, TheAppliedRulesVersionIsAMetricOfTheProcess) {
  uint64_t version = PublishRules();
  ZoneClient a = StartZone("gz00a");
  double seen = -1;
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;) {
    PrometheusText out;
    WriteProcessMetrics(out);
    size_t at = out.text().find("\nformica_ldc_rules_version ");
    if (at != std::string::npos) {
      size_t start = at + std::strlen("\nformica_ldc_rules_version ");
      (void)absl::SimpleAtod(out.text().substr(start, out.text().find('\n', start) - start), &seen);
    }
    if (seen == static_cast<double>(version)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(seen, static_cast<double>(version));
}

TEST_F(LdcTest, StatusListsEveryClientAndMarksTheLagging) {
  uint64_t first = PublishRules();
  auto fast = StartAgent("zone-a", "orders-a");
  auto slow = StartAgent("zone-b", "orders-b", 20000);
  ASSERT_TRUE(AgentReported(fast.get(), first, absl::Seconds(20))) << fast->Output();
  ASSERT_TRUE(AgentReported(slow.get(), first, absl::Seconds(20))) << slow->Output();
  slow->Signal(SIGSTOP);
  RuleSet rules = admin_->Get()->rules;
  rules.zones[0].city = "hangzhou-2";
  uint64_t second = admin_->Put(rules, first).value();
  ASSERT_TRUE(AgentReported(fast.get(), second, absl::Seconds(20))) << fast->Output();

  auto [code, out] = Ctl({"ldc", "status"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("2 client(s), 1 on an older version"));
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (absl::StrContains(line, "orders-b")) {
      EXPECT_THAT(std::string(line), HasSubstr(absl::StrCat(first, "  LAGGING")));
    }
    if (absl::StrContains(line, "orders-a")) {
      EXPECT_THAT(std::string(line), Not(HasSubstr("LAGGING")));
    }
  }
  std::tie(code, out) = Ctl({"-o", "json", "ldc", "status"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("\"lagging\": true"));
  slow->Signal(SIGCONT);
  EXPECT_TRUE(AgentReported(slow.get(), second, absl::Seconds(20))) << slow->Output();
}

TEST_F(LdcTest, ALaggingClientHoldsTheFenceAndTheTimeoutRollsBack) {
  uint64_t first = PublishRules();
  auto a = StartAgent("zone-a", "orders-a", 20000);
  auto b = StartAgent("zone-b", "orders-b");
  ASSERT_TRUE(AgentReported(a.get(), first, absl::Seconds(20))) << a->Output();
  ASSERT_TRUE(AgentReported(b.get(), first, absl::Seconds(20))) << b->Output();
  a->Signal(SIGSTOP);  // alive to the registry (long lease), deaf to pushes

  absl::Time start = absl::Now();
  auto [code, out] = Ctl(
      {"ldc", "switch", "--shards", "00-09", "--to", "zone-b", "--fence-timeout", "1s", "--yes"});
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(code, 1) << out;
  EXPECT_THAT(out, HasSubstr("DEADLINE_EXCEEDED"));
  EXPECT_THAT(out, HasSubstr("rolled back"));
  EXPECT_THAT(out, HasSubstr("1 client(s) did not apply the fence within 1s: orders-a"));
  EXPECT_THAT(out, Not(HasSubstr("orders-b")));
  EXPECT_THAT(out, HasSubstr("nothing moved"));
  EXPECT_GE(took, absl::Seconds(1));  // the lagging client held the fence

  VersionedRules now = admin_->Get().value();
  EXPECT_GT(now.version, first);
  EXPECT_EQ(now.rules.owner[5], "zone-a");
  EXPECT_TRUE(now.rules.fenced.empty());
  a->Signal(SIGCONT);
  EXPECT_TRUE(AgentReported(a.get(), now.version, absl::Seconds(20))) << a->Output();
  EXPECT_TRUE(AgentReported(b.get(), now.version, absl::Seconds(20))) << b->Output();
}

TEST_F(LdcTest, ForceMovesPastALaggingClientAndSaysWhatItRisks) {
  uint64_t first = PublishRules();
  auto a = StartAgent("zone-a", "orders-a", 20000);
  ASSERT_TRUE(AgentReported(a.get(), first, absl::Seconds(20))) << a->Output();
  a->Signal(SIGSTOP);
  auto [code, out] = Ctl({"ldc", "switch", "--zone", "zone-a", "--to", "zone-b", "--force",
                          "--fence-timeout", "500ms", "--yes"});
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("may keep writing shards 00-49"));
  EXPECT_THAT(out, HasSubstr("forced past orders-a"));
  EXPECT_THAT(out, HasSubstr("moved shards 00-49 from zone-a to zone-b"));
  EXPECT_THAT(out, HasSubstr("some clients not yet on version"));
  EXPECT_EQ(admin_->Get()->rules.owner[0], "zone-b");
  a->Signal(SIGCONT);
}

TEST_F(LdcTest, AClientRestartedMidSwitchComesBackOnTheFinalVersion) {
  uint64_t first = PublishRules();
  auto a = StartAgent("zone-a", "orders-a");  // 2 s lease
  auto b = StartAgent("zone-b", "orders-b");
  ASSERT_TRUE(AgentReported(a.get(), first, absl::Seconds(20))) << a->Output();
  ASSERT_TRUE(AgentReported(b.get(), first, absl::Seconds(20))) << b->Output();
  a->Signal(SIGSTOP);
  SwitchOptions options;
  options.shards = *ParseShards("00-49");
  options.to = "zone-b";
  absl::StatusOr<SwitchResult> result;
  std::thread operator_thread([&] { result = admin_->Switch(options); });
  absl::SleepFor(absl::Milliseconds(300));
  a->Kill();  // dies holding the fence; its session lapses with its lease
  a = StartAgent("zone-a", "orders-a");
  operator_thread.join();
  ASSERT_TRUE(result.ok()) << result.status();
  // The old process held the fence until its lease lapsed.
  EXPECT_GE(result->fence_wait, absl::Milliseconds(1500));
  EXPECT_TRUE(result->lagging.empty());
  // The new one came back on the final version (or moved to it) and says so.
  EXPECT_TRUE(AgentReported(a.get(), result->final_version, absl::Seconds(20))) << a->Output();
  std::map<std::string, uint64_t> applied = Applied();
  EXPECT_EQ(applied["orders-a"], result->final_version);
  EXPECT_EQ(applied["orders-b"], result->final_version);
}

// A process paused (SIGSTOP) past its session's lease while its shard is
// switched away: the switch goes on once the session lapses, and when the
// process wakes it admits no write to that shard under the rules it held,
// though its registry client has not yet seen its session end.
TEST_F(LdcTest, AProcessPausedPastItsLeaseAdmitsNoWriteOnWaking) {
  uint64_t first = PublishRules();
  auto a = StartAgent("zone-a", "orders-a", /*lease_ms=*/1000, /*probe_shard=*/5);
  auto b = StartAgent("zone-b", "orders-b");
  ASSERT_TRUE(AgentReported(a.get(), first, absl::Seconds(20))) << a->Output();
  ASSERT_TRUE(AgentReported(b.get(), first, absl::Seconds(20))) << b->Output();
  ASSERT_TRUE(a->WaitForOutput("admitted 5 under", absl::Seconds(10))) << a->Output();
  a->Signal(SIGSTOP);
  auto [code, out] = Ctl(
      {"ldc", "switch", "--shards", "00-09", "--to", "zone-b", "--fence-timeout", "10s", "--yes"});
  ASSERT_EQ(code, 0) << out;
  const int64_t switched_ms = absl::ToUnixMillis(absl::Now());
  a->Signal(SIGCONT);
  // The agent's registry client notices its session's end within a lease;
  // give it that and more, then read what it admitted.
  absl::SleepFor(absl::Seconds(3));
  int before = 0;
  for (absl::string_view line : absl::StrSplit(a->Output(), '\n')) {
    std::vector<std::string> words = absl::StrSplit(line, ' ');
    int64_t asked = 0;
    if (words.size() != 7 || words[0] != "admitted" || !absl::SimpleAtoi(words[6], &asked)) {
      continue;
    }
    EXPECT_LT(asked, switched_ms) << "shard 05 was admitted in zone-a after it moved: " << line;
    ++before;
  }
  EXPECT_GT(before, 0);
  // And it comes back on the rules that moved the shard.
  EXPECT_TRUE(AgentReported(a.get(), admin_->Get()->version, absl::Seconds(20))) << a->Output();
}

TEST_F(LdcTest, SwitchAsAnOperatorRunsItInJsonAndItsRefusals) {
  uint64_t first = PublishRules();
  auto a = StartAgent("zone-a", "orders-a");
  auto b = StartAgent("zone-b", "orders-b");
  ASSERT_TRUE(AgentReported(a.get(), first, absl::Seconds(20))) << a->Output();
  ASSERT_TRUE(AgentReported(b.get(), first, absl::Seconds(20))) << b->Output();
  auto [code, out] = Ctl({"ldc", "switch", "--shards", "00-09,20", "--to", "zone-b", "--yes"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("fenced shards 00-09,20 at version"));
  EXPECT_THAT(out, HasSubstr("2 client(s) applied it"));
  EXPECT_THAT(out, HasSubstr("moved shards 00-09,20 from zone-a to zone-b"));
  EXPECT_THAT(out, HasSubstr("every client on version"));

  std::tie(code, out) =
      Ctl({"-o", "json", "ldc", "switch", "--shards", "05-14", "--to", "zone-a", "--yes"});
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("\"moved\": \"05-09\""));  // 10-14 were zone-a's already
  EXPECT_THAT(out, HasSubstr("\"converged\": true"));
  EXPECT_THAT(out, HasSubstr("\"clients\": 2"));

  uint64_t before = admin_->Get()->version;
  std::tie(code, out) = Ctl({"ldc", "switch", "--shards", "10-14", "--to", "zone-a", "--yes"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("nothing to move: zone zone-a already owns shards 10-14"));
  std::tie(code, out) = Ctl({"ldc", "switch", "--shards", "00-09", "--to", "global", "--yes"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("'global' is a gzone; only an rzone owns shards"));
  std::tie(code, out) = Ctl({"ldc", "switch", "--shards", "00-120", "--to", "zone-b", "--yes"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("'00-120' is not within 00-99"));
  std::tie(code, out) = Ctl({"ldc", "switch", "--to", "zone-b", "--yes"});
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("needs --to ZONE and one of --shards RANGES or --zone ZONE"));
  // Without --yes it asks; anything but yes does nothing.
  std::tie(code, out) = Ctl({"ldc", "switch", "--shards", "00-09", "--to", "zone-b"});
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("move shards 00-09 to zone-b? [y/N]"));
  EXPECT_THAT(out, HasSubstr("nothing done"));
  std::tie(code, out) = Ctl({"ldc", "frobnicate"});
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("unknown command 'ldc frobnicate'"));
  EXPECT_EQ(admin_->Get()->version, before);  // refusals changed nothing
}

}  // namespace
}  // namespace formica::ldc::testing
