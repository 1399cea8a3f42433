// formicactl: traffic shift (the controller) and pause, resume, abort and
// status of a shift. The shift's record lives in the registry
// ("rpc/shifts/<service>", a formica.rpc.v1.TrafficShift as JSON), so any
// terminal can pause or abort it and another controller can take it over.
// See docs/release.md.
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "formica/rpc/v1/rpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "traffic.h"

namespace formica::ctl {
namespace {

namespace v1 = formica::rpc::v1;

constexpr absl::Duration kPoll = absl::Milliseconds(200);
// A controller rewrites the record this often while it runs...
constexpr absl::Duration kHeartbeat = absl::Seconds(1);
// ...so a record not rewritten for this long has no controller.
constexpr absl::Duration kStale = absl::Seconds(5);

bool Live(const v1::TrafficShift& r) {
  return r.state() == "running" || r.state() == "paused" || r.state() == "aborting";
}

std::string Me() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, ":", getpid());
}

void Say(const std::string& line) {
  std::printf("%s %s\n", absl::FormatTime("%H:%M:%S", absl::Now(), absl::UTCTimeZone()).c_str(),
              line.c_str());
  std::fflush(stdout);
}

using Record = StoredRecord<v1::TrafficShift>;

Thresholds ThresholdsOf(const v1::TrafficShift& s) {
  return {s.max_failure_rate_increase(), s.max_p99_ratio(), s.p99_slack_ms(), s.min_calls()};
}

class Controller {
 public:
  Controller(TrafficLink& link, std::string service, Record& record)
      : link_(link), service_(std::move(service)), record_(record) {
    if (absl::Status st = link_.UseAnalysis(record_.value.analysis()); !st.ok()) {
      Say(absl::StrCat("analysis on the providers' Stats: ", st.message()));
    }
  }

  // Runs the shift in the record to its end; the exit code.
  int Run() {
    v1::TrafficShift& s = record_.value;
    key_ = s.target().substr(0, s.target().find('='));
    value_ = s.target().substr(s.target().find('=') + 1);
    absl::StatusOr<std::vector<rpc::TagRoute>> original = rpc::ParseTagRoutes(s.original_route());
    if (!original.ok()) original = std::vector<rpc::TagRoute>{};
    original_ = *original;
    absl::StatusOr<Entry> route = link_.Get(RouteKey(service_));
    if (!route.ok()) return FailWith(route.status());
    route_version_ = route->version;
    bool judged_at_percent = false;
    while (true) {
      if (int code = 0; !Checkpoint(&code)) return code;
      if (s.target_percent() >= 100 && judged_at_percent) {
        s.set_state("done");
        s.set_message(absl::StrCat("all calls on ", s.target(), "; ", s.message()));
        (void)SaveMerging();
        Say(absl::StrCat("done: ", s.message()));
        return 0;
      }
      int next = judged_at_percent || s.target_percent() == 0
                     ? std::min(100, s.target_percent() + s.step_percent())
                     : s.target_percent();
      absl::StatusOr<std::vector<ProviderInfo>> providers = link_.Providers(service_);
      if (!providers.ok()) return FailWith(providers.status());
      // The record first, then the route: a controller that dies between
      // the two leaves a record ahead of the route, never behind it, so the
      // one taking over does not move the calls back.
      s.set_target_percent(next);
      s.set_message(absl::StrCat("at ", next, "%, judging for ",
                                 absl::FormatDuration(absl::Milliseconds(s.every_ms()))));
      (void)SaveMerging();
      if (absl::Status st = ApplyRoute(StepRoute(*providers, original_, key_, value_, next));
          !st.ok()) {
        return Stop("failed", st.message(), /*restore=*/false);
      }
      Say(absl::StrCat(s.target(), " ", next, "%: route ", applied_));
      // One window: read, wait (minding pause and abort), read, judge.
      // The readings of the shift so far, the window's start last: the
      // others' p99 may be widened back over them (Analyse).
      if (readings_.size() == kMaxReadings) readings_.erase(readings_.begin());
      readings_.push_back(ReadServed(link_, service_, *providers));
      absl::Time end = absl::Now() + absl::Milliseconds(s.every_ms());
      bool restart = false;
      while (absl::Now() < end) {
        absl::SleepFor(std::min(kPoll, end - absl::Now()));
        if (absl::Now() - last_save_ >= kHeartbeat) {
          std::string state = s.state();
          if (int code = 0; !Checkpoint(&code)) return code;
          if (state != s.state()) restart = true;  // paused and resumed: judge afresh
        }
        if (restart) break;
      }
      if (restart) {
        judged_at_percent = false;
        continue;
      }
      absl::Status problem;
      Analysis a = AnalysePerRoom(ThresholdsOf(s), s.per_room(), key_, value_, *providers,
                                  readings_, ReadServed(link_, service_, *providers, &problem));
      if (a.verdict == Verdict::kNoData && !problem.ok()) {
        a.summary = absl::StrCat(a.summary, " (", problem.message(), ")");
      }
      if (a.verdict == Verdict::kFail) return Stop("failed", a.summary, /*restore=*/true);
      judged_at_percent = a.verdict == Verdict::kPass;
      s.set_message(a.summary);
      Say(absl::StrCat(judged_at_percent ? "passed: " : "", a.summary));
    }
  }

