// formicactl: release start, status, continue, rollback and resume. The
// controller replaces a service's providers group by group: it runs the
// deploy command for a group's old instances, waits for the new version's
// instances to come up, lets them serve, judges them against the old ones,
// and goes on (or waits for `release continue`). Its record lives in the
// registry ("release/<service>"), so any operator sees it, can continue or
// roll it back, and a dead controller's release is taken over. See
// docs/release.md.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "release.h"

namespace formica::ctl {
namespace {

namespace v1 = formica::rpc::v1;
using Record = StoredRecord<v1::Release>;

constexpr absl::Duration kPoll = absl::Milliseconds(200);
constexpr absl::Duration kHeartbeat = absl::Seconds(1);
constexpr absl::Duration kStale = kReleaseStale;
// A new instance whose weight did not change for this long is warmed up
// (rpc::Server republishes a ramping weight every warmup_step, 1 s by default).
constexpr absl::Duration kSteady = absl::Seconds(2);
// How long the old instances may take to show weight 0 once asked to drain,
// and the time then left to the calls they already took.
constexpr absl::Duration kDrainWait = absl::Seconds(10);
constexpr absl::Duration kDrainGrace = absl::Milliseconds(500);

bool Live(const v1::Release& r) { return ReleaseLive(r); }

// A group's own bake time and thresholds (records written before groups
// had them: the release's).
int64_t BakeMsOf(const v1::Release& r, const v1::ReleaseGroup& g) {
  return g.min_calls() > 0 ? g.bake_ms() : r.bake_ms();
}
Thresholds LimitsOf(const v1::Release& r, const v1::ReleaseGroup& g) {
  if (g.min_calls() > 0) {
    return {g.max_failure_rate_increase(), g.max_p99_ratio(), g.p99_slack_ms(), g.min_calls()};
  }
  return {r.max_failure_rate_increase(), r.max_p99_ratio(), r.p99_slack_ms(), r.min_calls()};
}

void Say(const std::string& line) {
  std::printf("%s %s\n", absl::FormatTime("%H:%M:%S", absl::Now(), absl::UTCTimeZone()).c_str(),
              line.c_str());
  std::fflush(stdout);
}

std::string Me() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, ":", getpid());
}

class Controller {
 public:
  Controller(TrafficLink& link, Record& record) : link_(link), record_(record) {
    // Checked when the release started; a record edited by hand since
    // falls back on the providers' Stats, and says so.
    if (absl::Status st = link_.UseAnalysis(record_.value.analysis()); !st.ok()) {
      Say(absl::StrCat("analysis on the providers' Stats: ", st.message()));
    }
  }

  // Runs the release in the record to its end; the exit code.
  int Run() {
    v1::Release& r = record_.value;
    for (int i = 0; i < r.groups_size(); ++i) {
      while (true) {
        if (!Checkpoint()) return Ended();
        v1::ReleaseGroup& g = *r.mutable_groups(i);
        absl::Status st;
        if (g.state() == "done") break;
        if (g.state() == "waiting") {
          st = Choose(i);
        } else if (g.state() == "releasing") {
          st = Deploy(i);
        } else if (g.state() == "baking") {
          st = Bake(i);
        } else if (g.state() == "awaiting") {
          if (r.state() == "continuing") {
            Finish(g, "done", g.message());
            r.set_state("running");
            continue;
          }
          if (r.state() != "awaiting") {
            r.set_state("awaiting");
            r.set_message(absl::StrCat("group ", g.name(),
                                       " released; go on with formicactl release continue ",
                                       r.service()));
            Say(r.message());
          }
          absl::SleepFor(kHeartbeat);
          continue;
        } else {
          st = absl::FailedPreconditionError(absl::StrCat("group ", g.name(), " is ", g.state()));
        }
        if (absl::IsCancelled(st)) return Ended();  // rollback asked meanwhile
        if (!st.ok()) {
          Finish(g, "failed", std::string(st.message()));
          Say(absl::StrCat("group ", g.name(), " failed: ", st.message(), "; rolling back"));
          r.set_state("rolling_back");
          r.set_message(absl::StrCat("group ", g.name(), " failed: ", st.message()));
          return Ended();
        }
      }
    }
    (void)ClearDrainList();
    r.set_state("done");
    r.set_message(absl::StrCat("every group runs ", r.version_key(), "=", r.version()));
    (void)SaveMerging();
    Say(absl::StrCat("release of ", r.service(), " ", r.version(), " done"));
    return 0;
  }

