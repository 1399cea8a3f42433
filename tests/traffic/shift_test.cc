// formicactl traffic shift against a real dsrd, echo providers and a caller
// under steady load: steps reach their split, a failing target is stopped
// and the route restored, operators pause, resume and abort it from another
// terminal, and a crashed controller's shift is taken over.
#include <gmock/gmock.h>

#include <map>

#include "traffic_fixture.h"

namespace formica::rpc::testing {
namespace {

using ::testing::HasSubstr;

// Every version of the echo service's route the registry pushed, with when.
class RouteLog {
 public:
  void Record(const registry::ConfigValue& v) {
    absl::MutexLock lock(&mu_);
    changes_.push_back({absl::Now(), v.exists ? v.value : ""});
  }
  std::vector<std::pair<absl::Time, std::string>> Changes() {
    absl::MutexLock lock(&mu_);
    return changes_;
  }
  bool WaitFor(const std::string& route, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto seen = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !changes_.empty() && changes_.back().second == route;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&seen), timeout);
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<absl::Time, std::string>> changes_ ABSL_GUARDED_BY(mu_);
};

class ShiftTest : public TrafficTest {
 protected:
  void WatchRoute() {
    watch_ = *registry_->WatchConfig(std::string("rpc/routes/") + kEcho,
                                     [this](const registry::ConfigValue& v) { log_.Record(v); });
  }
  // The target's percent in a route text ("color=green:30,..." -> 30).
  static int GreenPercent(const std::string& route) {
    auto routes = ParseTagRoutes(route);
    if (!routes.ok()) return -1;
    for (const TagRoute& r : *routes) {
      if (r.value == "green") return r.percent;
    }
    return 0;
  }
  RouteLog log_;
  uint64_t watch_ = 0;
};

TEST_F(ShiftTest, EachStepReachesItsSplitAndTheShiftEndsOnTheTarget) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  WatchRoute();
  StartLoad();
  absl::SleepFor(absl::Milliseconds(500));
  ASSERT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "25", "--every",
                 "1500ms", "--min-calls", "50"},
                &out),
            0)
      << out;
  StopLoad();
  EXPECT_THAT(out, HasSubstr("done: all calls on color=green"));
  EXPECT_EQ(Route(), "color=green:100");
  // Each step's split, measured over the calls that ended while it held,
  // from 300 ms after the push (callers apply it on the push).
  std::vector<std::pair<absl::Time, std::string>> changes = log_.Changes();
  std::vector<LoadCall> calls = Load();
  std::vector<int> steps;
  for (size_t i = 0; i < changes.size(); ++i) {
    int percent = GreenPercent(changes[i].second);
    absl::Time from = changes[i].first + absl::Milliseconds(300);
    absl::Time to = i + 1 < changes.size() ? changes[i + 1].first : absl::InfiniteFuture();
    int total = 0, to_green = 0, failed = 0;
    for (const LoadCall& c : calls) {
      if (c.at < from || c.at >= to) continue;
      ++total;
      failed += c.code != absl::StatusCode::kOk;
      to_green += c.served_by == Address(*green);
    }
    if (percent > 0) steps.push_back(percent);
    EXPECT_EQ(failed, 0) << changes[i].second;
    if (total < 100) continue;  // the last one: the load stopped
    // sd of the share over >= 100 calls is at most 0.05; 3 sd.
    EXPECT_NEAR(100.0 * to_green / total, percent, 15) << changes[i].second << " over " << total;
  }
  EXPECT_EQ(steps, (std::vector<int>{25, 50, 75, 100}));
  ASSERT_EQ(Ctl({"traffic", "status", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("shift of formica.test.Echo to color=green: done at 100%"));
}

TEST_F(ShiftTest, ATargetThatFailsIsStoppedAndTheSplitRestoredWithNoFailureAfter) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green", "--fail-percent", "20"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  WatchRoute();
  StartLoad();
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "20", "--every",
                 "1500ms", "--min-calls", "30"},
                &out),
            1)
      << out;
  EXPECT_THAT(out, HasSubstr("failed: target failed"));
  EXPECT_THAT(out, HasSubstr("route restored to 'color=blue:100'"));
  // Stopped at its first step: it never went further.
  for (const auto& [at, route] : log_.Changes()) EXPECT_LE(GreenPercent(route), 20) << route;
  EXPECT_EQ(Route(), "color=blue:100");
  ASSERT_TRUE(log_.WaitFor("color=blue:100", absl::Seconds(5)));
  absl::Time restored = absl::Now() + absl::Milliseconds(300);  // the callers' push
  absl::SleepFor(absl::Seconds(2));
  StopLoad();
  int after = 0, failed_after = 0;
  for (const LoadCall& c : Load()) {
    if (c.at < restored) continue;
    ++after;
    failed_after += c.code != absl::StatusCode::kOk;
  }
  EXPECT_GT(after, 200);
  EXPECT_EQ(failed_after, 0);
  ASSERT_EQ(Ctl({"traffic", "status", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("failed at 20%"));
}

// Green answers every call, 30 ms late: its p99 is judged against blue's
// and the shift stops at its first step.
TEST_F(ShiftTest, ATargetSlowerThanTheOthersIsStoppedOnItsP99) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green", "--delay-ms", "30"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  StartLoad();
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "50", "--every", "2s",
                 "--min-calls", "30"},
                &out),
            1)
      << out;
  EXPECT_THAT(out, HasSubstr("failed: target p99"));
  EXPECT_THAT(out, HasSubstr("route restored to 'color=blue:100'"));
  EXPECT_EQ(Route(), "color=blue:100");
  StopLoad();
}