  // Restores the route the shift started from, whatever it is now.
  absl::Status Restore() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      absl::StatusOr<Entry> now = link_.Get(RouteKey(service_));
      if (!now.ok()) return now.status();
      const std::string& original = record_.value.original_route();
      absl::Status st;
      if (original.empty()) {
        if (now->version == 0) return absl::OkStatus();
        st = link_.Delete(RouteKey(service_), now->version);
      } else {
        if (now->value == original) return absl::OkStatus();
        st = link_.Put(RouteKey(service_), original, now->version).status();
      }
      if (!absl::IsFailedPrecondition(st)) return st;
    }
    return absl::AbortedError("the route kept changing; it was not restored");
  }

 private:
  // Saves the record; when an operator changed it meanwhile, takes their
  // state (paused, running, aborting) and saves again.
  absl::Status SaveMerging() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      absl::Status st = record_.Save();
      if (st.ok()) {
        last_save_ = absl::Now();
        return st;
      }
      if (!absl::IsFailedPrecondition(st)) return st;
      v1::TrafficShift mine = record_.value;
      if (absl::StatusOr<bool> loaded = record_.Load(); !loaded.ok() || !*loaded) {
        return absl::AbortedError("the shift's record was removed");
      }
      std::string theirs = record_.value.state();
      record_.value = mine;
      record_.value.set_state(theirs);
    }
    return absl::AbortedError("the shift's record kept changing");
  }

  // Heartbeats and follows the operators' requests. False when the shift
  // ended (`code` set); while paused, waits here.
  bool Checkpoint(int* code) {
    v1::TrafficShift& s = record_.value;
    while (true) {
      s.set_controller(controller_);
      if (absl::Status st = SaveMerging(); !st.ok()) {
        *code = FailWith(st);
        return false;
      }
      if (s.state() == "aborting") {
        *code = Stop("aborted", "aborted by an operator", /*restore=*/true);
        return false;
      }
      if (s.state() != "paused") return true;
      if (!announced_pause_) Say(absl::StrCat("paused at ", s.target_percent(), "%"));
      announced_pause_ = true;
      absl::SleepFor(kHeartbeat);
      if (s.state() == "running") announced_pause_ = false;
    }
  }

  // Writes `text` as the route, unless someone else changed it since this
  // controller last wrote it.
  absl::Status ApplyRoute(const std::string& text) {
    absl::StatusOr<Entry> now = link_.Get(RouteKey(service_));
    if (!now.ok()) return now.status();
    if (now->value == text) {
      route_version_ = now->version;
      applied_ = text;
      return absl::OkStatus();
    }
    if (now->version != route_version_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the route was changed by someone else (now '", now->value, "'); left as it is"));
    }
    absl::StatusOr<uint64_t> v = link_.Put(RouteKey(service_), text, route_version_);
    if (!v.ok()) return v.status();
    route_version_ = *v;
    applied_ = text;
    return absl::OkStatus();
  }

  int Stop(const std::string& state, absl::string_view why, bool restore) {
    v1::TrafficShift& s = record_.value;
    std::string message(why);
    if (restore) {
      absl::Status st = Restore();
      message = st.ok()
                    ? absl::StrCat(message, "; route restored to '",
                                   s.original_route().empty() ? "none" : s.original_route(), "'")
                    : absl::StrCat(message, "; restoring the route failed: ", st.message());
    }
    s.set_state(state);
    s.set_message(message);
    (void)SaveMerging();
    Say(absl::StrCat(state, ": ", message));
    return 1;
  }

  TrafficLink& link_;
  const std::string service_;
  Record& record_;
  const std::string controller_ = Me();
  std::string key_, value_, applied_;
  std::vector<rpc::TagRoute> original_;
  std::vector<Served> readings_;  // this run's window starts, oldest first
  uint64_t route_version_ = 0;
  absl::Time last_save_ = absl::InfinitePast();
  bool announced_pause_ = false;
};

