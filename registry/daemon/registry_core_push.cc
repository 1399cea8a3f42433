// RegistryCore: services, config watches and pushes; the sweep of leases
// and retries; the backend's changes.
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "formica/common/clock.h"
#include "formica/registry/v1/registry.pb.h"
#include "registry_core.h"
#include "registry_store.h"

namespace formica::registry {

void RegistryCore::EnqueueService(Session& session, const std::string& service) {
  if (pushes_.TakeService(service)) {
    // A change is waiting for the merge window: publish it now rather than
    // show this subscriber new content under the old version (and everyone
    // the same content again under a new one).
    FlushService(service);
    if (services_.count(service) > 0 && services_[service].subscribers.count(session.id) > 0) {
      return;  // FlushService queued it for this session too
    }
  }
  auto s = services_.find(service);
  if (s == services_.end() || !s->second.loaded) {
    return;
  }
  session.pending[ServiceTopic(service)] = CurrentSnapshot(service, s->second);
}

void RegistryCore::FlushService(const std::string& name) {
  auto it = services_.find(name);
  if (it == services_.end()) {
    return;
  }
  backend_->ServiceFlushed(it->second);
  for (uint64_t id : it->second.subscribers) {
    if (Session* session = sessions_.Find(id); session != nullptr) {
      EnqueueService(*session, name);
    }
  }
  MaybeForgetService(name);
}

void RegistryCore::EnqueueConfig(Session& session, const std::string& key) {
  WatchedConfig* c = configs_.Find(key);
  if (c == nullptr || !c->loaded) {
    return;
  }
  session.pending[ConfigTopic(key)] = c->message;
}

ServiceState& RegistryCore::EnsureService(const std::string& name) {
  auto [it, inserted] = services_.try_emplace(name);
  if (inserted) {
    backend_->ServiceAdded(name, it->second);
  }
  return it->second;
}

const Msg& RegistryCore::CurrentSnapshot(const std::string& name, ServiceState& state) {
  if (state.snapshot != nullptr) {
    return state.snapshot;
  }
  auto message = std::make_shared<v1::ServerMessage>();
  v1::ServiceSnapshot* snapshot = message->mutable_service();
  snapshot->set_service(name);
  snapshot->set_version(state.version);
  for (const auto& [address, record] : state.instances) {
    *snapshot->add_instances() = record.instance;
  }
  state.snapshot = std::move(message);
  return state.snapshot;
}

void RegistryCore::MaybeForgetService(const std::string& name) {
  auto it = services_.find(name);
  if (it == services_.end() || !it->second.subscribers.empty() || pushes_.IsDirty(name)) {
    return;
  }
  if (backend_->ReleaseService(name, it->second)) {
    services_.erase(it);
  }
}

void RegistryCore::ConfigChanged(const StoredConfig& entry) {
  absl::MutexLock lock(&mu_);
  ApplyConfig(entry);
}

void RegistryCore::ApplyConfig(const StoredConfig& entry) {
  if (configs_.Apply(entry)) {
    pushes_.MarkConfigDirty(entry.key);
  }
}

void RegistryCore::Flush() {
  PushScheduler::Batch batch = pushes_.TakeBatch();
  for (const std::string& name : batch.services) {
    FlushService(name);
  }
  for (const std::string& key : batch.configs) {
    WatchedConfig* watched = configs_.Find(key);
    if (watched == nullptr) {
      continue;
    }
    for (uint64_t id : watched->watchers) {
      if (Session* session = sessions_.Find(id); session != nullptr) {
        EnqueueConfig(*session, key);
      }
    }
  }
  for (auto& [id, session] : sessions_.all()) {
    Pump(session);
  }
}

// Push what changed meanwhile (newest only) and bring every subscriber to
// the current version.
void RegistryCore::Release() {
  Flush();
  for (auto& [id, session] : sessions_.all()) {
    for (auto& [name, sub] : session.services) {
      auto s = services_.find(name);
      if (s != services_.end() && Stale(s->second.version, sub.acked)) {
        EnqueueService(session, name);
      }
    }
    for (auto& [key, sub] : session.configs) {
      WatchedConfig* c = configs_.Find(key);
      if (c != nullptr && Stale(c->version, sub.acked)) {
        EnqueueConfig(session, key);
      }
    }
    Pump(session);
  }
}

// ---------------------------------------------------------------------------
// Sweeps

void RegistryCore::CheckBackend() {
  // A node cut off from its backend cannot renew its clients' leases: send
  // the clients to other nodes before the leases lapse. They resume there.
  bool reachable = backend_->Reachable();
  if (!reachable && backend_reachable_) {
    SPDLOG_WARN(
        "{} does not answer this node; ending every session stream so clients "
        "resume on other nodes",
        std::string(backend_->name()));
    for (auto& [id, session] : sessions_.all()) {
      if (session.stream != nullptr) {
        SessionStream* stream = session.stream;
        session.stream = nullptr;
        RequestFinish(
            stream, absl::UnavailableError(absl::StrCat(
                        "this registry node lost ", backend_->name(), "; resume on another node")));
      }
    }
  } else if (reachable && !backend_reachable_) {
    SPDLOG_INFO("{} answers this node again", std::string(backend_->name()));
  }
  backend_reachable_ = reachable;
}

void RegistryCore::RetryUnacked() {
  absl::Time now = clock_->Now();
  for (auto& [id, session] : sessions_.all()) {
    if (session.stream == nullptr) {
      continue;
    }
    bool queued = false;
    for (auto& [name, sub] : session.services) {
      auto s = services_.find(name);
      if (sub.sent > sub.acked && now - sub.sent_at >= options_.push_retry &&
          s != services_.end() && Stale(s->second.version, sub.acked) &&
          session.pending.count(ServiceTopic(name)) == 0) {
        EnqueueService(session, name);
        queued = true;
      }
    }
    for (auto& [key, sub] : session.configs) {
      WatchedConfig* c = configs_.Find(key);
      if (sub.sent > sub.acked && now - sub.sent_at >= options_.push_retry && c != nullptr &&
          Stale(c->version, sub.acked) && session.pending.count(ConfigTopic(key)) == 0) {
        EnqueueConfig(session, key);
        queued = true;
      }
    }
    if (queued) {
      Pump(session);
    }
  }
}

void RegistryCore::Sweep() {
  CheckBackend();
  if (pushes_.EndWarmupIfDue()) {
    SPDLOG_INFO("warm-up over: pushes enabled");
    if (!pushes_.stop_push()) {
      Release();
    }
  }
  for (uint64_t id : sessions_.Expired()) {
    Session& session = *sessions_.Find(id);
    if (session.stream != nullptr) {
      RequestFinish(session.stream,
                    absl::UnavailableError(absl::StrCat("session ", id, ": lease of ",
                                                        absl::FormatDuration(session.lease),
                                                        " lapsed without a heartbeat")));
    }
    // In cluster mode the client may have resumed on another node: the
    // backend ends the lease if nobody renews it.
    RemoveSession(id, "lease lapsed", false);
  }
  if (Held()) {
    return;
  }
  RetryUnacked();
  if (pushes_.Due()) {
    Flush();
  }
}

void RegistryCore::Tick() {
  absl::MutexLock lock(&mu_);
  Sweep();
}

void RegistryCore::StartMaintenance() {
  maintenance_ = std::thread([this] { MaintenanceLoop(); });
}

void RegistryCore::StopMaintenance() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (maintenance_.joinable()) {
    maintenance_.join();
  }
}

