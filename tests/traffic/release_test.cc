// formicactl release against a real dsrd, echo providers and a caller under
// steady load, with a deploy command that stops old providers and starts
// new-version ones, as a script over systemd or Kubernetes would.
#include <gmock/gmock.h>
#include <signal.h>

#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <set>

#include "formica/rpc/v1/rpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "traffic_fixture.h"

namespace formica::rpc::testing {
namespace {

using ::testing::HasSubstr;

// deploy.sh GROUP VERSION INSTANCE...: stops each instance (SIGTERM: it
// unpublishes, lets callers notice, drains) and starts a provider of VERSION.
constexpr char kDeployScript[] = R"(#!/bin/sh
group=$1; version=$2; shift 2
echo "deploy.sh: group $group: started for version $version"
if [ -n "$SLOW" ]; then sleep "$SLOW"; fi
for addr in "$@"; do
  port=${addr##*:}
  pid=$(cat "$DIR/pids/$port.pid") || { echo "deploy.sh: no pid file for $addr"; exit 1; }
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; do sleep 0.05; done
  rm -f "$DIR/pids/$port.pid"
  echo "deploy.sh: group $group: $addr stopped, starting version $version"
  extra=""
  if [ "$version" = "$FAILING_VERSION" ]; then extra="--fail-percent 20"; fi
  "$ECHO" --registry "$REG" --tag version="$version" --pid-dir "$DIR/pids" --warmup-ms 500 \
    --grace-ms 2000 $extra \
    > "$DIR/echo-$version-$port.log" 2>&1 < /dev/null &
done
)";

class ReleaseTest : public TrafficTest {
 protected:
  void SetUp() override {
    TrafficTest::SetUp();
    pids_ = dir_.File("pids");
    ASSERT_EQ(mkdir(pids_.c_str(), 0755), 0);
    std::ofstream(dir_.File("deploy.sh")) << kDeployScript;
    ASSERT_EQ(chmod(dir_.File("deploy.sh").c_str(), 0755), 0);
    // Two rooms (zones), two providers in each; each keeps serving for 2 s
    // after it unpublished (rpc::Server's default), while callers drop it.
    for (int i = 0; i < 4; ++i) {
      const char* room = i < 2 ? "a" : "b";
      providers_.push_back(
          StartEcho({"--tag", "version=1", "--tag", std::string("room=") + room, "--zone",
                     i < 2 ? "gz00a" : "gz01a", "--grace-ms", "2000", "--pid-dir", pids_}));
    }
    ASSERT_TRUE(AwaitProviders(4));
  }
  void TearDown() override {
    StopLoad();
    // The providers the deploy command started are not our children.
    if (DIR* d = opendir(pids_.c_str())) {
      while (dirent* e = readdir(d)) {
        std::ifstream in(pids_ + "/" + e->d_name);
        int pid = 0;
        if (e->d_name[0] != '.' && (in >> pid) && pid > 0) kill(pid, SIGKILL);
      }
      closedir(d);
    }
    TrafficTest::TearDown();
  }

  std::string Deploy(const std::string& failing_version = "", const std::string& slow = "") {
    return "SLOW=" + slow + " DIR=" + dir_.path() + " REG=" + dsrd_->address() +
           " ECHO=" + formica::testing::BinaryPath("tests/rpc/echo_server") +
           " FAILING_VERSION=" + failing_version + " " + dir_.File("deploy.sh") +
           " {group} {version} {instances}";
  }

  // The providers' versions now, by address.
  std::map<std::string, std::string> Versions() {
    auto stub = Stub();
    grpc::ClientContext ctx;
    registry::v1::GetServiceRequest request;
    request.set_service(kEcho);
    registry::v1::ServiceSnapshot snapshot;
    EXPECT_TRUE(stub->GetService(&ctx, request, &snapshot).ok());
    std::map<std::string, std::string> out;
    for (const auto& i : snapshot.instances()) out[i.address()] = i.tags().at("version");
    return out;
  }