  // The previous version's traffic at once, then its deploy for every
  // group that was touched, newest first; then the route from before.
  int RollBack() {
    v1::Release& r = record_.value;
    if (absl::Status st = RouteToPrevious(); !st.ok()) Say(absl::StrCat("route: ", st.message()));
    Say(absl::StrCat("rolling back: calls go to ", r.version_key(), "=", r.previous()));
    std::set<std::string> claimed;
    for (const auto& g : r.groups())
      claimed.insert(g.new_instances().begin(), g.new_instances().end());
    for (int i = r.groups_size() - 1; i >= 0; --i) {
      v1::ReleaseGroup& g = *r.mutable_groups(i);
      if (g.state() == "waiting" || g.state() == "rolled_back") continue;
      absl::StatusOr<std::vector<ProviderInfo>> providers = link_.Providers(r.service());
      if (!providers.ok()) return Fail(providers.status());
      // The new version's instances this group brought (or, when it failed
      // before they were recorded, any the other groups do not claim).
      std::vector<std::string> replace;
      for (const ProviderInfo& p : *providers) {
        if (!p.Carries(r.version_key(), r.version())) continue;
        bool mine = std::find(g.new_instances().begin(), g.new_instances().end(), p.address) !=
                    g.new_instances().end();
        if (mine || (g.new_instances().empty() && claimed.count(p.address) == 0)) {
          replace.push_back(p.address);
        }
      }
      if (!replace.empty()) {
        int old_before = Count(*providers, r.previous());
        absl::Status st = Drain(g.name(), replace, /*rolling_back=*/true);
        if (!st.ok()) return Fail(st);
        Say(absl::StrCat("group ", g.name(), ": deploying ", r.previous(), " over ",
                         absl::StrJoin(replace, " ")));
        st = RunDeploy(g.name(), r.previous(), replace);
        if (st.ok()) {
          st = AwaitUp(replace, r.previous(), old_before + static_cast<int>(replace.size()),
                       nullptr);
        }
        if (!st.ok()) return Fail(st);
      }
      Finish(g, "rolled_back", "");
      (void)SaveMerging();
    }
    absl::Status restored = RestoreRoute();
    (void)ClearDrainList();  // what a failed deploy left drained comes back
    r.set_state("rolled_back");
    r.set_message(absl::StrCat(
        "back on ", r.version_key(), "=", r.previous(),
        restored.ok() ? "" : absl::StrCat("; the route was not restored: ", restored.message())));
    (void)SaveMerging();
    Say(absl::StrCat("rolled back: ", r.message()));
    return 0;
  }

  // Sends every call to the previous version (forcing it over the route).
  absl::Status RouteToPrevious() { return ctl::RouteToPrevious(link_, record_.value); }

 private:
  int Ended() {
    if (record_.value.state() == "rolling_back") {
      int code = RollBack();
      return code == 0 ? 1 : code;  // the release did not go through
    }
    return 1;
  }

  int Fail(const absl::Status& st) {
    record_.value.set_state("failed");
    record_.value.set_message(std::string(st.message()));
    (void)SaveMerging();
    Say(absl::StrCat("failed: ", st.message()));
    return 1;
  }

  void Finish(v1::ReleaseGroup& g, const std::string& state, const std::string& message) {
    g.set_state(state);
    g.set_message(message);
    g.set_ended_unix_ms(absl::ToUnixMillis(absl::Now()));
  }

