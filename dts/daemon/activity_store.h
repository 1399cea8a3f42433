// ActivityStore: where dtsd keeps its activities. One narrow interface
// (activity records, action records, scan, boot epoch) so that the embedded
// engine (RocksDB) can later be joined by a replicated one. Thread-safe.
//
// An activity is stored as its own record (every field but `actions`) and
// one record per enlisted action, so enlisting writes only the new action
// however many came before it, and a decision or the end of an activity
// writes no payload.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "formica/dts/v1/dts.pb.h"

namespace formica::dts {

class ActivityStore {
 public:
  virtual ~ActivityStore() = default;

  // Writes the activity's own fields and, for each of its actions (already
  // written by PutAction), its outcome: state, attempts and last error,
  // never its payload. One atomic write. With `sync` the write and every
  // write before it are on disk when this returns.
  virtual absl::Status Put(const v1::Activity& activity, bool sync) = 0;

  // Writes action `index` of activity `id` whole (payload included), and
  // nothing else. With `sync` as Put.
  virtual absl::Status PutAction(const std::string& id, int index, const v1::Action& action,
                                 bool sync) = 0;

  // As PutAction for each action from `first_new` on, then Put, in one
  // atomic write where the store can (a decision that brings actions).
  virtual absl::Status PutWithActions(const v1::Activity& activity, int first_new, bool sync) {
    for (int i = first_new; i < activity.actions_size(); ++i) {
      if (absl::Status st = PutAction(activity.id(), i, activity.actions(i), false); !st.ok()) {
        return st;
      }
    }
    return Put(activity, sync);
  }

  // Makes every write that returned before this call durable; concurrent
  // callers may share one sync (group commit).
  virtual absl::Status Sync() = 0;

  // The whole activity, actions and payloads included.
  virtual absl::StatusOr<std::optional<v1::Activity>> Get(const std::string& id) = 0;

  // Calls `visit` with every activity's own fields (no actions; Get reads
  // them) in id order (which is creation order); stops when it returns false.
  virtual absl::Status Scan(const std::function<bool(const v1::Activity&)>& visit) = 0;
  // The same, from the first id at or after `first_id`.
  virtual absl::Status ScanFrom(const std::string& first_id,
                                const std::function<bool(const v1::Activity&)>& visit) {
    return Scan([&](const v1::Activity& a) { return a.id() < first_id || visit(a); });
  }
  // The same, newest first.
  virtual absl::Status ScanNewestFirst(const std::function<bool(const v1::Activity&)>& visit) = 0;

  // Removes the activity and its actions.
  virtual absl::Status Delete(const std::string& id) = 0;

  // A number greater than every earlier boot's, durable when returned.
  virtual absl::StatusOr<uint64_t> NextBootEpoch() = 0;

  // The period writes are taken in (a replicated store's leadership; 0 for
  // a store on its own disk, which has one). A Sync vouches only for writes
  // made in the generation it ends in: what an earlier one buffered may have
  // been dropped.
  virtual uint64_t generation() const { return 0; }

  // Syncs done since the store opened (synced writes and Sync calls).
  virtual uint64_t syncs() const = 0;
  // Bytes of records written since the store opened (keys and values, as
  // handed to the engine's log).
  virtual uint64_t written_bytes() const = 0;
};

// Opens (creating if needed) a RocksDB store in `directory`. A store written
// by a dtsd that kept each activity whole in one record (actions and
// payloads included) is converted to the record-per-action layout on open.
// FAILED_PRECONDITION when it cannot open, e.g. another dtsd holds it;
// DATA_LOSS when a record cannot be read.
absl::StatusOr<std::unique_ptr<ActivityStore>> OpenRocksDbActivityStore(
    const std::string& directory);

}  // namespace formica::dts