  // The release record in the registry.
  v1::Release Record() {
    v1::Release r;
    auto entry = registry_->GetConfig(std::string("release/") + kEcho);
    if (entry.ok() && entry->exists) {
      EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(entry->value, &r).ok());
    }
    return r;
  }
  bool AwaitGroupState(const std::string& group, const std::string& state,
                       absl::Duration timeout = absl::Seconds(30)) {
    for (absl::Time end = absl::Now() + timeout; absl::Now() < end;) {
      v1::Release r = Record();
      for (const auto& g : r.groups()) {
        if (g.name() == group && g.state() == state) return true;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  int FailedCalls() {
    int failed = 0;
    for (const LoadCall& c : Load()) failed += c.code != absl::StatusCode::kOk;
    return failed;
  }

  std::string pids_;
  std::vector<std::unique_ptr<Subprocess>> providers_;
  absl::Mutex routes_mu_;
  std::vector<std::string> routes_seen_ ABSL_GUARDED_BY(routes_mu_);
};

TEST_F(ReleaseTest, ThreeGroupsFromAPlanFileReleaseWithNoFailedCall) {
  std::ofstream(dir_.File("plan.yaml")) << "service: " << kEcho << "\n"
                                        << "version: \"2\"\n"
                                        << "deploy: " << Deploy() << "\n"
                                        << "groups: [beta:1, \"1:room=a\", \"2:room=b\"]\n"
                                        << "bake: 1s\nauto: true\n"
                                        << "analysis:\n  min_calls: 20\n"
                                        << "group:\n  beta:\n    bake: 2s\n"
                                        << "    analysis:\n      min_calls: 30\n";
  StartLoad();
  absl::SleepFor(absl::Milliseconds(300));
  std::string out;
  ASSERT_EQ(Ctl({"release", "start", "--plan", dir_.File("plan.yaml")}, &out, absl::Seconds(120)),
            0)
      << out;
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();
  EXPECT_THAT(out, HasSubstr("release of formica.test.Echo 2 done"));
  // Every old provider replaced once: four providers, all new.
  std::map<std::string, std::string> versions = Versions();
  EXPECT_EQ(versions.size(), 4u);
  for (const auto& [address, version] : versions) EXPECT_EQ(version, "2") << address;
  for (auto& p : providers_) EXPECT_EQ(versions.count(Address(*p)), 0u);
  int deploys = 0;
  for (size_t at = 0; (at = out.find(" stopped, starting version ", at)) != std::string::npos; ++at)
    ++deploys;
  EXPECT_EQ(deploys, 4);
  EXPECT_EQ(FailedCalls(), 0);
  EXPECT_GT(Load().size(), 1000u);
  ASSERT_EQ(Ctl({"release", "status", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("release of formica.test.Echo: version=1 -> 2, done"));
  // The beta group took one provider; groups 1 and 2 the rest of rooms a and b.
  EXPECT_THAT(out, ::testing::ContainsRegex("beta +done +gz0[01]a +0 +0 +1 +0 "));
  EXPECT_THAT(out, ::testing::ContainsRegex("\n1 +done +gz00a +0 +0 +[12] +0 "));
  EXPECT_THAT(out, ::testing::ContainsRegex("\n2 +done +gz01a +0 +0 +[12] +0 "));
  // The beta group baked and was judged by its own settings, the others by
  // the plan's.
  EXPECT_THAT(out, ::testing::ContainsRegex("\nbeta +done .* 2s +\\+1 1\\.5x n>=30 "));
  EXPECT_THAT(out, ::testing::ContainsRegex("\n1 +done .* 1s +\\+1 1\\.5x n>=20 "));
  EXPECT_THAT(out, ::testing::ContainsRegex("\n2 +done .* 1s +\\+1 1\\.5x n>=20 "));
}

// A lenient release with one strict group: the 20%-failing version passes
// the beta group on the release's thresholds and is stopped at group rest by
// its own, after baking each group for its own time.
TEST_F(ReleaseTest, EachGroupIsBakedAndJudgedByItsOwnSettings) {
  StartLoad();
  std::string out;
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1,rest:3", "--bake",
                 "1s", "--auto", "--min-calls", "20", "--max-failure-increase", "60", "--group",
                 "rest:bake=2500ms,max-failure-increase=1", "--deploy", Deploy("2")},
                &out, absl::Seconds(120)),
            1)
      << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("group beta: up .*; baking 1s"));
  EXPECT_THAT(out, HasSubstr("group beta: passed: target"));
  EXPECT_THAT(out, ::testing::ContainsRegex("group rest: up .*; baking 2.5s"));
  EXPECT_THAT(out, HasSubstr("group rest failed: target failed"));
  EXPECT_THAT(out, HasSubstr("(limit 1)"));
  EXPECT_THAT(out, HasSubstr("rolled back: back on version=1"));
  StopLoad();
  for (const auto& [address, version] : Versions()) EXPECT_EQ(version, "1") << address;
  v1::Release r = Record();
  ASSERT_EQ(r.groups_size(), 2);
  EXPECT_EQ(r.groups(0).bake_ms(), 1000);
  EXPECT_EQ(r.groups(0).max_failure_rate_increase(), 60);
  EXPECT_EQ(r.groups(1).bake_ms(), 2500);
  EXPECT_EQ(r.groups(1).max_failure_rate_increase(), 1);
  EXPECT_EQ(r.groups(1).min_calls(), 20);
}

// Before each group's deploy the controller takes its old instances out of
// rotation through the registry: each is seen at weight 0 before it leaves,
// and no call fails.
TEST_F(ReleaseTest, EachGroupsOldInstancesAreDrainedBeforeItsDeploy) {
  absl::Mutex mu;
  std::map<std::string, std::vector<int>> weights;  // each provider's weights, as pushed
  auto sub = registry_->Subscribe(kEcho, [&](const registry::ServiceSnapshot& s) {
    absl::MutexLock lock(&mu);
    for (const auto& i : s.instances) {
      auto& seen = weights[i.address];
      if (seen.empty() || seen.back() != i.weight) seen.push_back(i.weight);
    }
  });
  ASSERT_TRUE(sub.ok()) << sub.status();
  StartLoad();
  std::string out;
  ASSERT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1,rest:3", "--bake",
                 "1s", "--auto", "--deploy", Deploy()},
                &out, absl::Seconds(120)),
            0)
      << out;
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();
  registry_->Unsubscribe(*sub);
  EXPECT_THAT(out, ::testing::ContainsRegex("group beta: drained 127.0.0.1:[0-9]+ \\(weight 0"));
  EXPECT_LT(out.find("group beta: drained"), out.find("group beta: deploying"));
  EXPECT_THAT(out, HasSubstr("group rest: drained"));
  {
    absl::MutexLock lock(&mu);
    for (auto& p : providers_) {
      const std::vector<int>& seen = weights[Address(*p)];
      ASSERT_FALSE(seen.empty()) << Address(*p);
      EXPECT_EQ(seen.back(), 0) << Address(*p) << " left without being drained";
    }
  }
  EXPECT_EQ(FailedCalls(), 0);
  // Nothing is left on the drain list.
  auto drain = registry_->GetConfig(std::string("rpc/drain/") + kEcho);
  EXPECT_TRUE(absl::IsNotFound(drain.status()) || !drain->exists) << drain->value;
}

