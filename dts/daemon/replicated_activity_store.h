// ReplicatedActivityStore: dtsd's activities on a Raft log (docs/ha.md).
// Every member keeps the applied state in its own local store (RocksDB);
// the leader's writes become log entries, applied on every member in the
// same order. Writes made without `sync` are buffered and proposed together
// by the next Sync() (GroupCommit's), so libraft's batching takes the place
// of the fsync batching: Sync returns OK only once everything written
// before it is committed on a majority and applied here. Reads come from
// the local store; a read of an activity with writes not applied yet waits
// for them (Sync), so the engine reads what it wrote.
//
// Writes are taken only while the coordinator leads (OpenForWrites); once
// closed, or once a proposal fails (leadership lost: the outcome of what was
// in flight is unknown), every write and Sync is refused UNAVAILABLE until
// the next OpenForWrites. Thread-safe; also the RaftStateMachine of the
// member's RaftNode.
//
//   ReplicatedActivityStore store(std::move(local), self_id);
//   store.SetApiAddress(server_address);
//   auto node = RaftNode::Start(options, &store, on_role).value();
//   store.Attach(node.get());
//   ...  // once leader_ready:
//   store.OpenForWrites(status.term);
//   uint64_t epoch = store.NextBootEpoch().value();
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "activity_store.h"
#include "formica/internal/raft_node.h"

namespace formica::dts {

class ReplicatedActivityStore final : public ActivityStore, public RaftStateMachine {
 public:
  // `local` holds the applied state; `self_id` is this member's raft id.
  ReplicatedActivityStore(std::unique_ptr<ActivityStore> local, uint64_t self_id);

  // REQUIRES: called once, before any write; `node` outlives this store's use.
  void Attach(RaftNode* node);
  // Where this member's API is reached, once its server runs: recorded in
  // the log with each epoch it takes, so followers can name the leader's.
  void SetApiAddress(const std::string& address);

  // Leadership: writes are taken after OpenForWrites and refused (UNAVAILABLE,
  // `refusal`) after CloseForWrites, which also drops what is buffered.
  // Every entry is proposed for `term` (the raft term this member leads in):
  // if the node's term has moved on, it is refused, never appended, so
  // nothing taken in one leadership commits in a later one. Each call
  // starts a new generation (see ActivityStore::generation).
  void OpenForWrites(uint64_t term);
  void CloseForWrites(const std::string& refusal);
  // False once closed or once a proposal failed (the leadership must be
  // taken afresh before writing again); refusal() says why.
  bool writable() const;
  std::string refusal() const;
  // Whether writes made without sync wait for the next Sync.
  bool HasBuffered() const;

  // The API address the member `raft_id` recorded when it last led, or "".
  std::string ApiAddressOf(uint64_t raft_id) const;

  // ActivityStore.
  absl::Status Put(const v1::Activity& activity, bool sync) override;
  absl::Status PutAction(const std::string& id, int index, const v1::Action& action,
                         bool sync) override;
  absl::Status PutWithActions(const v1::Activity& activity, int first_new, bool sync) override;
  absl::Status Sync() override;
  absl::StatusOr<std::optional<v1::Activity>> Get(const std::string& id) override;
  absl::Status Scan(const std::function<bool(const v1::Activity&)>& visit) override;
  absl::Status ScanFrom(const std::string& first_id,
                        const std::function<bool(const v1::Activity&)>& visit) override;
  absl::Status ScanNewestFirst(const std::function<bool(const v1::Activity&)>& visit) override;
  // Buffered as a write without sync: the next Sync carries it.
  absl::Status Delete(const std::string& id) override;
  // Taken through a committed log entry: greater than every epoch any
  // earlier leader of the group took, and at least the proposer's
  // wall-clock second (so a group created afresh does not reuse ids).
  // REQUIRES: open for writes.
  absl::StatusOr<uint64_t> NextBootEpoch() override;
  uint64_t syncs() const override;  // entries proposed
  uint64_t written_bytes() const override;
  uint64_t generation() const override;

  // RaftStateMachine: blind writes into the local store (replayed entries
  // end in the same state); a snapshot is every activity, whole.
  std::string Apply(uint64_t index, absl::string_view entry) override;
  absl::StatusOr<std::string> Snapshot() override;
  absl::Status Restore(absl::string_view snapshot) override;

 private:
  absl::Status Buffer(const std::string& id, std::string op, bool sync);
  void Completed(uint64_t seq, const std::vector<std::string>& ids, const ProposeResult& r);

  const std::unique_ptr<ActivityStore> local_;
  const uint64_t self_id_;
  RaftNode* node_ = nullptr;

  // Held while a batch is taken from the buffer and proposed, so batches
  // reach the log in the order their writes were made.
  absl::Mutex propose_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  bool writable_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t term_ ABSL_GUARDED_BY(mu_) = 0;        // the term writes are proposed for
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // one per Open and per Close
  uint64_t last_epoch_ ABSL_GUARDED_BY(mu_) = 0;  // applied state: the last epoch taken
  std::string refusal_ ABSL_GUARDED_BY(mu_) = "this dtsd does not lead its group";
  std::string buffer_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> buffer_ids_ ABSL_GUARDED_BY(mu_);
  // Activities with writes buffered or in flight: a read of one waits.
  absl::flat_hash_map<std::string, int> unapplied_ ABSL_GUARDED_BY(mu_);
  uint64_t proposed_ ABSL_GUARDED_BY(mu_) = 0;    // batches proposed
  uint64_t open_from_ ABSL_GUARDED_BY(mu_) = 1;   // the first batch of this leadership
  uint64_t done_upto_ ABSL_GUARDED_BY(mu_) = 0;   // every batch up to it answered
  std::set<uint64_t> done_ ABSL_GUARDED_BY(mu_);  // answered out of order
  // Batches that failed, with the answer for the writes they carried. A
  // sync reports those proposed since the leadership it was called in began.
  std::map<uint64_t, absl::Status> failed_ ABSL_GUARDED_BY(mu_);
  uint64_t written_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, std::string> api_addresses_ ABSL_GUARDED_BY(mu_);
  std::string api_address_ ABSL_GUARDED_BY(mu_);
};

}  // namespace formica::dts