int Start(const Flags& flags, TrafficLink& link, const std::string& service, Record& record,
          bool exists) {
  if (exists && Live(record.value)) {
    return FailWith(absl::FailedPreconditionError(absl::StrCat(
        "a shift of ", service, " to ", record.value.target(), " is ", record.value.state(), " at ",
        record.value.target_percent(), "%; take it over (formicactl traffic shift ", service,
        ") or abort it first")));
  }
  size_t eq = flags.to.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == flags.to.size() ||
      flags.to.find_first_of(",:") != std::string::npos) {
    return FailWith(absl::InvalidArgumentError(
        absl::StrCat("--to '", flags.to, "' is not one tag key=value (e.g. color=green)")));
  }
  std::string key = flags.to.substr(0, eq);
  std::string value = flags.to.substr(eq + 1);
  absl::StatusOr<std::vector<ProviderInfo>> providers = link.Providers(service);
  if (!providers.ok()) return FailWith(providers.status());
  std::vector<std::string> untagged;
  for (const ProviderInfo& p : *providers) {
    if (p.tags.count(key) == 0) untagged.push_back(p.address);
  }
  if (absl::Status st = CheckRoutes(service, {{key, value, 100}}, *providers); !st.ok()) {
    return FailWith(st);
  }
  if (!untagged.empty()) {
    return FailWith(absl::InvalidArgumentError(absl::StrCat(
        "providers of ", service, " without a '", key,
        "' tag would get no calls during the shift: ", absl::StrJoin(untagged, ", "))));
  }
  absl::StatusOr<Entry> route = link.Get(RouteKey(service));
  if (!route.ok()) return FailWith(route.status());
  absl::StatusOr<std::vector<rpc::TagRoute>> routes = rpc::ParseTagRoutes(route->value);
  v1::TrafficShift& s = record.value;
  s = v1::TrafficShift();
  s.set_service(service);
  s.set_target(flags.to);
  s.set_step_percent(flags.step_percent);
  s.set_every_ms(flags.every_ms);
  s.set_original_route(route->value);
  for (const rpc::TagRoute& r : routes.ok() ? *routes : std::vector<rpc::TagRoute>{}) {
    if (r.key == key && r.value == value) s.set_target_percent(r.percent);
  }
  s.set_state("running");
  s.set_started_unix_ms(absl::ToUnixMillis(absl::Now()));
  s.set_max_failure_rate_increase(flags.max_failure_increase);
  s.set_max_p99_ratio(flags.max_p99_ratio);
  s.set_p99_slack_ms(flags.p99_slack_ms);
  s.set_min_calls(flags.min_calls);
  s.set_analysis(flags.analysis);
  s.set_per_room(flags.per_room);
  if (absl::Status st = record.Save(); !st.ok()) {
    return FailWith(absl::IsFailedPrecondition(st) ? absl::FailedPreconditionError(absl::StrCat(
                                                         "another shift of ", service,
                                                         " was started meanwhile; nothing changed"))
                                                   : st);
  }
  Say(absl::StrCat("shift of ", service, " to ", flags.to, " from route '",
                   route->value.empty() ? "none" : route->value, "', ", flags.step_percent,
                   "% every ", absl::FormatDuration(absl::Milliseconds(flags.every_ms)),
                   flags.analysis.empty() ? "" : absl::StrCat(", analysis on ", flags.analysis)));
  Controller controller(link, service, record);
  return controller.Run();
}

int TakeOver(TrafficLink& link, const std::string& service, Record& record, bool exists) {
  if (!exists || !Live(record.value)) {
    return FailWith(absl::NotFoundError(
        absl::StrCat("no shift of ", service, " is under way; start one with --to KEY=VALUE")));
  }
  if (record.SinceUpdate() < kStale) {
    return FailWith(absl::FailedPreconditionError(absl::StrCat(
        "the shift of ", service, " is run by ", record.value.controller(), ", heard from ",
        absl::FormatDuration(absl::Trunc(record.SinceUpdate(), absl::Milliseconds(100))), " ago")));
  }
  Say(absl::StrCat("taking over the shift of ", service, " to ", record.value.target(), " at ",
                   record.value.target_percent(), "% (", record.value.state(), ")"));
  Controller controller(link, service, record);
  return controller.Run();
}