  int Count(const std::vector<ProviderInfo>& providers, const std::string& version) {
    int n = 0;
    for (const ProviderInfo& p : providers) n += p.Carries(record_.value.version_key(), version);
    return n;
  }

  // Saves the record; an operator's request (continuing, rolling_back)
  // made meanwhile is kept.
  absl::Status SaveMerging() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      record_.value.set_controller(controller_);
      absl::Status st = record_.Save();
      if (st.ok()) {
        last_save_ = absl::Now();
        return st;
      }
      if (!absl::IsFailedPrecondition(st)) return st;
      v1::Release mine = record_.value;
      if (absl::StatusOr<bool> loaded = record_.Load(); !loaded.ok() || !*loaded) {
        return absl::AbortedError("the release's record was removed");
      }
      std::string theirs = record_.value.state();
      record_.value = mine;
      if (theirs == "continuing" || theirs == "rolling_back") record_.value.set_state(theirs);
    }
    return absl::AbortedError("the release's record kept changing");
  }

  // Heartbeat; false when a rollback was asked.
  bool Checkpoint() {
    if (absl::Now() - last_save_ >= kHeartbeat || record_.value.updated_unix_ms() == 0) {
      (void)SaveMerging();
    }
    return record_.value.state() != "rolling_back";
  }

  // Waits `d`, heartbeating; CANCELLED when a rollback was asked.
  absl::Status Wait(absl::Duration d) {
    absl::Time end = absl::Now() + d;
    while (absl::Now() < end) {
      absl::SleepFor(std::min(kPoll, end - absl::Now()));
      if (!Checkpoint()) return absl::CancelledError("rollback asked");
    }
    return absl::OkStatus();
  }

  // Picks the group's old instances.
  absl::Status Choose(int i) {
    v1::Release& r = record_.value;
    v1::ReleaseGroup& g = *r.mutable_groups(i);
    absl::StatusOr<std::vector<ProviderInfo>> providers = link_.Providers(r.service());
    if (!providers.ok()) return providers.status();
    std::string key = g.selector().substr(0, g.selector().find('='));
    std::string value = g.selector().substr(g.selector().find('=') + 1);
    std::map<std::string, std::string> zone_of;  // old instance -> its zone
    for (const ProviderInfo& p : *providers) {
      if (!p.Carries(r.version_key(), r.previous())) continue;
      if (!g.selector().empty() && !p.Carries(key, value)) continue;
      zone_of[p.address] = p.zone.empty() ? "-" : p.zone;
    }
    std::vector<std::string> chosen;
    for (const auto& [address, zone] : zone_of) chosen.push_back(address);
    if (g.count() > 0 && static_cast<int>(chosen.size()) > g.count()) chosen.resize(g.count());
    g.clear_instances();
    g.clear_zones();
    std::set<std::string> zones;
    for (const std::string& a : chosen) {
      g.add_instances(a);
      zones.insert(zone_of[a]);
    }
    for (const std::string& z : zones) g.add_zones(z);
    g.set_state("releasing");
    g.set_started_unix_ms(absl::ToUnixMillis(absl::Now()));
    g.set_message(chosen.empty() ? "no old instance left for it" : "");
    if (r.state() == "awaiting") r.set_state("running");
    (void)SaveMerging();
    Say(absl::StrCat("group ", g.name(), ": ", chosen.size(), " instance(s) ",
                     absl::StrJoin(chosen, " ")));
    return absl::OkStatus();
  }

  // Deploys the group (unless its new instances are already up, as after a
  // controller's restart) and waits for them.
  absl::Status Deploy(int i) {
    v1::Release& r = record_.value;
    v1::ReleaseGroup& g = *r.mutable_groups(i);
    int expected = 0;  // new instances once this group is up
    for (int k = 0; k <= i; ++k) expected += r.groups(k).instances_size();
    std::vector<std::string> old(g.instances().begin(), g.instances().end());
    absl::StatusOr<std::vector<ProviderInfo>> providers = link_.Providers(r.service());
    if (!providers.ok()) return providers.status();
    bool done_before = Count(*providers, r.version()) >= expected;
    for (const ProviderInfo& p : *providers) {
      done_before = done_before && std::find(old.begin(), old.end(), p.address) == old.end();
    }
    if (!old.empty() && !done_before) {
      if (absl::Status st = Drain(g.name(), old); !st.ok()) return st;
      Say(absl::StrCat("group ", g.name(), ": deploying ", r.version(), " over ",
                       absl::StrJoin(old, " ")));
      if (absl::Status st = RunDeploy(g.name(), r.version(), old); !st.ok()) return st;
    }
    std::vector<std::string> fresh;
    if (absl::Status st = AwaitUp(old, r.version(), expected, &fresh); !st.ok()) return st;
    (void)EditDrainList(old, /*add=*/false);
    std::set<std::string> earlier;
    for (int k = 0; k < i; ++k) {
      earlier.insert(r.groups(k).new_instances().begin(), r.groups(k).new_instances().end());
    }
    g.clear_new_instances();
    for (const std::string& a : fresh) {
      if (earlier.count(a) == 0) g.add_new_instances(a);
    }
    g.set_state("baking");
    (void)SaveMerging();
    Say(absl::StrCat("group ", g.name(), ": up ", absl::StrJoin(g.new_instances(), " "),
                     "; baking ", absl::FormatDuration(absl::Milliseconds(BakeMsOf(r, g)))));
    return absl::OkStatus();
  }

  // Lets the group serve for the bake time and judges the new version
  // against the old one; repeats while there are too few calls to judge.
  absl::Status Bake(int i) {
    v1::Release& r = record_.value;
    v1::ReleaseGroup& g = *r.mutable_groups(i);
    Thresholds limits = LimitsOf(r, g);
    const int64_t bake_ms = BakeMsOf(r, g);
    // This group's readings, the window's start last: the old version's
    // p99 may be widened back over them (Analyse).
    std::vector<Served> readings;
    while (true) {
      absl::StatusOr<std::vector<ProviderInfo>> providers = link_.Providers(r.service());
      if (!providers.ok()) return providers.status();
      if (readings.size() == kMaxReadings) readings.erase(readings.begin());
      readings.push_back(ReadServed(link_, r.service(), *providers));
      if (absl::Status st = Wait(absl::Milliseconds(bake_ms)); !st.ok()) return st;
      absl::Status problem;
      Analysis a = AnalysePerRoom(limits, r.per_room(), r.version_key(), r.version(), *providers,
                                  readings, ReadServed(link_, r.service(), *providers, &problem));
      if (a.verdict == Verdict::kNoData && !problem.ok()) {
        a.summary = absl::StrCat(a.summary, " (", problem.message(), ")");
      }
      if (a.verdict == Verdict::kFail) return absl::AbortedError(a.summary);
      g.set_message(a.summary);
      if (a.verdict == Verdict::kPass) break;
      Say(absl::StrCat("group ", g.name(), ": ", a.summary));
      (void)SaveMerging();
    }
    Say(absl::StrCat("group ", g.name(), ": passed: ", g.message()));
    if (r.auto_continue()) {
      Finish(g, "done", g.message());
    } else {
      g.set_state("awaiting");
    }
    (void)SaveMerging();
    return absl::OkStatus();
  }

  // Runs the deploy command with the group's fields filled in; its output
  // is formicactl's. Heartbeats while it runs; fails after ready_timeout.
  absl::Status RunDeploy(const std::string& group, const std::string& version,
                         const std::vector<std::string>& instances) {
    const v1::Release& r = record_.value;
    std::string command =
        absl::StrReplaceAll(r.deploy(), {{"{service}", r.service()},
                                         {"{group}", group},
                                         {"{version}", version},
                                         {"{instances}", absl::StrJoin(instances, " ")}});
    std::fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return absl::InternalError("cannot start the deploy command");
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    absl::Time deadline = absl::Now() + absl::Milliseconds(r.ready_timeout_ms());
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (absl::Now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return absl::DeadlineExceededError(
            absl::StrCat("the deploy command '", command, "' ran longer than the ready timeout"));
      }
      absl::SleepFor(kPoll);
      if (absl::Now() - last_save_ >= kHeartbeat) (void)SaveMerging();
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return absl::AbortedError(
          absl::StrCat("the deploy command '", command, "' exited with ",
                       WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status)));
    }
    return absl::OkStatus();
  }

  // Waits until `gone` are out of the registry and `want` instances of
  // `version` are up, healthy and done warming up (their published weight
  // steady for kSteady, longer than rpc::Server's warm-up republish step).
  // `up` gets the version's instances.
  absl::Status AwaitUp(const std::vector<std::string>& gone, const std::string& version, int want,
                       std::vector<std::string>* up) {
    const v1::Release& r = record_.value;
    absl::Time deadline = absl::Now() + absl::Milliseconds(r.ready_timeout_ms());
    std::map<std::string, std::pair<int32_t, absl::Time>> weights;  // since when at this weight
    std::string last;
    while (absl::Now() < deadline) {
      absl::StatusOr<std::vector<ProviderInfo>> providers = link_.Providers(r.service());
      if (providers.ok()) {
        std::vector<std::string> ready, waiting;
        bool old_left = false;
        for (const ProviderInfo& p : *providers) {
          old_left = old_left || std::find(gone.begin(), gone.end(), p.address) != gone.end();
          if (!p.Carries(r.version_key(), version)) continue;
          auto& w = weights[p.address];
          if (w.first != p.weight || w.second == absl::Time()) w = {p.weight, absl::Now()};
          bool steady = absl::Now() - w.second >= kSteady;
          (steady && link_.Healthy(p.address) ? ready : waiting).push_back(p.address);
        }
        if (!old_left && static_cast<int>(ready.size()) >= want) {
          if (up != nullptr) *up = ready;
          return absl::OkStatus();
        }
        last = absl::StrCat(ready.size(), " of ", want, " instance(s) of ", version, " ready",
                            old_left ? ", old ones still registered" : "");
      }
      if (absl::Status st = Wait(kPoll); !st.ok() && up != nullptr) return st;
    }
    return absl::DeadlineExceededError(absl::StrCat("not up within the ready timeout: ", last));
  }

  // Takes `instances` out of rotation before their deploy: lists them in
  // the registry's drain list ("rpc/drain/<service>"), which their
  // rpc::Server follows by publishing weight 0, waits until the registry
  // shows them at 0 (or gone), then leaves the calls they took a moment to
  // finish. A provider that does not follow (not an rpc::Server) is
  // deployed over after kDrainWait, as before: the deploy command's stop
  // drains it.
  // `rolling_back`: run by the rollback itself, which a rollback request
  // does not interrupt.
  absl::Status Drain(const std::string& group, const std::vector<std::string>& instances,
                     bool rolling_back = false) {
    auto wait = [&](absl::Duration d) {
      if (!rolling_back) return Wait(d);
      for (absl::Time end = absl::Now() + d; absl::Now() < end;) {
        absl::SleepFor(std::min(kPoll, end - absl::Now()));
        if (absl::Now() - last_save_ >= kHeartbeat) (void)SaveMerging();
      }
      return absl::OkStatus();
    };
    const v1::Release& r = record_.value;
    if (absl::Status st = EditDrainList(instances, /*add=*/true); !st.ok()) return st;
    absl::Time deadline = absl::Now() + kDrainWait;
    std::vector<std::string> serving;
    while (true) {
      serving.clear();
      absl::StatusOr<std::vector<ProviderInfo>> providers = link_.Providers(r.service());
      if (providers.ok()) {
        for (const ProviderInfo& p : *providers) {
          bool mine = std::find(instances.begin(), instances.end(), p.address) != instances.end();
          if (mine && p.weight > 0) serving.push_back(p.address);
        }
      }
      if (providers.ok() && serving.empty()) break;
      if (absl::Now() > deadline) {
        Say(absl::StrCat("group ", group, ": ", absl::StrJoin(serving, " "),
                         " still take calls after ", absl::FormatDuration(kDrainWait),
                         "; deploying anyway"));
        return absl::OkStatus();
      }
      if (absl::Status st = wait(kPoll); !st.ok()) return st;
    }
    Say(absl::StrCat("group ", group, ": drained ", absl::StrJoin(instances, " "),
                     " (weight 0 at the registry)"));
    return wait(kDrainGrace);
  }

  // Adds `addresses` to the drain list, or takes them out (compare-and-set).
  absl::Status EditDrainList(const std::vector<std::string>& addresses, bool add) {
    std::string key = absl::StrCat("rpc/drain/", record_.value.service());
    for (int attempt = 0; attempt < 5; ++attempt) {
      absl::StatusOr<Entry> now = link_.Get(key);
      if (!now.ok()) return now.status();
      std::set<std::string> listed;
      for (absl::string_view a : absl::StrSplit(now->value, ',', absl::SkipWhitespace())) {
        listed.insert(std::string(a));
      }
      for (const std::string& a : addresses) {
        if (add) {
          listed.insert(a);
        } else {
          listed.erase(a);
        }
      }
      std::string value = absl::StrJoin(listed, ",");
      if (value == now->value) return absl::OkStatus();
      absl::Status st = value.empty() ? link_.Delete(key, now->version)
                                      : link_.Put(key, value, now->version).status();
      if (!absl::IsFailedPrecondition(st)) return st;
    }
    return absl::AbortedError("the drain list kept changing");
  }

  absl::Status ClearDrainList() {
    std::string key = absl::StrCat("rpc/drain/", record_.value.service());
    absl::StatusOr<Entry> now = link_.Get(key);
    if (!now.ok()) return now.status();
    if (now->version == 0) return absl::OkStatus();
    return link_.Delete(key, now->version);
  }

  absl::Status RestoreRoute() {
    const v1::Release& r = record_.value;
    for (int attempt = 0; attempt < 5; ++attempt) {
      absl::StatusOr<Entry> now = link_.Get(RouteKey(r.service()));
      if (!now.ok()) return now.status();
      absl::Status st;
      if (r.original_route().empty()) {
        if (now->version == 0) return absl::OkStatus();
        st = link_.Delete(RouteKey(r.service()), now->version);
      } else {
        if (now->value == r.original_route()) return absl::OkStatus();
        st = link_.Put(RouteKey(r.service()), r.original_route(), now->version).status();
      }
      if (!absl::IsFailedPrecondition(st)) return st;
    }
    return absl::AbortedError("the route kept changing");
  }

  TrafficLink& link_;
  Record& record_;
  const std::string controller_ = Me();
  absl::Time last_save_ = absl::InfinitePast();
};