TEST_F(ReleaseTest, RollbackMidReleaseSendsCallsBackAtOnceAndRedeploysThePrevious) {
  uint64_t watch = *registry_->WatchConfig(std::string("rpc/routes/") + kEcho,
                                           [this](const registry::ConfigValue& v) {
                                             absl::MutexLock lock(&routes_mu_);
                                             routes_seen_.push_back(v.exists ? v.value : "");
                                           });
  StartLoad();
  auto controller = StartCtl({"release", "start", kEcho, "--version", "2", "--groups",
                              "beta:1,rest:3", "--bake", "1s", "--deploy", Deploy()});
  ASSERT_TRUE(AwaitGroupState("beta", "awaiting")) << controller->Output();
  std::string out;
  ASSERT_EQ(Ctl({"release", "status", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("awaiting"));
  EXPECT_THAT(out, ::testing::ContainsRegex("rest +waiting +- +3 +0 +0 +0 "));
  ASSERT_EQ(Ctl({"release", "rollback", kEcho}, &out, absl::Seconds(60)), 0) << out;
  EXPECT_THAT(out, HasSubstr("calls go to version=1; rolling back"));
  EXPECT_THAT(out, HasSubstr("version=1 -> 2, rolled_back"));
  EXPECT_EQ(controller->Wait(absl::Seconds(30)), 1);
  EXPECT_THAT(controller->Output(), HasSubstr("rolled back: back on version=1"));
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();
  std::map<std::string, std::string> versions = Versions();
  EXPECT_EQ(versions.size(), 4u);
  for (const auto& [address, version] : versions) EXPECT_EQ(version, "1") << address;
  // The previous version took every call at once, and the route from before
  // the release (none) is back.
  {
    absl::MutexLock lock(&routes_mu_);
    EXPECT_THAT(routes_seen_, ::testing::Contains("version=1:100"));
  }
  EXPECT_EQ(Route(), "");
  EXPECT_EQ(FailedCalls(), 0);
  registry_->Unwatch(watch);
}

TEST_F(ReleaseTest, AKilledControllersReleaseIsResumedWithoutDeployingTwice) {
  StartLoad();
  auto controller = StartCtl({"release", "start", kEcho, "--version", "2", "--groups",
                              "beta:1,1:1,2:2", "--bake", "2s", "--auto", "--deploy", Deploy()});
  ASSERT_TRUE(AwaitGroupState("1", "baking")) << controller->Output();
  controller->Kill();
  std::string out;
  EXPECT_EQ(Ctl({"release", "resume", kEcho}, &out), 1);
  EXPECT_THAT(out, HasSubstr("FAILED_PRECONDITION: the release of formica.test.Echo is run by"));
  EXPECT_EQ(
      Ctl({"release", "start", kEcho, "--version", "3", "--groups", "all:4", "--deploy", Deploy()},
          &out),
      1);
  EXPECT_THAT(out, HasSubstr("a release of formica.test.Echo to 2 is running"));
  absl::SleepFor(absl::Seconds(5));  // no heartbeat since: the controller is gone
  ASSERT_EQ(Ctl({"release", "resume", kEcho}, &out, absl::Seconds(120)), 0) << out;
  EXPECT_THAT(out, HasSubstr("taking over the release of formica.test.Echo to 2 (running)"));
  EXPECT_THAT(out, HasSubstr("release of formica.test.Echo 2 done"));
  // Groups beta and 1 were deployed by the first controller only.
  EXPECT_THAT(out, ::testing::Not(HasSubstr("group beta: deploying")));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("group 1: deploying")));
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();
  std::map<std::string, std::string> versions = Versions();
  EXPECT_EQ(versions.size(), 4u);
  for (const auto& [address, version] : versions) EXPECT_EQ(version, "2") << address;
  EXPECT_EQ(FailedCalls(), 0);
}

