// Coordinator: the heart of dtsd. Keeps business activities, records every
// enlisted action and decision durably before answering, drives phase two
// (confirm or cancel through each participant's Participant service, found
// through DSR) until every action is done, rolls back activities that pass
// their deadline, and on start reloads every unfinished activity.
//
//   auto coordinator = Coordinator::Start(options).value();
//   ...                        // serves formica.dts.v1.Coordinator
//   coordinator->Shutdown();   // unpublish, drain, stop; unfinished work resumes on restart
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/internal/raft_node.h"

namespace formica {
class Config;
}

namespace formica::dts {

struct CoordinatorOptions {
  std::string listen = "127.0.0.1:7380";
  std::string advertise_host = "127.0.0.1";
  std::string data_dir = "./dtsd-data";
  std::vector<std::string> registries = {"127.0.0.1:7370"};  // dsrd nodes
  std::string zone;
  absl::Duration default_timeout = absl::Seconds(30);  // an activity's, when Begin names none
  absl::Duration max_timeout = absl::Hours(24);
  int max_actions = 1000;  // per activity
  // Finished activities are kept this long for `formicactl dts show`, then
  // removed by a sweep every `sweep_interval`.
  absl::Duration finished_retention = absl::Hours(72);
  absl::Duration sweep_interval = absl::Minutes(1);
  absl::Duration call_timeout = absl::Seconds(5);  // one confirm or cancel call
  absl::Duration retry_initial = absl::Milliseconds(200);
  absl::Duration retry_max = absl::Seconds(30);  // backoff cap, with jitter
  int max_in_flight = 512;                       // phase-two calls at once
  absl::Duration unpublish_grace = absl::Seconds(1);
  absl::Duration drain_timeout = absl::Seconds(5);
  // Where to serve metrics (docs/metrics.md); "" (the default): not served.
  std::string metrics_listen;
  // The `raft` section (docs/ha.md): set, dtsd is one member of a replicated
  // group and serves only while it leads; unset, it runs alone on data_dir.
  std::optional<RaftNodeOptions> raft;
};

// Reads CoordinatorOptions from a config (see deploy/dtsd.yaml).
// INVALID_ARGUMENT names the file, line, key and reason.
absl::StatusOr<CoordinatorOptions> LoadCoordinatorOptions(const Config& config);

class Coordinator {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(CoordinatorOptions options);
  ~Coordinator();

  int port() const;
  // Stops taking calls and stops phase two; what is unfinished stays on disk.
  void Shutdown();

  class Impl;

 private:
  explicit Coordinator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::dts
