// ./formica bench raft [--quick]: RaftNode (Canonical's Raft) in a group of
// three raft_node_demo processes on this machine. Measures committed
// proposals per second with many proposers in flight (libraft batches their
// disk writes and messages) and with one, and the failover time from kill -9
// of the leader to the first acknowledged proposal at the next one; checks
// that every acknowledged proposal is in the new leader's history.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "bench_report.h"
#include "process.h"
#include "raft_group.h"

namespace formica::bench {
namespace {

using formica::testing::LineClient;
using formica::testing::ParseValues;
using formica::testing::RaftDemoGroup;

// `clients` connections to the leader proposing for `duration`; returns the
// acknowledged count, counting refusals into `errors`.
int64_t Throughput(RaftDemoGroup& group, int leader, int clients, absl::Duration duration,
                   const std::string& prefix, int64_t* errors) {
  std::atomic<int64_t> acked{0}, failed{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto client = LineClient::Connect(group.member(leader).demo_port);
      if (!client.ok()) {
        ++failed;
        return;
      }
      for (int n = 0; !stop; ++n) {
        if (!(*client)->Send(absl::StrCat("PROPOSE ", prefix, c, "-", n))) {
          ++failed;
          return;
        }
        std::string reply = (*client)->ReadLine(absl::Seconds(10));
        if (absl::StartsWith(reply, "OK ")) {
          ++acked;
        } else {
          ++failed;
        }
      }
    });
  }
  std::this_thread::sleep_for(absl::ToChronoMilliseconds(duration));
  stop = true;
  for (std::thread& t : threads) t.join();
  *errors += failed;
  return acked;
}

struct Failover {
  double ms = -1;
  int64_t acked = 0;
  int64_t lost = 0;
};

// One proposer following NOT_LEADER; kill -9 of the leader after a second.
Failover KillLeader(RaftDemoGroup& group, int leader, int round) {
  Failover f;
  absl::Mutex mu;
  struct Ack {
    std::string value;
    int member;
    absl::Time at;
  };
  std::vector<Ack> acks;
  std::atomic<bool> stop{false};
  std::thread proposer([&] {
    int target = leader;
    for (int n = 0; !stop; ++n) {
      std::string v = absl::StrCat("f", round, "-", n);
      std::string reply = group.Ask(target, "PROPOSE " + v, absl::Seconds(3));
      if (absl::StartsWith(reply, "OK ")) {
        absl::MutexLock l(&mu);
        acks.push_back({v, target, absl::Now()});
        continue;
      }
      std::vector<std::string> w = absl::StrSplit(reply, ' ');
      int hint = 0;
      if (w.size() == 3 && w[0] == "NOT_LEADER" && absl::SimpleAtoi(w[1], &hint) && hint > 0) {
        target = hint - 1;
      } else {
        target = (target + 1) % group.size();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const absl::Time killed = absl::Now();
  group.Kill9(leader);
  for (absl::Time limit = killed + absl::Seconds(20); absl::Now() < limit && f.ms < 0;) {
    {
      absl::MutexLock l(&mu);
      for (const Ack& a : acks) {
        if (a.at > killed && a.member != leader) {
          f.ms = absl::ToDoubleMilliseconds(a.at - killed);
          break;
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop = true;
  proposer.join();
  const int next = group.WaitForLeader(absl::Seconds(10), leader);
  if (next < 0) return f;
  std::vector<std::string> history = ParseValues(group.Ask(next, "READ"));
  std::set<std::string> have(history.begin(), history.end());
  for (const Ack& a : acks) {
    ++f.acked;
    f.lost += have.count(a.value) == 0;
  }
  return f;
}

int Run(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: bench_raft [--quick]\n");
      return 2;
    }
  }
  const absl::Duration duration = quick ? absl::Seconds(2) : absl::Seconds(8);
  const int clients = 64;
  const int rounds = quick ? 1 : 3;
  BenchReport report;
  formica::testing::TempDir dir;
  report.SetMachine(dir.path());
  report.SetSetup("group", "3 raft_node_demo processes on 127.0.0.1");
  report.SetSetup("election_timeout_ms", 1000);
  report.SetSetup("heartbeat_ms", 100);
  report.SetSetup("clients", clients);

  auto g = RaftDemoGroup::Start(dir.path(), RaftDemoGroup::Options());
  if (!g.ok()) {
    report.Fail(std::string(g.status().message()));
    return report.Finish();
  }
  RaftDemoGroup& group = **g;
  int leader = group.WaitForLeader(absl::Seconds(15));
  if (leader < 0) {
    report.Fail("no leader elected within 15 s");
    return report.Finish();
  }
  int64_t errors = 0;
  const int64_t many = Throughput(group, leader, clients, duration, "m", &errors);
  const int64_t one = Throughput(group, leader, 1, duration, "s", &errors);
  report.AddErrors("proposals_refused", errors);
  const double seconds = absl::ToDoubleSeconds(duration);
  report.Set("committed_per_s", static_cast<double>(many) / seconds);
  report.Set("committed_per_s_1_client", static_cast<double>(one) / seconds);
  report.Set("batching_gain", Ratio(static_cast<double>(many), static_cast<double>(one)));
  std::fprintf(stderr, "committed/s: %.0f with %d proposers, %.0f with one\n",
               static_cast<double>(many) / seconds, clients, static_cast<double>(one) / seconds);

  std::vector<double> failovers;
  int64_t lost = 0;
  for (int r = 0; r < rounds; ++r) {
    Failover f = KillLeader(group, leader, r);
    if (f.ms < 0) {
      report.AddMissing("failover_rounds", 1);
    } else {
      failovers.push_back(f.ms);
      std::fprintf(stderr, "failover round %d: %.0f ms, %lld acknowledged, %lld lost\n", r + 1,
                   f.ms, static_cast<long long>(f.acked), static_cast<long long>(f.lost));
    }
    lost += f.lost;
    // The killed member comes back; the next round kills whoever leads then.
    if (absl::Status st = group.StartMember(leader); !st.ok()) {
      report.Fail(std::string(st.message()));
      break;
    }
    leader = group.WaitForLeader(absl::Seconds(15));
    if (leader < 0) {
      report.Fail("no leader after restarting the killed member");
      break;
    }
  }
  report.AddErrors("acknowledged_proposals_lost", lost);
  report.Set("failover_ms", Percentile(failovers, 50));
  report.Set("failover_ms_max", Percentile(failovers, 100));
  report.Headline("raft committed proposals/s, 3 members, 64 proposers", "committed_per_s", "", "",
                  "batching: many proposers share writes");
  report.Headline("raft failover ms, kill -9 to first ack", "failover_ms", "", "", "<= 3000 ms");
  return report.Finish();
}

}  // namespace
}  // namespace formica::bench

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  return formica::bench::Run(argc, argv);
}
