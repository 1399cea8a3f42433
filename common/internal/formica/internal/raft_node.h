// One member of a replicated group: a state machine kept identical on every
// member by Raft (Canonical's libraft, its libuv disk and TCP I/O). A daemon
// that replicates its state implements RaftStateMachine, starts a RaftNode
// with the `raft.*` section of its config, and sends every change through
// Propose on the leader. For daemons only; link formica_raft_node.
//
//   RaftNodeOptions options;                  // defaults
//   ConfigReader r(config);
//   ReadRaftSection(r, &options);             // raft.node_id, raft.peers, ...
//   FORMICA_RETURN_IF_ERROR(r.Finish());
//   FORMICA_ASSIGN_OR_RETURN(auto node, RaftNode::Start(options, &machine));
//   node->Propose(bytes, [](ProposeResult r) { /* r.status.ok(): committed */ });
//
// What an acknowledgement means: Propose's callback with an OK status runs
// only after the entry is durable (fdatasync) on a majority of the group and
// applied to this member's state machine. A member that is not the leader
// refuses at once (not_leader, naming the leader it knows), and nothing was
// appended. A leader deposed while the entry was in flight answers
// UNAVAILABLE: the outcome is unknown (the entry may still commit under the
// next leader), so callers retry with a key their state machine dedups on.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica {

class ConfigReader;

// A member of the group: its id (>= 1, unique) and "host:port" address,
// the host an IPv4 address or a host name (resolved at every connect, so a
// member that comes back on another IP is reached; libraft keeps the name).
struct RaftPeer {
  uint64_t id = 0;
  std::string address;
};

// The `raft.*` keys (docs/ha.md).
struct RaftNodeOptions {
  uint64_t node_id = 0;         // raft.node_id: this member's id, one of the peers'
  std::vector<RaftPeer> peers;  // raft.peers: "ID@HOST:PORT" each, this member included
  std::string listen;           // raft.listen: bind address; "" = its address in peers
  std::string data_dir;         // raft.data_dir: the log, term, vote and snapshots
  absl::Duration election_timeout = absl::Seconds(1);  // raft.election_timeout
  absl::Duration heartbeat = absl::Milliseconds(100);  // raft.heartbeat
  uint32_t snapshot_threshold = 1024;  // raft.snapshot_threshold: entries between snapshots
  uint32_t snapshot_trailing = 128;    // raft.snapshot_trailing: entries kept after one
  // raft.snapshot_timeout: how long the leader waits for a follower to take
  // a snapshot it sent before sending it again (libraft's default, 30 s).
  absl::Duration snapshot_timeout = absl::Seconds(30);

  // This member's address in `peers`, or "" when it is missing.
  std::string SelfAddress() const;
};

// Reads the `raft.*` keys into `options` (its values on entry are the
// defaults) and records in `reader` the first key that is wrong: a missing
// node id or data dir, a peer that is not "ID@HOST:PORT" (HOST an IPv4
// address or an RFC 1123 host name; not checked to resolve), a duplicate id or
// address, an even-sized group, this node missing from the peers, a
// heartbeat over half the election timeout.
void ReadRaftSection(ConfigReader& reader, RaftNodeOptions* options);

// What a daemon replicates. Every call comes from the node's own thread, one
// at a time, so an implementation needs no lock for the node's sake (it
// needs one if other threads read it). Apply must be deterministic: every
// member applies the same entries in the same order and must end in the
// same state.
class RaftStateMachine {
 public:
  virtual ~RaftStateMachine() = default;

  // Applies the committed entry at `index` (increasing, never repeated
  // within one process; after a restart the entries after the last snapshot
  // are applied again on top of Restore). Returns what the proposer's
  // callback receives as `output` (ignored on other members). A failure to
  // apply is not an option: a member that cannot apply must stop.
  virtual std::string Apply(uint64_t index, absl::string_view entry) = 0;

  // The whole state as bytes, taken every `snapshot_threshold` entries; the
  // log before it is then discarded. An error skips this snapshot.
  virtual absl::StatusOr<std::string> Snapshot() = 0;

