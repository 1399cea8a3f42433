#include "config_watches.h"

#include "registry_store.h"

namespace formica::registry {

WatchedConfig* ConfigWatches::Find(const std::string& key) {
  auto it = configs_.find(key);
  return it == configs_.end() ? nullptr : &it->second;
}

absl::StatusOr<WatchedConfig*> ConfigWatches::Add(const std::string& key, uint64_t session) {
  WatchedConfig* watched = Find(key);
  if (watched == nullptr) {
    absl::StatusOr<WatchedConfig> first = backend_->ConfigAdded(key);
    if (!first.ok()) {
      return first.status();
    }
    watched = &configs_[key];
    *watched = std::move(*first);
  }
  watched->watchers.insert(session);
  return watched;
}

void ConfigWatches::Remove(const std::string& key, uint64_t session) {
  auto it = configs_.find(key);
  if (it == configs_.end()) {
    return;
  }
  it->second.watchers.erase(session);
  if (it->second.watchers.empty()) {
    configs_.erase(it);
    backend_->ConfigReleased(key);
  }
}

bool ConfigWatches::Apply(const StoredConfig& entry) {
  WatchedConfig* watched = Find(entry.key);
  if (watched == nullptr || !watched->loaded || entry.version <= watched->version) {
    return false;  // nobody watches it, its first read is due, or a newer change already won
  }
  watched->version = entry.version;
  watched->message = ConfigMessage(entry);
  return true;
}

void ConfigWatches::Load(WatchedConfig& watched, const StoredConfig& entry) {
  watched.loaded = true;
  watched.version = entry.version;
  watched.message = ConfigMessage(entry);
}

}  // namespace formica::registry
