#include "etcd_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formica/registry/v1/registry.pb.h"
#include "registry_store.h"

namespace formica::registry {

absl::StatusOr<std::unique_ptr<EtcdBackend>> EtcdBackend::Start(Options options,
                                                                BackendListener* listener,
                                                                CoreTables tables) {
  ClusterOptions cluster = options.cluster;
  cluster.node_id = options.registry_id;
  absl::StatusOr<std::unique_ptr<ClusterLink>> link = ClusterLink::Start(cluster, listener);
  if (!link.ok()) {
    return link.status();
  }
  return std::unique_ptr<EtcdBackend>(
      new EtcdBackend(std::move(options), std::move(*link), std::move(tables)));
}

EtcdBackend::EtcdBackend(Options options, std::unique_ptr<ClusterLink> link, CoreTables tables)
    : options_(std::move(options)),
      link_(std::move(link)),
      config_store_(link_->NewConfigStore()),
      tables_(std::move(tables)) {}

EtcdBackend::~EtcdBackend() { link_->Shutdown(); }

absl::Status EtcdBackend::CheckReachable() const {
  if (!link_->Reachable()) {
    return absl::UnavailableError(absl::StrCat("this registry node cannot reach etcd at ",
                                               absl::StrJoin(link_->options().endpoints, ","),
                                               "; ask another node"));
  }
  return absl::OkStatus();
}

void EtcdBackend::ServiceAdded(const std::string& name, ServiceState& state) {
  state.loaded = false;
  link_->WatchService(name);
}

bool EtcdBackend::ReleaseService(const std::string& name, const ServiceState&) {
  // Instances here only mirror etcd for local subscribers.
  link_->UnwatchService(name);
  return true;
}

absl::StatusOr<WatchedConfig> EtcdBackend::ConfigAdded(const std::string& key) {
  WatchedConfig watched;
  watched.loaded = false;  // etcd's value arrives through OnConfigUpdate
  link_->WatchConfig(key);
  return watched;
}

// A session is an etcd lease (whole seconds, at least etcd's minimum of
// 2 s). A new one is granted; a resumed one is taken over from whichever
// node held it, with the publications still under its lease. Even a session
// held here is checked with etcd: its lease may be gone, and a node that
// cannot reach etcd must send the client elsewhere.
std::optional<absl::StatusOr<SessionGrant>> EtcdBackend::OpenSession(const SessionRequest& request,
                                                                     GrantDone later) {
  if (!link_->Reachable()) {
    return absl::StatusOr<SessionGrant>(
        absl::UnavailableError("this registry node cannot reach etcd; use another node"));
  }
  int64_t ttl =
      std::max<int64_t>(2, absl::ToInt64Seconds(absl::Ceil(request.lease, absl::Seconds(1))));
  absl::Duration lease = absl::Seconds(ttl);
  v1::SessionRecord record;
  record.set_client_name(request.client_name);
  record.set_peer(request.peer);
  record.set_identity(request.identity);
  record.set_node(options_.registry_id);
  record.set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(lease)));
  if (request.resume_id != 0) {
    uint64_t id = request.resume_id;
    link_->ResumeSession(id, record, [id, later](absl::StatusOr<ClusterLink::Resumed> resumed) {
      if (!resumed.ok()) {
        later(resumed.status());
        return;
      }
      SessionGrant grant;
      grant.id = id;
      grant.lease = absl::Seconds(resumed->ttl_seconds);
      grant.resumed = true;
      grant.record_revision = resumed->record_revision;
      grant.publications = std::move(resumed->publications);
      later(std::move(grant));
    });
    return std::nullopt;
  }
  link_->OpenSession(ttl, record, [lease, later](absl::StatusOr<ClusterLink::Opened> opened) {
    if (!opened.ok()) {
      later(absl::UnavailableError(
          absl::StrCat("cannot open a session: ", opened.status().message())));
      return;
    }
    SessionGrant grant;
    grant.id = opened->session_id;
    grant.lease = lease;
    grant.record_revision = opened->record_revision;
    later(std::move(grant));
  });
  return std::nullopt;
}

std::function<void(absl::Status)> EtcdBackend::Later(const Session& session,
                                                     uint64_t request_id) const {
  return [done = tables_.write_done, id = session.id, incarnation = session.record_revision,
          request_id](absl::Status status) { done(id, incarnation, request_id, status); };
}

absl::Status EtcdBackend::KillUnheldSession(uint64_t id) {
  // Held by another node, or detached: revoking the lease ends it there.
  link_->CloseSession(id);
  return absl::OkStatus();
}

void EtcdBackend::SessionEnded(Session& session, absl::string_view why, bool revoke) {
  // etcd removes the publications with the lease; the watches bring it here.
  if (revoke) {
    link_->CloseSession(session.id);
  }
  SPDLOG_INFO("session {} of '{}' left this node: {}{}", session.id, session.client_name,
              std::string(why), revoke ? "; its lease is revoked" : "");
}

std::optional<absl::Status> EtcdBackend::Publish(Session& session, const v1::Publish& request) {
  const v1::Instance& instance = request.instance();
  if (absl::Status st = ValidateInstance(instance, options_.limits); !st.ok()) {
    return st;
  }
  session.publications.insert({instance.service(), instance.address()});
  link_->Publish(session.id, session.record_revision, instance,
                 Later(session, request.request_id()));
  return std::nullopt;
}

std::optional<absl::Status> EtcdBackend::Unpublish(Session& session, const v1::Unpublish& request) {
  if (session.publications.erase({request.service(), request.address()}) == 0) {
    return absl::NotFoundError(absl::StrCat("instance ", request.address(), " of service '",
                                            request.service(),
                                            "' is not published by this session"));
  }
  link_->Unpublish(session.id, session.record_revision, request.service(), request.address(),
                   Later(session, request.request_id()));
  return std::nullopt;
}

absl::Status EtcdBackend::ListServices(v1::ListServicesResponse* out) {
  // The cluster's services from etcd; subscribers are this node's.
  if (absl::Status st = link_->ListServices(out); !st.ok()) {
    return st;
  }
  absl::MutexLock lock(tables_.mu);
  for (v1::ServiceSummary& summary : *out->mutable_services()) {
    auto it = tables_.services->find(summary.service());
    if (it != tables_.services->end()) {
      summary.set_subscribers(static_cast<uint32_t>(it->second.subscribers.size()));
    }
  }
  return absl::OkStatus();
}

absl::Status EtcdBackend::GetService(const std::string& service, v1::ServiceSnapshot* out) {
  {
    absl::MutexLock lock(tables_.mu);
    auto it = tables_.services->find(service);
    if (it != tables_.services->end() && it->second.loaded) {
      out->set_service(service);
      out->set_version(it->second.version);
      for (const auto& [address, record] : it->second.instances) {
        *out->add_instances() = record.instance;
      }
      return absl::OkStatus();
    }
  }
  return link_->GetService(service, out);
}

}  // namespace formica::registry