// The controller dies while its deploy command runs; the command finishes
// without it. The one taking over finds the group's new instance up and does
// not deploy it again.
TEST_F(ReleaseTest, AControllerKilledDuringADeployIsResumedWithoutDeployingAgain) {
  StartLoad();
  auto controller =
      StartCtl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1,rest:3", "--bake",
                "1s", "--auto", "--deploy", Deploy("", "2")});
  // Killed once its deploy command runs (not merely once it said so).
  ASSERT_TRUE(
      controller->WaitForOutput("deploy.sh: group beta: started for version 2", absl::Seconds(30)))
      << controller->Output();
  controller->Kill();
  // The deploy finishes meanwhile (its new instance publishes), and the
  // record goes stale (no heartbeat for 5 s). How long the deploy takes
  // depends on the machine: wait for its instance, not for a fixed time.
  absl::Time started = absl::Now();
  auto deployed = [&] {
    for (const auto& [address, version] : Versions()) {
      if (version == "2") return true;
    }
    return false;
  };
  while (!deployed() && absl::Now() - started < absl::Seconds(60)) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(deployed()) << "the deploy command never brought up the new instance";
  absl::SleepFor(std::max(absl::ZeroDuration(), absl::Seconds(6) - (absl::Now() - started)));
  EXPECT_EQ(Record().groups(0).state(), "releasing");
  std::string out;
  ASSERT_EQ(Ctl({"release", "resume", kEcho}, &out, absl::Seconds(120)), 0) << out;
  EXPECT_THAT(out, ::testing::Not(HasSubstr("group beta: deploying")));
  EXPECT_THAT(out, HasSubstr("group rest: deploying"));
  EXPECT_THAT(out, HasSubstr("release of formica.test.Echo 2 done"));
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();
  std::map<std::string, std::string> versions = Versions();
  EXPECT_EQ(versions.size(), 4u);
  for (const auto& [address, version] : versions) EXPECT_EQ(version, "2") << address;
  EXPECT_EQ(FailedCalls(), 0);
}

