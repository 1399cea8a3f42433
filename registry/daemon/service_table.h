// What the registry core knows of services and config entries: the
// instance set and version of each service someone here subscribes to (or,
// embedded, publishes), and each watched config entry. Plain data; the core
// and its backend change it under the core's lock.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "formica/registry/v1/registry.pb.h"
#include "session_table.h"

namespace formica::registry {

struct StoredConfig;

struct InstanceRecord {
  v1::Instance instance;
  uint64_t owner = 0;  // the publishing session
};

struct ServiceState {
  // False until the backend's instance set has been read; no push before.
  // `seen` is the newest backend revision applied.
  bool loaded = true;
  uint64_t seen = 0;
  uint64_t version = 0;
  Msg snapshot;  // built when first needed; reset by every change
  std::map<std::string, InstanceRecord> instances;  // by address
  std::set<uint64_t> subscribers;
};

struct WatchedConfig {
  bool loaded = true;  // as ServiceState::loaded
  uint64_t version = 0;
  Msg message;
  std::set<uint64_t> watchers;
};

using ServiceMap = std::map<std::string, ServiceState>;
using ConfigMap = std::map<std::string, WatchedConfig>;

bool SameInstance(const v1::Instance& a, const v1::Instance& b);
// The push a config entry's watchers get.
Msg ConfigMessage(const StoredConfig& stored);

}  // namespace formica::registry
