// RabbitMQ half of the message-broker benchmark: runs a fixed workload against a private
// rabbitmq-server started for the run, through librabbitmq (rabbitmq-c).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace formica::bench {

struct BrokerWorkload {
  int messages = 20000;  // messages per phase
  int body_bytes = 1024;
  int producers = 4;                // producer threads, one connection each
  int in_flight_per_producer = 64;  // unconfirmed messages a producer keeps out at once
  int consumer_prefetch = 256;      // unacked deliveries the consumer may hold, over all queues
  int queues = 1;                   // messages spread round-robin over this many queues
  bool quorum = false;              // quorum queues instead of durable classic ones
};

struct BrokerFigures {
  double produce_per_s = 0;   // phase 1: messages / seconds from first publish to last confirm
  double produce_p50_ms = 0;  // publish -> publisher confirm latency, per message
  double produce_p99_ms = 0;
  double e2e_per_s = 0;    // phase 2: producers and one consumer at once; messages / seconds
                           // from first publish to last consumer ack
  int64_t duplicates = 0;  // phase 2: deliveries of a message the consumer already had
};

struct RabbitMqRun {
  std::string version;                 // the broker's own, from its connection.start
  std::vector<BrokerFigures> figures;  // one per workload, in order
  int cluster_nodes = 1;               // the nodes the queues were spread over
};

// Starts a private rabbitmq-server (the Debian package) on 127.0.0.1 with free ports and a
// temporary data directory, runs each workload against fresh durable queues (classic, or
// quorum when asked) with persistent messages (delivery_mode 2) and publisher confirms through
// librabbitmq (rabbitmq-c 0.11), stops the server and removes the directory (also on failure).
// Each producer spreads its messages round-robin over the workload's queues; the one consumer
// consumes from all of them on one channel, the prefetch split evenly between the queues. Each
// message carries a unique id, so the consumer counts distinct messages and duplicates. `log`
// gets human-readable progress lines (may be nullptr).
//
// Errors: FAILED_PRECONDITION when rabbitmq-server is not installed, INVALID_ARGUMENT for a
// workload it cannot run, DEADLINE_EXCEEDED when the server does not come up within 60 s or a
// phase makes no progress for 60 s, and other codes for broker or protocol failures.
absl::StatusOr<RabbitMqRun> RunRabbitMq(const std::vector<BrokerWorkload>& workloads,
                                        void (*log)(const std::string&));

// As RunRabbitMq on a private cluster of `nodes` rabbitmq-server nodes on 127.0.0.1 (each its
// own data directory and ports, one shared Erlang cookie, joined through classic_config peer
// discovery; checked with rabbitmqctl cluster_status before any workload). The clients connect
// to the first node; a quorum queue gets a member on every node (its default group size), so a
// publisher confirm means a majority of the nodes wrote the message. Stops every node and
// removes the directory, also on failure.
absl::StatusOr<RabbitMqRun> RunRabbitMqCluster(const std::vector<BrokerWorkload>& workloads,
                                               int nodes, void (*log)(const std::string&));

}  // namespace formica::bench