// Green fails one call in five in room b only: 10% of all its calls, under
// the 15-point limit as a whole, but judged per room, room b fails.
TEST_F(ShiftTest, APerRoomVerdictStopsATargetFailingInOneRoom) {
  auto blue_a = StartEcho({"--tag", "color=blue", "--tag", "room=a"});
  auto blue_b = StartEcho({"--tag", "color=blue", "--tag", "room=b"});
  auto green_a = StartEcho({"--tag", "color=green", "--tag", "room=a"});
  auto green_b = StartEcho({"--tag", "color=green", "--tag", "room=b", "--fail-percent", "20"});
  ASSERT_TRUE(AwaitProviders(4));
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  StartLoad();
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "50", "--every", "2s",
                 "--min-calls", "30", "--max-failure-increase", "15", "--per-room", "room"},
                &out),
            1)
      << out;
  EXPECT_THAT(out, HasSubstr("failed: room=b: target failed"));
  EXPECT_THAT(out, HasSubstr("| room=a: target"));
  EXPECT_THAT(out, HasSubstr("route restored to 'color=blue:100'"));
  EXPECT_EQ(Route(), "color=blue:100");
  ASSERT_EQ(Ctl({"traffic", "status", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("analysis on the providers' Stats, per room"));
  EXPECT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=green", "--per-room", "room=a"}, &out),
            2);
  EXPECT_THAT(out, HasSubstr("--per-room wants a tag key (e.g. room, or zone), not 'room=a'"));
}

TEST_F(ShiftTest, OperatorsPauseResumeAndAbortFromAnotherTerminal) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  WatchRoute();
  StartLoad();
  auto controller = StartCtl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "10",
                              "--every", "1s", "--min-calls", "20"});
  ASSERT_TRUE(log_.WaitFor("color=green:10,color=blue:90", absl::Seconds(10)));
  ASSERT_EQ(Ctl({"traffic", "pause", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("shift of formica.test.Echo: paused"));
  std::string held = Route();
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(Route(), held) << "the route moved while paused";
  // A hand-made set is refused while a shift owns the route.
  EXPECT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("FAILED_PRECONDITION: a shift of formica.test.Echo to color=green is "
                             "paused"));
  ASSERT_EQ(Ctl({"traffic", "resume", kEcho}, &out), 0) << out;
  ASSERT_TRUE(log_.WaitFor(held == "color=green:10,color=blue:90" ? "color=green:20,color=blue:80"
                                                                  : "color=green:30,color=blue:70",
                           absl::Seconds(10)))
      << Route();
  ASSERT_EQ(Ctl({"traffic", "abort", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("aborted at"));
  EXPECT_EQ(controller->Wait(absl::Seconds(10)), 1);
  EXPECT_THAT(controller->Output(), HasSubstr("aborted: aborted by an operator; route restored"));
  EXPECT_EQ(Route(), "color=blue:100");
  // No shift to control any more.
  EXPECT_EQ(Ctl({"traffic", "pause", kEcho}, &out), 1);
  EXPECT_THAT(out,
              HasSubstr("no shift of formica.test.Echo is under way (the last one is aborted)"));
}

TEST_F(ShiftTest, AShiftWhoseControllerDiedIsTakenOverWhereItStood) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  WatchRoute();
  StartLoad();
  auto controller = StartCtl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "25",
                              "--every", "1s", "--min-calls", "20"});
  ASSERT_TRUE(log_.WaitFor("color=green:50,color=blue:50", absl::Seconds(15)));
  controller->Kill();
  // Its record says it is running: a second controller does not barge in
  // while the first may be alive...
  EXPECT_EQ(Ctl({"traffic", "shift", kEcho}, &out), 1);
  EXPECT_THAT(out, HasSubstr("FAILED_PRECONDITION: the shift of formica.test.Echo is run by"));
  // ...nor does a new shift start over it.
  EXPECT_EQ(Ctl({"traffic", "shift", kEcho, "--to", "color=blue"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("is running at 50%; take it over"));
  EXPECT_EQ(Route(), "color=green:50,color=blue:50");
  absl::SleepFor(absl::Seconds(5));  // no heartbeat since: the controller is gone
  ASSERT_EQ(Ctl({"traffic", "shift", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("taking over the shift of formica.test.Echo to color=green at 50%"));
  EXPECT_THAT(out, HasSubstr("done: all calls on color=green"));
  // It went on from where it stood: never back below 50%.
  bool killed_seen = false;
  for (const auto& [at, route] : log_.Changes()) {
    if (route == "color=green:50,color=blue:50") killed_seen = true;
    if (killed_seen) {
      EXPECT_GE(GreenPercent(route), 50) << route;
    }
  }
  EXPECT_EQ(Route(), "color=green:100");
  StopLoad();
  for (const LoadCall& c : Load()) EXPECT_EQ(c.code, absl::StatusCode::kOk);
}

TEST_F(ShiftTest, AnAbortWithNoControllerRestoresTheRouteItself) {
  auto blue = StartEcho({"--tag", "color=blue"});
  auto green = StartEcho({"--tag", "color=green"});
  ASSERT_TRUE(AwaitProviders(2));
  std::string out;
  ASSERT_EQ(Ctl({"traffic", "set", kEcho, "color=blue:100"}, &out), 0) << out;
  WatchRoute();
  StartLoad();
  auto controller = StartCtl({"traffic", "shift", kEcho, "--to", "color=green", "--step", "30",
                              "--every", "1s", "--min-calls", "20"});
  ASSERT_TRUE(log_.WaitFor("color=green:30,color=blue:70", absl::Seconds(10)));
  controller->Kill();
  absl::SleepFor(absl::Seconds(5));
  ASSERT_EQ(Ctl({"traffic", "abort", kEcho}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("aborted at 30%"));
  EXPECT_EQ(Route(), "color=blue:100");
}

}  // namespace
}  // namespace formica::rpc::testing