void RegistryCore::MaintenanceLoop() {
  absl::Time next_sweep = absl::Now();
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    absl::Time wake = next_sweep;
    if (pushes_.scheduled() && !Held()) {
      // The due time is on the injected clock; convert the remaining wait.
      wake = std::min(wake, absl::Now() + (pushes_.due_at() - clock_->Now()));
    }
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || pushes_.Due(); };
    mu_.AwaitWithDeadline(absl::Condition(&ready), wake);
    if (stopping_) {
      break;
    }
    absl::Time real_now = absl::Now();
    if (real_now >= next_sweep) {
      Sweep();
      next_sweep = real_now + options_.sweep_interval;
    } else if (pushes_.Due()) {
      Flush();
    }
  }
}

// ---------------------------------------------------------------------------
// The backend's changes

void RegistryCore::OnServiceUpdate(const std::string& service, uint64_t revision, bool reset,
                                   std::vector<InstanceChange> changes) {
  absl::MutexLock lock(&mu_);
  auto it = services_.find(service);
  if (it == services_.end() || revision < it->second.seen) {
    return;  // nobody here subscribes any more, or an older read
  }
  ServiceState& state = it->second;
  if (!reset && !state.loaded) {
    return;  // a late event of an earlier watch; the fresh read is on its way
  }
  bool first = !state.loaded;
  bool changed = first;
  if (reset) {
    std::map<std::string, InstanceRecord> fresh;
    for (InstanceChange& change : changes) {
      fresh[change.address] = InstanceRecord{*change.instance, change.owner};
    }
    if (!changed) {
      changed = fresh.size() != state.instances.size();
      for (auto a = fresh.begin(), b = state.instances.begin(); !changed && a != fresh.end();
           ++a, ++b) {
        changed = a->first != b->first || !SameInstance(a->second.instance, b->second.instance);
      }
    }
    state.instances = std::move(fresh);
  } else {
    for (InstanceChange& change : changes) {
      auto inst = state.instances.find(change.address);
      if (change.instance == nullptr) {
        if (inst != state.instances.end()) {
          state.instances.erase(inst);
          changed = true;
        }
      } else if (inst == state.instances.end()) {
        state.instances[change.address] = InstanceRecord{*change.instance, change.owner};
        changed = true;
      } else {
        // A replay on reconnect or a move to another session writes the
        // same instance again: no new version for the subscribers.
        if (!SameInstance(inst->second.instance, *change.instance)) {
          inst->second.instance = *change.instance;
          changed = true;
        }
        inst->second.owner = change.owner;
      }
    }
  }
  state.loaded = true;
  state.seen = revision;
  if (!changed) {
    return;
  }
  state.version = revision;
  state.snapshot.reset();
  if (!first) {
    MarkDirty(service);
    return;
  }
  if (Held()) {
    return;
  }
  for (uint64_t id : state.subscribers) {
    Session* session = sessions_.Find(id);
    if (session == nullptr) {
      continue;
    }
    auto sub = session->services.find(service);
    if (sub != session->services.end() && Stale(state.version, sub->second.acked)) {
      EnqueueService(*session, service);
      Pump(*session);
    }
  }
}