  // Replaces the whole state with one Snapshot() made (at start, or when
  // the leader sends one to a member that fell behind its log).
  virtual absl::Status Restore(absl::string_view snapshot) = 0;
};

enum class RaftRole { kFollower, kCandidate, kLeader, kStopped };

const char* RaftRoleName(RaftRole role);

// What the node knows of the group at one moment.
struct RaftNodeStatus {
  RaftRole role = RaftRole::kFollower;
  uint64_t term = 0;
  RaftPeer leader;            // id 0: no leader known
  uint64_t last_applied = 0;  // index of the last entry applied here
  // Leader only: the first entry of this term is applied, so the state
  // machine holds everything committed by earlier leaders.
  bool leader_ready = false;
};

// The outcome of Propose or Barrier.
struct ProposeResult {
  // OK: committed on a majority and applied here. FAILED_PRECONDITION with
  // not_leader: refused, nothing appended; without it: proposed for a term
  // this member does not lead, nothing appended. UNAVAILABLE: leadership
  // lost in flight (outcome unknown) or the node is stopping.
  absl::Status status;
  bool not_leader = false;
  RaftPeer leader;     // with not_leader: the leader this member knows, if any
  uint64_t index = 0;  // OK: the entry's index
  uint64_t term = 0;   // OK: the term it was proposed and committed in
  std::string output;  // OK: what RaftStateMachine::Apply returned
};

using ProposeCallback = std::function<void(ProposeResult)>;

// Called on the node's thread when the role, term or known leader changes.
// A leader is reported once leader_ready (its term's first entry applied).
using RaftRoleCallback = std::function<void(const RaftNodeStatus&)>;

// Thread-safe: Propose, Barrier and status may be called from any thread.
// Callbacks run on the node's thread (or at once on the caller's, when the
// node is already stopped): they must not block and must not call Stop
// (they may call Propose). Snapshot runs on the node's thread too, so a
// large state pauses the member while it is taken.
class RaftNode {
 public:
  // Opens `options.data_dir` (created if missing). A fresh directory is
  // bootstrapped with `options.peers` (every member of a new group starts
  // with the same list); a used one is restarted from its log and
  // snapshots, and the peers given must be the group it stores (else
  // INVALID_ARGUMENT naming raft.peers). Then joins the group over TCP.
  // REQUIRES: `machine` outlives the node.
  static absl::StatusOr<std::unique_ptr<RaftNode>> Start(const RaftNodeOptions& options,
                                                         RaftStateMachine* machine,
                                                         RaftRoleCallback on_role = nullptr);
  ~RaftNode();  // Stop()
  RaftNode(const RaftNode&) = delete;
  RaftNode& operator=(const RaftNode&) = delete;

  // Appends `entry` to the group's log; `done` runs exactly once (see
  // ProposeResult). Proposals made while earlier ones are in flight share
  // disk writes and network messages.
  void Propose(std::string entry, ProposeCallback done);
  // The same, refused (FAILED_PRECONDITION, nothing appended) unless this
  // member leads in `expected_term` when the entry is appended: a proposer
  // that decided what to write as leader of one term never has it appended
  // in another (0: any term).
  void Propose(std::string entry, uint64_t expected_term, ProposeCallback done);
  std::future<ProposeResult> Propose(std::string entry, uint64_t expected_term = 0);

  // Completes OK once this member, as leader, has committed an entry after
  // every entry committed before the call and applied them all: a read of
  // the state machine after it sees every acknowledged write (a
  // linearizable read). Not on a follower (not_leader).
  void Barrier(ProposeCallback done);
  std::future<ProposeResult> Barrier();

  // As leader: hands leadership to the most up-to-date voting follower
  // (libraft's raft_transfer). OK once this member no longer leads; else
  // UNAVAILABLE (no follower took it within an election timeout, or none
  // can). Not on a follower (not_leader).
  void TransferLeadership(ProposeCallback done);

  RaftNodeStatus status() const;
  uint64_t id() const;

  // Leaves the group's traffic, fails what is queued or in flight with
  // UNAVAILABLE, closes the data dir and joins the thread. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit RaftNode(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica
