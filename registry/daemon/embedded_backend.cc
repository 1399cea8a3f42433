#include "embedded_backend.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "formica/registry/v1/registry.pb.h"

namespace formica::registry {

absl::StatusOr<std::unique_ptr<EmbeddedBackend>> EmbeddedBackend::Open(
    Options options, std::unique_ptr<RegistryStore> store, CoreTables tables) {
  absl::StatusOr<uint64_t> epoch = store->NextBootEpoch();
  if (!epoch.ok()) {
    return epoch.status();
  }
  return std::unique_ptr<EmbeddedBackend>(
      new EmbeddedBackend(std::move(options), std::move(store), std::move(tables), *epoch));
}

EmbeddedBackend::EmbeddedBackend(Options options, std::unique_ptr<RegistryStore> store,
                                 CoreTables tables, uint64_t epoch)
    : options_(std::move(options)),
      store_(std::move(store)),
      tables_(std::move(tables)),
      boot_epoch_(epoch),
      epoch_(epoch) {}

uint64_t EmbeddedBackend::NextVersion() {
  if (++seq_ >= (uint64_t{1} << 32)) {
    absl::StatusOr<uint64_t> next = store_->NextBootEpoch();
    epoch_ = next.ok() ? *next : epoch_ + 1;
    seq_ = 1;
  }
  return (epoch_ << 32) | seq_;
}

void EmbeddedBackend::NewVersion(ServiceState& state) {
  state.version = NextVersion();
  state.snapshot.reset();
}

void EmbeddedBackend::ServiceAdded(const std::string&, ServiceState& state) { NewVersion(state); }

bool EmbeddedBackend::ReleaseService(const std::string&, const ServiceState& state) {
  return state.instances.empty();  // the instances live here
}

absl::StatusOr<WatchedConfig> EmbeddedBackend::ConfigAdded(const std::string& key) {
  absl::StatusOr<StoredConfig> stored = store_->GetConfig(key);
  if (!stored.ok()) {
    return stored.status();
  }
  stored->key = key;
  WatchedConfig watched;
  watched.version = stored->version;
  watched.message = ConfigMessage(*stored);
  return watched;
}

std::optional<absl::StatusOr<SessionGrant>> EmbeddedBackend::OpenSession(
    const SessionRequest& request, GrantDone) {
  SessionGrant grant;
  grant.lease = request.lease;
  if (request.resume_id != 0) {
    if (tables_.sessions->Find(request.resume_id) == nullptr) {
      return absl::StatusOr<SessionGrant>(absl::NotFoundError(
          absl::StrCat("session ", request.resume_id,
                       " not found: its lease lapsed or it never existed; open a new session")));
    }
    grant.id = request.resume_id;
    grant.resumed = true;
    return absl::StatusOr<SessionGrant>(std::move(grant));
  }
  grant.id = tables_.sessions->NewId();
  return absl::StatusOr<SessionGrant>(std::move(grant));
}

absl::Status EmbeddedBackend::KillUnheldSession(uint64_t id) {
  return absl::NotFoundError(absl::StrCat("session ", id, " not found"));
}

void EmbeddedBackend::SessionEnded(Session& session, absl::string_view why, bool) {
  SPDLOG_INFO("session {} of '{}' ended: {}; {} publication(s) removed", session.id,
              session.client_name, std::string(why), session.publications.size());
  for (const auto& [service, address] : session.publications) {
    auto s = tables_.services->find(service);
    if (s == tables_.services->end()) {
      continue;
    }
    auto inst = s->second.instances.find(address);
    if (inst != s->second.instances.end() && inst->second.owner == session.id) {
      s->second.instances.erase(inst);
      tables_.mark_dirty(service);
    }
  }
}

std::optional<absl::Status> EmbeddedBackend::Publish(Session& session, const v1::Publish& request) {
  const v1::Instance& instance = request.instance();
  if (absl::Status st = ValidateInstance(instance, options_.limits); !st.ok()) {
    return st;
  }
  auto [entry, inserted] = tables_.services->try_emplace(instance.service());
  ServiceState& state = entry->second;
  if (inserted) {
    ServiceAdded(instance.service(), state);
  }
  auto it = state.instances.find(instance.address());
  if (it != state.instances.end()) {
    if (it->second.owner == session.id && SameInstance(it->second.instance, instance)) {
      return absl::OkStatus();  // a replay after reconnect: nothing changed
    }
    if (it->second.owner != session.id) {
      // A restarted provider took its address back before the old lease lapsed.
      if (Session* old = tables_.sessions->Find(it->second.owner); old != nullptr) {
        old->publications.erase({instance.service(), instance.address()});
      }
    }
  }
  state.instances[instance.address()] = InstanceRecord{instance, session.id};
  session.publications.insert({instance.service(), instance.address()});
  tables_.mark_dirty(instance.service());
  return absl::OkStatus();
}

std::optional<absl::Status> EmbeddedBackend::Unpublish(Session& session,
                                                       const v1::Unpublish& request) {
  auto not_found =
      absl::NotFoundError(absl::StrCat("instance ", request.address(), " of service '",
                                       request.service(), "' is not published by this session"));
  if (session.publications.erase({request.service(), request.address()}) == 0) {
    return not_found;
  }
  auto s = tables_.services->find(request.service());
  if (s == tables_.services->end()) {
    return not_found;
  }
  auto it = s->second.instances.find(request.address());
  if (it != s->second.instances.end() && it->second.owner == session.id) {
    s->second.instances.erase(it);
    tables_.mark_dirty(request.service());
  }
  return absl::OkStatus();
}

absl::Status EmbeddedBackend::ListServices(v1::ListServicesResponse* out) {
  absl::MutexLock lock(tables_.mu);
  for (const auto& [name, state] : *tables_.services) {
    v1::ServiceSummary* s = out->add_services();
    s->set_service(name);
    s->set_version(state.version);
    s->set_instances(static_cast<uint32_t>(state.instances.size()));
    s->set_subscribers(static_cast<uint32_t>(state.subscribers.size()));
  }
  return absl::OkStatus();
}

absl::Status EmbeddedBackend::GetService(const std::string& service, v1::ServiceSnapshot* out) {
  absl::MutexLock lock(tables_.mu);
  auto it = tables_.services->find(service);
  if (it == tables_.services->end()) {
    return absl::NotFoundError(
        absl::StrCat("service '", service, "' is not known to the registry"));
  }
  out->set_service(service);
  out->set_version(it->second.version);
  for (const auto& [address, record] : it->second.instances) {
    *out->add_instances() = record.instance;
  }
  return absl::OkStatus();
}

absl::Status EmbeddedBackend::Describe(v1::ClusterInfo* out) {
  out->set_mode("embedded");
  v1::ClusterNode* node = out->add_nodes();
  node->set_id(options_.registry_id);
  node->set_address(options_.listen);
  node->set_self(true);
  return absl::OkStatus();
}

}  // namespace formica::registry