void RegistryCore::OnConfigUpdate(const StoredConfig& entry) {
  absl::MutexLock lock(&mu_);
  WatchedConfig* found = configs_.Find(entry.key);
  if (found == nullptr) {
    return;
  }
  if (found->loaded) {
    ApplyConfig(entry);
    return;
  }
  WatchedConfig& watched = *found;
  configs_.Load(watched, entry);
  if (Held()) {
    return;
  }
  for (uint64_t id : watched.watchers) {
    Session* session = sessions_.Find(id);
    if (session == nullptr) {
      continue;
    }
    auto sub = session->configs.find(entry.key);
    if (sub != session->configs.end() && Stale(watched.version, sub->second.acked)) {
      EnqueueConfig(*session, entry.key);
      Pump(*session);
    }
  }
}

void RegistryCore::OnLeaseLost(uint64_t session_id) {
  absl::MutexLock lock(&mu_);
  Session* session = sessions_.Find(session_id);
  if (session == nullptr) {
    return;
  }
  if (session->stream != nullptr) {
    RequestFinish(session->stream,
                  absl::NotFoundError(absl::StrCat("session ", session_id,
                                                   " lapsed in the cluster; open a new session")));
  }
  RemoveSession(session_id, absl::StrCat("its ", backend_->name(), " lease lapsed"), false);
}

}  // namespace formica::registry