void PrintRecord(const v1::TrafficShift& s) {
  std::printf("shift of %s to %s: %s at %d%%\n", s.service().c_str(), s.target().c_str(),
              s.state().c_str(), s.target_percent());
  std::printf("  step %d%% every %s; from route '%s'\n", s.step_percent(),
              absl::FormatDuration(absl::Milliseconds(s.every_ms())).c_str(),
              s.original_route().empty() ? "none" : s.original_route().c_str());
  std::printf("  thresholds: failures +%g points, p99 %gx (+%g ms), at least %lld calls\n",
              s.max_failure_rate_increase(), s.max_p99_ratio(), s.p99_slack_ms(),
              static_cast<long long>(s.min_calls()));
  std::printf("  analysis on %s%s; controller %s, updated %s ago\n",
              s.analysis().empty() ? "the providers' Stats" : s.analysis().c_str(),
              s.per_room().empty() ? "" : absl::StrCat(", per ", s.per_room()).c_str(),
              s.controller().c_str(), Ago(s.updated_unix_ms()).c_str());
  if (!s.message().empty()) std::printf("  %s\n", s.message().c_str());
}

// pause, resume, abort: changes the record's state; the controller follows.
int Control(const Flags& flags, TrafficLink& link, const std::string& cmd,
            const std::string& service, Record& record) {
  for (int attempt = 0; attempt < 5; ++attempt) {
    absl::StatusOr<bool> exists = record.Load();
    if (!exists.ok()) return FailWith(exists.status());
    if (!*exists || !Live(record.value)) {
      return FailWith(absl::FailedPreconditionError(absl::StrCat(
          "no shift of ", service, " is under way",
          *exists ? absl::StrCat(" (the last one is ", record.value.state(), ")") : "")));
    }
    std::string want = cmd == "pause" ? "paused" : cmd == "resume" ? "running" : "aborting";
    if (record.value.state() == "aborting") {
      return FailWith(absl::FailedPreconditionError("the shift is being aborted"));
    }
    record.value.set_state(want);
    bool stale = record.SinceUpdate() >= kStale;
    absl::Status st = record.Save();
    if (absl::IsFailedPrecondition(st)) continue;
    if (!st.ok()) return FailWith(st);
    if (cmd != "abort") {
      std::printf(
          "shift of %s: %s%s\n", service.c_str(), want.c_str(),
          stale ? " (no controller runs it: take it over with formicactl traffic shift)" : "");
      return 0;
    }
    if (stale) {  // nobody to restore the route: do it here
      Controller controller(link, service, record);
      absl::Status restored = controller.Restore();
      record.value.set_state("aborted");
      record.value.set_message(
          restored.ok() ? "aborted by an operator; route restored"
                        : absl::StrCat("restoring the route failed: ", restored.message()));
      (void)record.Save();
      PrintRecord(record.value);
      return restored.ok() ? 0 : FailWith(restored);
    }
    // The controller restores the route; wait for it to say so.
    absl::Time deadline = absl::Now() + absl::Seconds(flags.timeout_s) + kStale;
    while (absl::Now() < deadline) {
      absl::SleepFor(kPoll);
      if (absl::StatusOr<bool> l = record.Load(); l.ok() && *l && !Live(record.value)) {
        PrintRecord(record.value);
        return record.value.state() == "aborted" ? 0 : 1;
      }
    }
    return FailWith(absl::DeadlineExceededError(
        "the controller did not confirm the abort; see formicactl traffic status"));
  }
  return FailWith(absl::AbortedError("the shift's record kept changing; try again"));
}

}  // namespace

int TrafficShift(const Flags& flags, const std::vector<std::string>& args) {
  if (args.size() != 3) {
    return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
  }
  const std::string& cmd = args[1];
  const std::string& service = args[2];
  TrafficLink link(flags);
  Record record(link, ShiftKey(service), "traffic shift");
  if (cmd == "pause" || cmd == "resume" || cmd == "abort") {
    return Control(flags, link, cmd, service, record);
  }
  absl::StatusOr<bool> exists = record.Load();
  if (!exists.ok()) return FailWith(exists.status());
  if (cmd == "status") {
    if (!*exists) return FailWith(absl::NotFoundError(absl::StrCat("no shift of ", service)));
    if (flags.output == Output::kJson) return PrintJson(record.value);
    PrintRecord(record.value);
    return 0;
  }
  if (flags.to.empty()) return TakeOver(link, service, record, *exists);
  return Start(flags, link, service, record, *exists);
}

}  // namespace formica::ctl
