// formicactl: the dts commands: business activities at dtsd.
#include "formicactl.h"

#include <grpcpp/grpcpp.h>

#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/internal/credentials.h"

namespace formica::ctl {
namespace dts = formica::dts::v1;

namespace {

void PrintActivity(FILE* out, const dts::Activity& a) {
  std::fprintf(out, "activity   %s\nname       %s\ninitiator  %s\nstate      %s\n", a.id().c_str(),
               a.name().c_str(), a.initiator().empty() ? "-" : a.initiator().c_str(),
               dts::ActivityState_Name(a.state()).c_str());
  if (!a.initiator_identity().empty()) {  // the certificate that decides it (docs/security.md)
    std::fprintf(out, "begun by   %s\n", a.initiator_identity().c_str());
  }
  if (!a.reason().empty()) std::fprintf(out, "reason     %s\n", a.reason().c_str());
  std::fprintf(out, "begun      %s ago\n", Ago(a.begun_unix_ms()).c_str());
  std::fprintf(
      out, "deadline   %s\n",
      absl::FormatTime(absl::FromUnixMillis(a.deadline_unix_ms()), absl::UTCTimeZone()).c_str());
  if (a.decided_unix_ms() != 0)
    std::fprintf(out, "decided    %s ago\n", Ago(a.decided_unix_ms()).c_str());
  if (a.finished_unix_ms() != 0) {
    std::fprintf(out, "finished   %s ago\n", Ago(a.finished_unix_ms()).c_str());
  }
  std::fprintf(out, "\n%-3s %-32s %-20s %-10s %8s  %s\n", "#", "PARTICIPANT", "ACTION", "STATE",
               "ATTEMPTS", "LAST ERROR");
  for (int i = 0; i < a.actions_size(); ++i) {
    const dts::Action& x = a.actions(i);
    std::fprintf(out, "%-3d %-32s %-20s %-10s %8u  %s\n", i, x.participant().c_str(),
                 x.name().c_str(), dts::ActionState_Name(x.state()).c_str(), x.attempts(),
                 x.last_error().empty() ? "-" : x.last_error().c_str());
  }
}

// `dts stats --watch`: a line per second of rates between two readings of
// dtsd's counters, `--limit N` lines (default: until interrupted).
int WatchStats(const Flags& flags, dts::Coordinator::Stub* stub,
               const std::function<std::unique_ptr<grpc::ClientContext>()>& context) {
  auto read = [&](dts::Stats* s) { return stub->GetStats(context().get(), {}, s); };
  dts::Stats before;
  if (grpc::Status st = read(&before); !st.ok()) return Fail(st);
  absl::Time t0 = absl::Now();
  if (flags.output == Output::kText) {
    std::printf("%9s %11s %13s %12s %11s %9s %11s %15s %10s\n", "BEGUN/S", "COMMITTED/S",
                "ROLLED_BACK/S", "CHECK_BACK/S", "PHASE_TWO/S", "SYNCS/S", "WRITES/SYNC",
                "CPU_MS/ACTIVITY", "UNFINISHED");
  }
  for (int line = 0; flags.limit == 0 || line < flags.limit; ++line) {
    absl::SleepFor(absl::Seconds(1));
    dts::Stats now;
    if (grpc::Status st = read(&now); !st.ok()) return Fail(st);
    absl::Time t1 = absl::Now();
    if (now.begun() < before.begun() || now.wal_syncs() < before.wal_syncs() ||
        now.cpu_seconds() < before.cpu_seconds()) {
      // dtsd restarted: its counters began again; rates from the next line.
      if (flags.output == Output::kText) std::printf("(dtsd restarted)\n");
      std::fflush(stdout);
      before = now;
      t0 = t1;
      --line;
      continue;
    }
    double secs = absl::ToDoubleSeconds(t1 - t0);
    auto rate = [&](uint64_t a, uint64_t b) { return secs > 0 ? (b - a) / secs : 0; };
    double ended = static_cast<double>(now.committed() - before.committed() + now.rolled_back() -
                                       before.rolled_back());
    double syncs = static_cast<double>(now.wal_syncs() - before.wal_syncs());
    double writes = static_cast<double>(now.synced_writes() - before.synced_writes());
    double cpu_ms = ended > 0 ? (now.cpu_seconds() - before.cpu_seconds()) * 1000 / ended : 0;
    double per_sync = syncs > 0 ? writes / syncs : 0;
    if (flags.output == Output::kJson) {
      std::printf(
          "{\"begun_per_s\":%.1f,\"committed_per_s\":%.1f,\"rolled_back_per_s\":%.1f,"
          "\"check_backs_per_s\":%.1f,\"phase_two_calls_per_s\":%.1f,\"wal_syncs_per_s\":%.1f,"
          "\"writes_per_sync\":%.2f,\"cpu_ms_per_activity\":%.3f,\"unfinished\":%llu}\n",
          rate(before.begun(), now.begun()), rate(before.committed(), now.committed()),
          rate(before.rolled_back(), now.rolled_back()),
          rate(before.check_backs(), now.check_backs()),
          rate(before.phase_two_calls(), now.phase_two_calls()),
          rate(before.wal_syncs(), now.wal_syncs()), per_sync, cpu_ms,
          static_cast<unsigned long long>(now.unfinished()));
    } else {
      std::printf("%9.0f %11.0f %13.0f %12.0f %11.0f %9.0f %11.1f %15.3f %10llu\n",
                  rate(before.begun(), now.begun()), rate(before.committed(), now.committed()),
                  rate(before.rolled_back(), now.rolled_back()),
                  rate(before.check_backs(), now.check_backs()),
                  rate(before.phase_two_calls(), now.phase_two_calls()),
                  rate(before.wal_syncs(), now.wal_syncs()), per_sync, cpu_ms,
                  static_cast<unsigned long long>(now.unfinished()));
    }
    std::fflush(stdout);
    before = now;
    t0 = t1;
  }
  return 0;
}

}  // namespace

int Dts(const Flags& flags, const std::vector<std::string>& args) {
  auto stub =
      dts::Coordinator::NewStub(grpc::CreateChannel(flags.dts, formica::ChannelCredentials()));
  auto context = [&flags] { return CallContext(flags); };
  const std::string& cmd = args[1];
  if (cmd == "ls" && args.size() == 2) {
    dts::ListRequest req;
    for (absl::string_view name : absl::StrSplit(flags.states, ',', absl::SkipEmpty())) {
      dts::ActivityState state;
      if (!dts::ActivityState_Parse(std::string(name), &state) ||
          state == dts::ACTIVITY_STATE_UNSPECIFIED) {
        return Usage(absl::StrCat("unknown state '", name, "'"));
      }
      req.add_states(state);
    }
    req.set_limit(flags.limit);
    dts::ListResponse resp;
    grpc::Status st = stub->List(context().get(), req, &resp);
    if (!st.ok()) return Fail(st);
    if (flags.output == Output::kJson) return PrintJson(resp);
    std::printf("%-21s %-24s %-12s %7s %10s  %s\n", "ID", "NAME", "STATE", "ACTIONS", "AGE",
                "REASON");
    for (const dts::Activity& a : resp.activities()) {
      int done = 0;
      for (const dts::Action& x : a.actions()) done += x.state() != dts::ENLISTED;
      std::printf("%-21s %-24s %-12s %7s %10s  %s\n", a.id().c_str(), a.name().c_str(),
                  dts::ActivityState_Name(a.state()).c_str(),
                  absl::StrCat(done, "/", a.actions_size()).c_str(), Ago(a.begun_unix_ms()).c_str(),
                  a.reason().empty() ? "-" : a.reason().c_str());
    }
    return 0;
  }
  if (cmd == "stats" && args.size() == 2 && flags.watch) {
    return WatchStats(flags, stub.get(), context);
  }
  if (cmd == "stats" && args.size() == 2) {
    dts::Stats s;
    grpc::Status st = stub->GetStats(context().get(), dts::StatsRequest(), &s);
    if (!st.ok()) return Fail(st);
    if (flags.output == Output::kJson) return PrintJson(s);
    std::printf(
        "begun %llu\ncommitted %llu\nrolled_back %llu\ntimed_out %llu\nunfinished %llu\n"
        "phase_two_calls %llu\nphase_two_failures %llu\nsynced_writes %llu\nwal_syncs %llu\n"
        "stored_bytes %llu\ncheck_backs %llu\ncpu_seconds %.3f\n",
        static_cast<unsigned long long>(s.begun()), static_cast<unsigned long long>(s.committed()),
        static_cast<unsigned long long>(s.rolled_back()),
        static_cast<unsigned long long>(s.timed_out()),
        static_cast<unsigned long long>(s.unfinished()),
        static_cast<unsigned long long>(s.phase_two_calls()),
        static_cast<unsigned long long>(s.phase_two_failures()),
        static_cast<unsigned long long>(s.synced_writes()),
        static_cast<unsigned long long>(s.wal_syncs()),
        static_cast<unsigned long long>(s.stored_bytes()),
        static_cast<unsigned long long>(s.check_backs()), s.cpu_seconds());
    return 0;
  }
  if ((cmd == "show" || cmd == "retry" || cmd == "settle") && args.size() == 3) {
    dts::ActivityRef ref;
    ref.set_activity_id(args[2]);
    dts::Activity a;
    grpc::Status st = stub->Get(context().get(), ref, &a);
    if (!st.ok()) return Fail(st);
    if (cmd == "show") {
      if (flags.output == Output::kJson) return PrintJson(a);
      PrintActivity(stdout, a);
      return 0;
    }
    if (cmd == "settle" && flags.reason.empty()) {
      return Usage("settle needs --reason TEXT: what was done by hand, for the record");
    }
    FILE* prompt = PromptStream(flags);
    if (flags.output == Output::kText || !flags.yes) {  // a script's JSON answer comes alone
      PrintActivity(prompt, a);
      std::fprintf(prompt, "\n");
    }
    std::string question =
        cmd == "retry"
            ? absl::StrCat("Retry phase two of ", a.id(), " now?")
            : absl::StrCat("Mark every unfinished action of ", a.id(),
                           " SETTLED without calling its participant, and finish the activity?");
    if (!flags.yes && !Confirm(prompt, question)) {
      std::fprintf(stderr, "formicactl: nothing done\n");
      return 1;
    }
    ref.set_reason(flags.reason);
    dts::DecisionResponse resp;
    st = cmd == "retry" ? stub->Retry(context().get(), ref, &resp)
                        : stub->Settle(context().get(), ref, &resp);
    if (!st.ok()) return Fail(st);
    if (flags.output == Output::kJson) return PrintJson(resp);
    std::printf("%s: %s\n", a.id().c_str(), dts::ActivityState_Name(resp.state()).c_str());
    return 0;
  }
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

}  // namespace formica::ctl