void PrintStatus(const v1::Release& r) {
  std::printf("release of %s: %s=%s -> %s, %s\n", r.service().c_str(), r.version_key().c_str(),
              r.previous().c_str(), r.version().c_str(), r.state().c_str());
  if (!r.message().empty()) std::printf("  %s\n", r.message().c_str());
  std::printf("  %s; analysis on %s%s; controller %s, updated %s ago\n",
              r.auto_continue() ? "goes on by itself" : "waits for release continue",
              r.analysis().empty() ? "the providers' Stats" : r.analysis().c_str(),
              r.per_room().empty() ? "" : absl::StrCat(", per ", r.per_room()).c_str(),
              r.controller().c_str(), Ago(r.updated_unix_ms()).c_str());
  // Each group's instances by where they stand: waiting (not started),
  // releasing (deploying, baking, awaiting continue), done, failed.
  std::printf("%-10s %-12s %-10s %7s %9s %4s %6s  %-19s %-19s %-6s %-22s %s\n", "GROUP", "STATE",
              "ROOMS", "WAITING", "RELEASING", "DONE", "FAILED", "STARTED", "ENDED", "BAKE",
              "THRESHOLDS", "NOTE");
  auto when = [](int64_t ms) {
    return ms == 0 ? std::string("-")
                   : absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(ms),
                                      absl::UTCTimeZone());
  };
  for (const v1::ReleaseGroup& g : r.groups()) {
    int n = g.state() == "waiting" ? g.count() : g.instances_size();
    const std::string& st = g.state();
    bool releasing = st == "releasing" || st == "baking" || st == "awaiting";
    std::string rooms = g.zones().empty() ? "-" : absl::StrJoin(g.zones(), ",");
    // THRESHOLDS: failure-rate increase (points), p99 ratio, least calls.
    Thresholds l = LimitsOf(r, g);
    std::string limits = absl::StrFormat("+%g %gx n>=%d", l.max_failure_rate_increase,
                                         l.max_p99_ratio, static_cast<int>(l.min_calls));
    std::printf("%-10s %-12s %-10s %7d %9d %4d %6d  %-19s %-19s %-6s %-22s %s\n", g.name().c_str(),
                st.c_str(), rooms.c_str(), st == "waiting" ? n : 0, releasing ? n : 0,
                st == "done" ? n : 0, st == "failed" ? n : 0, when(g.started_unix_ms()).c_str(),
                when(g.ended_unix_ms()).c_str(),
                absl::FormatDuration(absl::Milliseconds(BakeMsOf(r, g))).c_str(), limits.c_str(),
                st == "waiting" && !g.selector().empty()
                    ? absl::StrCat("the old instances with ", g.selector()).c_str()
                    : g.message().c_str());
  }
}

