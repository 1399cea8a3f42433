// formica::ldc::RuleAdmin — the operator's side of the rules: read them,
// publish a validated set with compare-and-set, list which version every
// client applied, and switch shards between zones behind a fence.
// `formicactl ldc ...` is a thin shell over it (docs/ldc.md).
//
//   auto admin = ldc::RuleAdmin::Connect("127.0.0.1:7370");
//   ldc::SwitchOptions o;
//   o.shards = ldc::ParseShards("00-49").value();
//   o.to = "zone-b";
//   auto result = admin->Switch(o);   // fence, prove, move
//
// A switch:
//   1. publishes the rules with the moving shards fenced (no zone writes
//      them), by compare-and-set on the version it read;
//   2. waits until every client (every Router's report in the registry)
//      has applied the fenced version; on timeout it puts the previous
//      rules back and fails naming the lagging clients, unless `force`;
//   3. publishes the new owner, unfenced.
//
// Thread-compatible; each call talks to the registry directly.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/ldc/rules.h"

namespace formica::ldc {

// What one client process reported.
struct ClientReport {
  std::string id;      // the Router's instance id
  std::string client;  // its client name
  std::string zone;
  uint64_t applied_version = 0;
};

struct VersionedRules {
  RuleSet rules;
  uint64_t version = 0;
};

struct SwitchOptions {
  std::set<int> shards;  // the shards to move
  std::string to;        // the RZone that will own them
  // How long every client gets to apply the fence before the switch rolls back.
  absl::Duration fence_timeout = absl::Seconds(10);
  // Move ownership even if clients lag (a zone that is gone for good).
  bool force = false;
  // After the move, wait up to this long for every client to apply the
  // final version (measures convergence; lagging is reported, not undone).
  absl::Duration converge_timeout = absl::Seconds(10);
  absl::Duration poll = absl::Milliseconds(5);
};

struct SwitchResult {
  std::set<int> moved;         // shards that changed owner
  std::set<std::string> from;  // their previous owners
  uint64_t previous_version = 0;
  uint64_t fenced_version = 0;
  uint64_t final_version = 0;
  absl::Duration fence_wait;  // fence published -> every client applied it
  absl::Duration fenced_for;  // fence published -> new owner published
  absl::Duration converge;    // switch start -> every client on the final version
  bool converged = false;
  std::vector<ClientReport> lagging;  // clients not on the fence when forced
  int clients = 0;
};

class RuleAdmin {
 public:
  // `registry`: a dsrd "host:port". Every call waits at most `call_timeout`.
  static std::unique_ptr<RuleAdmin> Connect(const std::string& registry,
                                            absl::Duration call_timeout = absl::Seconds(5));
  virtual ~RuleAdmin() = default;

  // NOT_FOUND when no rules were ever published.
  virtual absl::StatusOr<VersionedRules> Get() = 0;
  // Validates and publishes; with `expected_version`, only over that version
  // (FAILED_PRECONDITION when the rules moved on; 0: none must exist).
  // INVALID_ARGUMENT naming the zone or shard at fault changes nothing.
  virtual absl::StatusOr<uint64_t> Put(const RuleSet& rules,
                                       std::optional<uint64_t> expected_version) = 0;
  // Every live client's report, by id.
  virtual absl::StatusOr<std::vector<ClientReport>> Clients() = 0;
  // See the header comment. FAILED_PRECONDITION for a switch already under
  // way or nothing to move; DEADLINE_EXCEEDED (rules rolled back) naming
  // the lagging clients.
  virtual absl::StatusOr<SwitchResult> Switch(const SwitchOptions& options) = 0;
};

}  // namespace formica::ldc