TEST_F(ReleaseTest, AVersionThatFailsIsRolledBackByItself) {
  StartLoad();
  std::string out;
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1,rest:3", "--bake",
                 "2s", "--auto", "--min-calls", "20", "--deploy", Deploy("2")},
                &out, absl::Seconds(120)),
            1)
      << out;
  EXPECT_THAT(out, HasSubstr("group beta failed: target failed"));
  EXPECT_THAT(out, HasSubstr("rolled back: back on version=1"));
  StopLoad();
  std::map<std::string, std::string> versions = Versions();
  EXPECT_EQ(versions.size(), 4u);
  for (const auto& [address, version] : versions) EXPECT_EQ(version, "1") << address;
  v1::Release r = Record();
  EXPECT_EQ(r.state(), "rolled_back");
  EXPECT_EQ(r.groups(0).state(), "rolled_back");
  EXPECT_EQ(r.groups(1).state(), "waiting");
}

TEST_F(ReleaseTest, ARollbackWithNoControllerIsRunByTheCommand) {
  StartLoad();
  auto controller = StartCtl({"release", "start", kEcho, "--version", "2", "--groups",
                              "beta:1,rest:3", "--bake", "1s", "--deploy", Deploy()});
  ASSERT_TRUE(AwaitGroupState("beta", "awaiting")) << controller->Output();
  controller->Kill();
  absl::SleepFor(absl::Seconds(5));
  std::string out;
  ASSERT_EQ(Ctl({"release", "rollback", kEcho}, &out, absl::Seconds(60)), 0) << out;
  EXPECT_THAT(out, HasSubstr("group beta: deploying 1 over"));
  EXPECT_THAT(out, HasSubstr("rolled back: back on version=1"));
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();
  std::map<std::string, std::string> versions = Versions();
  EXPECT_EQ(versions.size(), 4u);
  for (const auto& [address, version] : versions) EXPECT_EQ(version, "1") << address;
  EXPECT_EQ(Record().state(), "rolled_back");
  EXPECT_EQ(FailedCalls(), 0);
}

// The command running a rollback dies while its deploy runs; the deploy
// finishes without it. The one resuming the release finishes the rollback
// and does not deploy the previous version over that group again.
TEST_F(ReleaseTest, AReleaseKilledMidRollbackIsResumedAndRolledBackOnce) {
  StartLoad();
  auto controller = StartCtl({"release", "start", kEcho, "--version", "2", "--groups",
                              "beta:1,rest:3", "--bake", "1s", "--deploy", Deploy("", "2")});
  ASSERT_TRUE(AwaitGroupState("beta", "awaiting", absl::Seconds(60))) << controller->Output();
  controller->Kill();
  absl::SleepFor(absl::Seconds(5));  // stale: the rollback command runs it itself
  auto rollback = StartCtl({"release", "rollback", kEcho});
  // Killed once its deploy command runs (not merely once it said so).
  ASSERT_TRUE(
      rollback->WaitForOutput("deploy.sh: group beta: started for version 1", absl::Seconds(30)))
      << rollback->Output();
  rollback->Kill();
  EXPECT_EQ(Record().state(), "rolling_back");
  // The orphaned deploy brings version 1 back; then the record goes stale.
  absl::Time killed = absl::Now();
  auto rolled_back = [&] {
    std::map<std::string, std::string> versions = Versions();
    if (versions.size() != 4) return false;
    for (const auto& [address, version] : versions) {
      if (version != "1") return false;
    }
    return true;
  };
  while (!rolled_back() && absl::Now() - killed < absl::Seconds(60)) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(rolled_back()) << "the orphaned deploy never brought version 1 back";
  absl::SleepFor(std::max(absl::ZeroDuration(), absl::Seconds(6) - (absl::Now() - killed)));
  std::string out;
  ASSERT_EQ(Ctl({"release", "resume", kEcho}, &out, absl::Seconds(60)), 0) << out;
  EXPECT_THAT(out, HasSubstr("taking over the release of formica.test.Echo to 2 (rolling_back)"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("deploying"))) << "deployed the rollback twice";
  EXPECT_THAT(out, HasSubstr("rolled back: back on version=1"));
  absl::SleepFor(absl::Milliseconds(300));
  StopLoad();
  v1::Release r = Record();
  EXPECT_EQ(r.state(), "rolled_back");
  EXPECT_EQ(r.groups(0).state(), "rolled_back");
  EXPECT_EQ(r.groups(1).state(), "waiting");
  EXPECT_EQ(Route(), "");
  for (const auto& [address, version] : Versions()) EXPECT_EQ(version, "1") << address;
  EXPECT_EQ(FailedCalls(), 0);
  // Nothing left to take over.
  EXPECT_EQ(Ctl({"release", "resume", kEcho}, &out), 1);
  EXPECT_THAT(out, HasSubstr("NOT_FOUND: no release of formica.test.Echo is under way"));
}