// FAILED_PRECONDITION when a release of `service` is under way.
absl::Status CheckNoRelease(Record& record, const std::string& service) {
  absl::StatusOr<bool> exists = record.Load();
  if (!exists.ok()) return exists.status();
  if (*exists && Live(record.value)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a release of ", service, " to ", record.value.version(), " is ", record.value.state(),
        "; take it over (formicactl release resume ", service, ") or roll it back first"));
  }
  return absl::OkStatus();
}

int Start(const Flags& flags, TrafficLink& link, const std::string& service) {
  if (!service.empty()) {  // before the plan, which a release under way may contradict
    Record under_way(link, ReleaseKey(service), "release");
    if (absl::Status st = CheckNoRelease(under_way, service); !st.ok()) return FailWith(st);
  }
  absl::StatusOr<v1::Release> plan = LoadPlan(flags, service, link);
  if (!plan.ok()) return FailWith(plan.status());
  Record record(link, ReleaseKey(plan->service()), "release");
  if (absl::Status st = CheckNoRelease(record, plan->service()); !st.ok()) return FailWith(st);
  absl::StatusOr<Entry> route = link.Get(RouteKey(plan->service()));
  if (!route.ok()) return FailWith(route.status());
  record.value = *plan;
  record.value.set_original_route(route->value);
  record.value.set_state("running");
  record.value.set_started_unix_ms(absl::ToUnixMillis(absl::Now()));
  if (absl::Status st = record.Save(); !st.ok()) {
    return FailWith(absl::IsFailedPrecondition(st)
                        ? absl::FailedPreconditionError(absl::StrCat(
                              "another release of ", plan->service(), " started meanwhile"))
                        : st);
  }
  std::vector<std::string> names;
  for (const auto& g : plan->groups()) names.push_back(g.name());
  Say(absl::StrCat("release of ", plan->service(), ": ", plan->version_key(), "=", plan->previous(),
                   " (", plan->old_instances(), " instances) -> ", plan->version(), " in groups ",
                   absl::StrJoin(names, ", ")));
  Controller controller(link, record);
  return controller.Run();
}

