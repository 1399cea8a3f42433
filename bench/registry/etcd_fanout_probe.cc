// Runs the etcd side of the fan-out comparison once and prints the result:
//   etcd_fanout_probe [watchers=100] [rounds=5]
#include <cstdio>

#include "absl/strings/numbers.h"
#include "etcd_fanout.h"

int main(int argc, char** argv) {
  int watchers = 100;
  int rounds = 5;
  if (argc > 3 || (argc > 1 && !absl::SimpleAtoi(argv[1], &watchers)) ||
      (argc > 2 && !absl::SimpleAtoi(argv[2], &rounds))) {
    std::fprintf(stderr, "usage: %s [watchers] [rounds]\n", argv[0]);
    return 2;
  }
  formica::bench::EtcdFanoutOptions options;
  options.watchers = watchers;
  options.rounds = rounds;
  absl::StatusOr<formica::bench::FanoutResult> result = formica::bench::MeasureEtcdFanout(options);
  if (!result.ok()) {
    std::fprintf(stderr, "etcd fan-out failed: %s\n", result.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "etcd %s watch fan-out: watchers=%d rounds=%d samples=%lld missing=%lld p50=%.3f ms "
      "p99=%.3f ms\n",
      result->version.c_str(), result->watchers, result->rounds,
      static_cast<long long>(result->samples), static_cast<long long>(result->missing),
      result->p50_ms, result->p99_ms);
  return result->missing == 0 ? 0 : 1;
}
