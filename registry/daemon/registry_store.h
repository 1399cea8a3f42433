// Where the registry keeps what must survive a restart: config entries and
// the boot epoch that keeps service versions growing across restarts.
// Publications are session-bound and live in memory in embedded mode.
//
// One interface, one implementation per engine: RocksDB (embedded, the
// default) here; an etcd-backed store can implement the same contract.
// Implementations are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace formica::registry {

struct StoredConfig {
  std::string key;
  std::string value;
  uint64_t version = 0;  // store revision of the last change; 0 = never existed
  bool exists = false;
};

class RegistryStore {
 public:
  virtual ~RegistryStore() = default;

  // Durably advances and returns the boot epoch: above every earlier one and
  // at least the current Unix time in seconds.
  virtual absl::StatusOr<uint64_t> NextBootEpoch() = 0;

  // The entry, or exists=false with the revision of its deletion (0 if never
  // written).
  virtual absl::StatusOr<StoredConfig> GetConfig(absl::string_view key) = 0;
  // Live entries whose key starts with `prefix`, in key order.
  virtual absl::StatusOr<std::vector<StoredConfig>> ListConfig(absl::string_view prefix) = 0;
  // Writes the entry durably. With `expected_version`, writes only if the
  // current version equals it (0: the key must not exist); otherwise
  // FAILED_PRECONDITION naming both versions.
  virtual absl::StatusOr<StoredConfig> PutConfig(absl::string_view key, absl::string_view value,
                                                 std::optional<uint64_t> expected_version) = 0;
  // Deletes durably, leaving a tombstone version. NOT_FOUND if absent.
  virtual absl::StatusOr<StoredConfig> DeleteConfig(absl::string_view key,
                                                    std::optional<uint64_t> expected_version) = 0;
};

// Opens (creating if needed) the embedded store in `directory`. Every write
// is synced to disk before it returns.
absl::StatusOr<std::unique_ptr<RegistryStore>> OpenRocksDbRegistryStore(
    const std::string& directory);

}  // namespace formica::registry
