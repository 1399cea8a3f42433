// The etcd side of the push fan-out comparison: how long a change takes to
// reach many watchers when etcd's Watch API delivers it. Measured against a
// real etcd (the distribution's /usr/bin/etcd) on loopback, in the same run as
// our registry's numbers.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace formica::bench {

struct FanoutResult {
  double p50_ms = 0;
  double p99_ms = 0;
  int watchers = 0;
  int rounds = 0;
  int64_t samples = 0;  // watchers * rounds: one per (watcher, round)
};

// Starts /usr/bin/etcd on free 127.0.0.1 ports in a temp dir (single member,
// otherwise default settings, so every Put waits for etcd's WAL fsync), opens
// `watchers` Watch streams on one key prefix, each on its own grpc::Channel
// with its own TCP connection (like separate processes), then `rounds` times:
// takes a steady-clock start, Puts one key under the prefix and records, for
// every watcher, when its watch event for that revision arrives. Each round
// waits for all watchers (up to 10 s) before the next one starts.
//
// p50/p99 (nearest rank) are over all (watcher, round) samples, start of the
// Put to arrival of the event, in milliseconds. Fails if etcd does not come
// up within 20 s, a watch cannot be created, a stream breaks, or an event
// misses its round's deadline (late events are not dropped from the tail).
// Stops etcd and removes the temp dir at the end, also on failure.
//
// Each watcher holds a socket: if the soft RLIMIT_NOFILE is too low for
// `watchers`, it is raised (up to the hard limit) for the whole process.
// watchers: 1..20000, rounds: 1..100000.
absl::StatusOr<FanoutResult> MeasureEtcdFanout(int watchers, int rounds);

// Puts per second straight into a running etcd (`endpoints`, comma-separated
// host:port): `clients` threads, each on its own connection, each doing
// `per_client` Puts one after another, each under a lease as dsrd's are.
// What a registry in cluster mode stands on.
absl::StatusOr<double> MeasureEtcdPuts(const std::string& endpoints, int clients, int per_client);

}  // namespace formica::bench
