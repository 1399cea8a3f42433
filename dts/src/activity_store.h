// ActivityStore: where dtsd keeps its activities. One narrow interface (put,
// get, scan, boot epoch) so that the embedded engine (RocksDB) can later be
// joined by a replicated one. Thread-safe.
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

  // Writes the whole activity. With `sync` the write and every write before
  // it are on disk when this returns; concurrent synced writes share one
  // sync (group commit).
  virtual absl::Status Put(const v1::Activity& activity, bool sync) = 0;

  // Makes every write that returned before this call durable.
  virtual absl::Status Sync() = 0;

  virtual absl::StatusOr<std::optional<v1::Activity>> Get(const std::string& id) = 0;

  // Calls `visit` for every activity in id order (which is creation order);
  // stops when it returns false.
  virtual absl::Status Scan(const std::function<bool(const v1::Activity&)>& visit) = 0;
  // The same, newest first.
  virtual absl::Status ScanNewestFirst(const std::function<bool(const v1::Activity&)>& visit) = 0;

  virtual absl::Status Delete(const std::string& id) = 0;

  // A number greater than every earlier boot's, durable when returned.
  virtual absl::StatusOr<uint64_t> NextBootEpoch() = 0;

  // Syncs done since the store opened (synced Puts and Sync calls).
  virtual uint64_t syncs() const = 0;
};

// Opens (creating if needed) a RocksDB store in `directory`. FAILED_PRECONDITION
// when it cannot, e.g. another dtsd holds it.
absl::StatusOr<std::unique_ptr<ActivityStore>> OpenRocksDbActivityStore(
    const std::string& directory);

}  // namespace formica::dts
