// One dsrd node on its own: publications live in the core's memory (a
// session's publications go with it), config entries and the boot epoch in
// a RegistryStore (RocksDB). Versions are (boot epoch << 32) + sequence,
// one per merged change, so they keep growing across restarts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "registry_backend.h"
#include "registry_store.h"
#include "validation.h"

namespace formica::registry {

class EmbeddedBackend final : public RegistryBackend {
 public:
  struct Options {
    std::string registry_id;  // this node, for Describe
    std::string listen;
    Limits limits;
  };
  // Takes the store's next boot epoch. `tables` are the core's.
  static absl::StatusOr<std::unique_ptr<EmbeddedBackend>> Open(Options options,
                                                               std::unique_ptr<RegistryStore> store,
                                                               CoreTables tables);

  uint64_t boot_epoch() const { return boot_epoch_; }

  void Shutdown() override {}
  RegistryStore* config_store() override { return store_.get(); }
  bool Reachable() const override { return true; }
  absl::Status CheckReachable() const override { return absl::OkStatus(); }
  bool views_may_block() const override { return false; }
  std::string identity() const override { return ""; }
  absl::string_view name() const override { return "the embedded store"; }

  // Versions come from one node: any difference means another node or a
  // wiped store.
  bool Stale(uint64_t have, uint64_t acked) const override { return acked != have; }
  void ServiceAdded(const std::string& name, ServiceState& state) override;
  void ServiceFlushed(ServiceState& state) override { NewVersion(state); }
  bool ReleaseService(const std::string& name, const ServiceState& state) override;
  absl::StatusOr<WatchedConfig> ConfigAdded(const std::string& key) override;
  void ConfigReleased(const std::string&) override {}

  std::optional<absl::StatusOr<SessionGrant>> OpenSession(const SessionRequest& request,
                                                          GrantDone later) override;
  void CloseSession(uint64_t) override {}
  absl::Status KillUnheldSession(uint64_t id) override;
  bool KeepAlive(uint64_t, std::function<void()>) override { return true; }
  void SessionEnded(Session& session, absl::string_view why, bool revoke) override;

  std::optional<absl::Status> Publish(Session& session, const v1::Publish& request) override;
  std::optional<absl::Status> Unpublish(Session& session, const v1::Unpublish& request) override;

  absl::Status ListServices(v1::ListServicesResponse* out) override;
  absl::Status GetService(const std::string& service, v1::ServiceSnapshot* out) override;
  absl::Status Describe(v1::ClusterInfo* out) override;

 private:
  EmbeddedBackend(Options options, std::unique_ptr<RegistryStore> store, CoreTables tables,
                  uint64_t epoch);
  // A change: a new version; the snapshot is rebuilt when first needed.
  void NewVersion(ServiceState& state);
  // Before the sequence would overflow into the epoch, a new epoch is
  // taken from the store.
  uint64_t NextVersion();

  const Options options_;
  std::unique_ptr<RegistryStore> store_;
  const CoreTables tables_;
  const uint64_t boot_epoch_;
  uint64_t epoch_;    // under the core's lock
  uint64_t seq_ = 0;  // under the core's lock
};

}  // namespace formica::registry
