// BrokerGroup: dmsd as one member of a replicated broker group (docs/ha.md),
// what Broker::Start runs when the config has a `raft` section. Every member
// keeps the broker's stores open (the topics' queue logs, the group
// progress and meta RocksDBs) and applies to them, in order, what the
// group's Raft log commits: log appends and removals, and RocksDB write
// batches. Only the leader runs the broker's engines over them (built, as a
// restart builds them, once it is ready: every earlier entry applied) and
// publishes dmsd in the registry; its engines' writes go through the Raft
// log, so an answer means "committed on a majority". A follower serves only
// a refusal naming the leader.
//
//   auto group = BrokerGroup::Start(options).value();  // options.raft set
//   ...
//   group->Shutdown();
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "broker.h"

namespace formica::dms {

class BrokerGroup {
 public:
  // REQUIRES: options.raft set. Opens the stores, joins the group; returns
  // without waiting for a leader.
  static absl::StatusOr<std::unique_ptr<BrokerGroup>> Start(BrokerOptions options);
  ~BrokerGroup();

  // The port this member takes dmsd's calls on (the follower's refusal, or
  // the leader's broker: server.listen).
  int port() const;
  // Stops the broker if leading, leaves the group, closes the stores.
  // Idempotent.
  void Shutdown();

  class Impl;

 private:
  explicit BrokerGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::dms