int Resume(TrafficLink& link, const std::string& service) {
  Record record(link, ReleaseKey(service), "release");
  absl::StatusOr<bool> exists = record.Load();
  if (!exists.ok()) return FailWith(exists.status());
  if (!*exists || !Live(record.value)) {
    return FailWith(absl::NotFoundError(absl::StrCat("no release of ", service, " is under way")));
  }
  if (record.SinceUpdate() < kStale) {
    return FailWith(absl::FailedPreconditionError(absl::StrCat(
        "the release of ", service, " is run by ", record.value.controller(), ", heard from ",
        absl::FormatDuration(absl::Trunc(record.SinceUpdate(), absl::Milliseconds(100))), " ago")));
  }
  Say(absl::StrCat("taking over the release of ", service, " to ", record.value.version(), " (",
                   record.value.state(), ")"));
  Controller controller(link, record);
  if (record.value.state() == "rolling_back") return controller.RollBack();
  return controller.Run();
}

// continue, rollback: a request in the record; the controller follows.
int Ask(const Flags& flags, TrafficLink& link, const std::string& cmd, const std::string& service) {
  absl::StatusOr<ReleaseAsked> asked = AskRelease(link, service, cmd);
  if (!asked.ok()) return FailWith(asked.status());
  const v1::Release& r = asked->record;
  if (cmd == "continue") {
    std::printf(
        "release of %s: continuing%s\n", service.c_str(),
        asked->controller_live ? "" : " (no controller runs it: take it over with release resume)");
    return 0;
  }
  std::printf("release of %s: calls go to %s=%s; rolling back\n", service.c_str(),
              r.version_key().c_str(), r.previous().c_str());
  std::fflush(stdout);
  Record record(link, ReleaseKey(service), "release");
  if (!asked->controller_live) {
    absl::StatusOr<bool> exists = record.Load();
    if (!exists.ok()) return FailWith(exists.status());
    Controller controller(link, record);
    return controller.RollBack();
  }
  absl::Time deadline = absl::Now() + absl::Seconds(flags.timeout_s) +
                        absl::Milliseconds(r.ready_timeout_ms()) * std::max(1, r.groups_size());
  while (absl::Now() < deadline) {
    absl::SleepFor(kPoll);
    if (absl::StatusOr<bool> l = record.Load(); l.ok() && *l && !Live(record.value)) {
      PrintStatus(record.value);
      return record.value.state() == "rolled_back" ? 0 : 1;
    }
  }
  return FailWith(absl::DeadlineExceededError(
      "the controller did not finish the rollback; see formicactl release status"));
}

}  // namespace

int Release(const Flags& flags, const std::vector<std::string>& args) {
  const std::string& cmd = args[1];
  TrafficLink link(flags);
  if (cmd == "start" && args.size() <= 3) {
    return Start(flags, link, args.size() == 3 ? args[2] : "");
  }
  if (args.size() != 3) {
    return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
  }
  const std::string& service = args[2];
  if (cmd == "status") {
    Record record(link, ReleaseKey(service), "release");
    absl::StatusOr<bool> exists = record.Load();
    if (!exists.ok()) return FailWith(exists.status());
    if (!*exists) return FailWith(absl::NotFoundError(absl::StrCat("no release of ", service)));
    if (flags.output == Output::kJson) return PrintJson(record.value);
    PrintStatus(record.value);
    return 0;
  }
  if (cmd == "continue" || cmd == "rollback") return Ask(flags, link, cmd, service);
  if (cmd == "resume") return Resume(link, service);
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

}  // namespace formica::ctl
