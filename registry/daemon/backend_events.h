// What a registry backend reports to the registry core as the data it
// holds changes: a watched service's instances, a watched config entry, a
// session's lease gone. Shared by RegistryBackend and ClusterLink.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace formica::registry {

struct StoredConfig;
namespace v1 {
class Instance;
}  // namespace v1

// One change to a watched service's instance set.
struct InstanceChange {
  std::string address;
  std::shared_ptr<const v1::Instance> instance;  // null: the instance left
  uint64_t owner = 0;                            // the session (lease) holding it
};

// Called on the backend's own threads, never while the backend holds a lock
// of its own, so the listener may call back into the backend.
class BackendListener {
 public:
  virtual ~BackendListener() = default;
  // `reset`: `changes` is the whole instance set at `revision` (first load,
  // or a reload after the watch fell behind the store's compaction).
  virtual void OnServiceUpdate(const std::string& service, uint64_t revision, bool reset,
                               std::vector<InstanceChange> changes) = 0;
  virtual void OnConfigUpdate(const StoredConfig& entry) = 0;
  // A session's lease is gone from the backend (it lapsed or was revoked).
  virtual void OnLeaseLost(uint64_t session_id) = 0;
};

}  // namespace formica::registry