TEST_F(ReleaseTest, AFailedDeployRollsBack) {
  std::string out;
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1,rest:3",
                 "--deploy", "exit 3"},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("group beta failed: the deploy command 'exit 3' exited with 3"));
  EXPECT_THAT(out, HasSubstr("rolled back: back on version=1"));
  EXPECT_EQ(Record().state(), "rolled_back");
  EXPECT_EQ(Route(), "");
}

TEST_F(ReleaseTest, BadPlansAreRefusedNamingWhatIsWrong) {
  std::string out;
  std::ofstream(dir_.File("typo.yaml")) << "service: " << kEcho << "\nversion: \"2\"\n"
                                        << "deploy: ./d.sh\ngroups: [beta:1]\nbkae: 1s\n";
  EXPECT_EQ(Ctl({"release", "start", "--plan", dir_.File("typo.yaml")}, &out), 1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(out, HasSubstr("bkae"));
  EXPECT_THAT(out, HasSubstr("typo.yaml"));
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: the deploy command is missing"));
  EXPECT_EQ(
      Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta", "--deploy", "true"},
          &out),
      1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: group 'beta' is not NAME:COUNT or NAME:KEY=VALUE"));
  EXPECT_EQ(
      Ctl({"release", "start", kEcho, "--version", "1", "--groups", "beta:1", "--deploy", "true"},
          &out),
      1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: the providers of formica.test.Echo run no version "
                             "but the new one"));
  auto odd = StartEcho({"--tag", "version=0.9", "--pid-dir", pids_});
  ASSERT_TRUE(AwaitProviders(5));
  EXPECT_EQ(
      Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1", "--deploy", "true"},
          &out),
      1);
  EXPECT_THAT(out, HasSubstr("the providers of formica.test.Echo run 0.9 (1), 1 (4); name the "
                             "version to replace"));
  // One group's settings: a group of the plan, known keys, valid values.
  std::ofstream(dir_.File("groups.yaml")) << "version: \"2\"\ndeploy: ./d.sh\n"
                                          << "groups: [beta:1, rest:3]\n"
                                          << "group:\n  betta:\n    bake: 1s\n";
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--plan", dir_.File("groups.yaml")}, &out), 1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: " + dir_.File("groups.yaml") +
                             ": group.betta: there is no group 'betta' (the groups: beta, rest)"));
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1,rest:3",
                 "--group", "nope:bake=1s", "--deploy", "true"},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: --group nope:bake=1s: there is no group 'nope'"));
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1", "--group",
                 "beta:bake=soon", "--deploy", "true"},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: --group beta: bake wants a duration up to 24h "
                             "(e.g. 5m), not 'soon'"));
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1", "--group",
                 "beta:bak=1s", "--deploy", "true"},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: --group beta: unknown setting 'bak'"));
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1", "--group",
                 "beta:min-calls=0", "--deploy", "true"},
                &out),
            1);
  EXPECT_THAT(out, HasSubstr("--group beta: min-calls wants a positive number, not '0'"));
  EXPECT_EQ(Ctl({"release", "start", kEcho, "--version", "2", "--groups", "beta:1", "--analysis",
                 "prometheus=localhost", "--deploy", "true"},
                &out),
            2);
  EXPECT_THAT(out, HasSubstr("--analysis wants stats or prometheus=http://HOST:PORT, not "
                             "'prometheus=localhost'"));
  EXPECT_EQ(Record().service(), "");  // nothing was started
}

}  // namespace
}  // namespace formica::rpc::testing
