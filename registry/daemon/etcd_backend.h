// Cluster mode: the registry's data in etcd, through a ClusterLink. This
// node is a front for its client sessions: each session is an etcd lease,
// publications are keys under it, and the core's service table mirrors etcd
// for the services someone here subscribes to. Versions are etcd revisions,
// the same on every node.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cluster_link.h"
#include "registry_backend.h"
#include "validation.h"

namespace formica::registry {

class EtcdBackend final : public RegistryBackend {
 public:
  struct Options {
    std::string registry_id;  // this node's id in the cluster
    ClusterOptions cluster;
    Limits limits;
  };
  // Connects to etcd (see ClusterLink::Start). `listener` gets etcd's
  // changes; `tables` are the core's.
  static absl::StatusOr<std::unique_ptr<EtcdBackend>> Start(Options options,
                                                            BackendListener* listener,
                                                            CoreTables tables);
  ~EtcdBackend() override;

  void Shutdown() override { link_->Shutdown(); }
  RegistryStore* config_store() override { return config_store_.get(); }
  bool Reachable() const override { return link_->Reachable(); }
  absl::Status CheckReachable() const override;
  bool views_may_block() const override { return true; }
  std::string identity() const override { return link_->identity(); }
  absl::string_view name() const override { return "etcd"; }

  // A client that saw a newer revision elsewhere is not behind.
  bool Stale(uint64_t have, uint64_t acked) const override { return acked < have; }
  void ServiceAdded(const std::string& name, ServiceState& state) override;
  // The versions are the etcd revisions of the changes.
  void ServiceFlushed(ServiceState&) override {}
  bool ReleaseService(const std::string& name, const ServiceState& state) override;
  absl::StatusOr<WatchedConfig> ConfigAdded(const std::string& key) override;
  void ConfigReleased(const std::string& key) override { link_->UnwatchConfig(key); }

  std::optional<absl::StatusOr<SessionGrant>> OpenSession(const SessionRequest& request,
                                                          GrantDone later) override;
  void CloseSession(uint64_t id) override { link_->CloseSession(id); }
  absl::Status KillUnheldSession(uint64_t id) override;
  bool KeepAlive(uint64_t id, std::function<void()> renewed) override {
    link_->KeepAlive(id, std::move(renewed));
    return false;
  }
  void SessionEnded(Session& session, absl::string_view why, bool revoke) override;

  std::optional<absl::Status> Publish(Session& session, const v1::Publish& request) override;
  std::optional<absl::Status> Unpublish(Session& session, const v1::Unpublish& request) override;

  absl::Status ListServices(v1::ListServicesResponse* out) override;
  absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out) override;
  absl::Status Describe(v1::ClusterInfo* out) override { return link_->Describe(out); }

 private:
  EtcdBackend(Options options, std::unique_ptr<ClusterLink> link, CoreTables tables);
  // Hands a write's result to the core.
  std::function<void(absl::Status)> Later(const Session& session, uint64_t request_id) const;

  const Options options_;
  std::unique_ptr<ClusterLink> link_;
  std::unique_ptr<RegistryStore> config_store_;
  const CoreTables tables_;
};

}  // namespace formica::registry
