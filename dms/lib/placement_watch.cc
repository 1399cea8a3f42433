#include "placement_watch.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "formica/registry/client.h"

namespace formica::dms {

PlacementWatch::~PlacementWatch() {
  if (registry_ == nullptr) return;
  std::vector<uint64_t> watches;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [topic, k] : known_) {
      if (k.watch != 0) watches.push_back(k.watch);
    }
  }
  for (uint64_t w : watches) registry_->Unwatch(w);
}

absl::StatusOr<std::optional<Placement>> PlacementWatch::Get(const std::string& topic) {
  return Read(topic, false);
}

absl::StatusOr<std::optional<Placement>> PlacementWatch::Refresh(const std::string& topic) {
  return Read(topic, true);
}

absl::StatusOr<std::optional<Placement>> PlacementWatch::Read(const std::string& topic,
                                                              bool force) {
  if (registry_ == nullptr) return std::optional<Placement>();
  bool watching = false;
  {
    absl::MutexLock lock(&mu_);
    Known& k = known_[topic];
    if (!force) {
      // One first read at a time: callers that come meanwhile take its outcome.
      auto settled = [&k]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !k.reading; };
      mu_.Await(absl::Condition(&settled));
      if (k.read) {
        if (!k.error.ok()) return k.error;
        return k.placement;
      }
      // The registry did not answer the first read: the watch delivers the
      // placement once it does; until then the default group, at once (a
      // read per send would hold every send for the registry's timeout).
      if (k.unanswered) return std::optional<Placement>();
      k.reading = true;
    }
    watching = k.watch != 0;
  }
  absl::StatusOr<registry::ConfigValue> v = registry_->GetConfig(PlacementKey(topic));
  if (absl::IsNotFound(v.status())) v = registry::ConfigValue();  // no entry
  bool watched = watching;
  if (!watching) {
    absl::StatusOr<uint64_t> w =
        registry_->WatchConfig(PlacementKey(topic), [this, topic](const registry::ConfigValue& c) {
          Take(topic, c.version, c.exists, c.value);
        });
    bool extra = false;
    if (w.ok()) {
      absl::MutexLock lock(&mu_);
      uint64_t& watch = known_[topic].watch;
      extra = watch != 0;  // another caller's watch came first
      if (!extra) watch = *w;
      watched = true;
    }
    if (extra) registry_->Unwatch(*w);
  }
  if (!v.ok()) {
    absl::Status st = absl::UnavailableError(absl::StrCat(
        "reading the placement of topic '", topic, "' from the registry: ", v.status().message()));
    if (force) return st;
    {
      absl::MutexLock lock(&mu_);
      Known& k = known_[topic];
      k.reading = false;
      k.unanswered = watched;
      if (k.read) {  // the watch answered meanwhile
        if (!k.error.ok()) return k.error;
        return k.placement;
      }
    }
    // Never read yet: the default group, as before placements existed (a
    // queue moved away from it is refused there, and read again then; the
    // watch delivers the placement once the registry answers).
    SPDLOG_WARN("{}; sending to the default broker group until it answers",
                std::string(st.message()));
    return std::optional<Placement>();
  }
  Take(topic, v->version, v->exists, v->value);
  absl::MutexLock lock(&mu_);
  Known& k = known_[topic];
  if (!force) k.reading = false;
  if (!k.error.ok()) return k.error;
  return k.placement;
}

void PlacementWatch::Take(const std::string& topic, uint64_t version, bool exists,
                          const std::string& value) {
  std::vector<std::function<void(const std::optional<Placement>&)>> listeners;
  std::optional<Placement> placement;
  {
    absl::MutexLock lock(&mu_);
    Known& k = known_[topic];
    // Newer: a higher version, or at one version an entry over none (a key
    // never written reads as version 0; a deletion has a version of its own).
    auto order = [](uint64_t v, bool e) { return std::make_pair(v, e); };
    if (k.read && order(version, exists) < order(k.version, k.exists)) return;
    bool changed = !k.read || order(version, exists) > order(k.version, k.exists);
    k.read = true;
    k.version = version;
    k.exists = exists;
    k.error = absl::OkStatus();
    k.placement.reset();
    if (exists) {
      absl::StatusOr<Placement> p = ParsePlacement(value);
      if (p.ok()) {
        k.placement = *std::move(p);
      } else {
        k.error = absl::InvalidArgumentError(
            absl::StrCat("the registry entry ", PlacementKey(topic), ": ", p.status().message()));
        SPDLOG_WARN("{}", std::string(k.error.message()));
      }
    }
    if (!changed) return;
    listeners = k.listeners;
    placement = k.placement;
  }
  for (auto& l : listeners) l(placement);
}

void PlacementWatch::OnChange(const std::string& topic,
                              std::function<void(const std::optional<Placement>&)> changed) {
  absl::MutexLock lock(&mu_);
  known_[topic].listeners.push_back(std::move(changed));
}

}  // namespace formica::dms
