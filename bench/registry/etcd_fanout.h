// The etcd side of the push fan-out comparison: how long a change takes to
// reach many watchers when etcd's Watch API delivers it. Measured against a
// real etcd (the distribution's /usr/bin/etcd) on loopback, in the same run as
// our registry's numbers.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace formica::bench {

struct EtcdFanoutOptions {
  int watchers = 100;  // 1..20000
  int rounds = 5;      // 1..100000
  // false: etcd runs with --unsafe-no-fsync (its WAL is not synced), to
  // compare with a registry that keeps publications in memory.
  bool fsync = true;
  // Quiet time before each round's Put (the same spacing the registry's
  // rounds get).
  absl::Duration spacing = absl::ZeroDuration();
  // Other Puts under the watched prefix, arriving steadily at this rate
  // while the rounds run (0: none). Every watcher receives them too.
  int churn_per_s = 0;
};

struct FanoutResult {
  double p50_ms = 0;
  double p99_ms = 0;
  int watchers = 0;
  int rounds = 0;
  int64_t samples = 0;  // one per (watcher, round) seen within the round's deadline
  int64_t missing = 0;  // (watcher, round) pairs not seen within it: watchers * rounds - samples
  int64_t churn_puts = 0;
  double churn_per_s = 0;      // the churn rate reached
  int64_t churn_failures = 0;  // churn Puts etcd did not accept
  std::string version;         // etcd's own answer (Maintenance.Status), e.g. "3.4.23"
};

// Starts /usr/bin/etcd on free 127.0.0.1 ports in a temp dir (single member,
// otherwise default settings unless options.fsync is false), opens
// `watchers` Watch streams on one key prefix, each on its own grpc::Channel
// with its own TCP connection (like separate processes), then `rounds`
// times: waits options.spacing, takes a steady-clock start, Puts one key
// under the prefix and records, for every watcher, when its watch event for
// that revision first arrives. Each round waits for all watchers (up to
// 30 s) before the next one starts; a watcher that did not see it by then
// counts as missing (it is not dropped silently).
//
// p50/p99 (nearest rank) are over all (watcher, round) samples, start of the
// Put to arrival of the event, in milliseconds. Fails if etcd does not come
// up within 20 s, a watch cannot be created, a stream breaks or a Put
// fails. Stops etcd and removes the temp dir at the end, also on failure.
//
// Each watcher holds a socket: if the soft RLIMIT_NOFILE is too low for
// `watchers`, it is raised (up to the hard limit) for the whole process.
absl::StatusOr<FanoutResult> MeasureEtcdFanout(const EtcdFanoutOptions& options);

// etcd's version as the member at `endpoint` (host:port) reports it
// (Maintenance.Status), e.g. "3.4.23".
absl::StatusOr<std::string> EtcdVersion(const std::string& endpoint);

// Puts per second straight into a running etcd (`endpoints`, comma-separated
// host:port): `clients` threads, each on its own connection, each doing
// `per_client` Puts one after another, each under a lease as dsrd's are.
// What a registry in cluster mode stands on.
absl::StatusOr<double> MeasureEtcdPuts(const std::string& endpoints, int clients, int per_client);

}  // namespace formica::bench
