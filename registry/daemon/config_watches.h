// The config entries watched through this node: each entry's newest value
// and version and the sessions watching it. The backend supplies an entry's
// first value when its first watcher comes (at once embedded; in cluster
// mode later, the entry loading until then) and hears when the last goes.
//
// Not thread-safe: RegistryCore holds its lock around every call.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "registry_backend.h"
#include "service_table.h"

namespace formica::registry {

struct StoredConfig;

class ConfigWatches {
 public:
  // Set once, before any other call. Borrowed.
  void set_backend(RegistryBackend* backend) { backend_ = backend; }

  // Null if nobody here watches `key`.
  WatchedConfig* Find(const std::string& key);
  // `session` watches `key`; a new entry is read from the backend first
  // (its error, if the read fails, and nothing changes).
  absl::StatusOr<WatchedConfig*> Add(const std::string& key, uint64_t session);
  // `session` stops watching `key`; the entry goes with its last watcher.
  void Remove(const std::string& key, uint64_t session);
  // A change to a loaded entry: whether it is newer than what the watchers
  // have (then the entry holds it and the caller schedules a push).
  bool Apply(const StoredConfig& entry);
  // The first value of an entry still loading.
  void Load(WatchedConfig& watched, const StoredConfig& entry);

 private:
  RegistryBackend* backend_ = nullptr;
  ConfigMap configs_;
};

}  // namespace formica::registry
