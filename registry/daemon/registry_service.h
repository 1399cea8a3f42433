// The gRPC face of the registry: the Registry service, a thin adapter that
// turns each session stream into a SessionStream for RegistryCore and runs
// the calls that may block (store writes, etcd reads) on worker threads.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "registry_core.h"

namespace formica::registry {

// Runs jobs that may block (durable store writes, each an fsync; reads of
// etcd) off gRPC's callback threads, which must not block: `threads` jobs
// at a time, taken in order.
class Worker {
 public:
  explicit Worker(int threads);
  ~Worker() { Stop(); }

  void Run(std::function<void()> job);
  // Finishes the queued jobs, then stops. Idempotent.
  void Stop();

 private:
  void Loop();

  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

class RegistryService final : public v1::Registry::CallbackService {
 public:
  explicit RegistryService(RegistryCore* core) : core_(core) {}

  // Lets queued store writes and views finish; call once the server has
  // stopped.
  void StopWorker() {
    writer_.Stop();
    views_.Stop();
  }

  grpc::ServerBidiReactor<v1::ClientMessage, v1::ServerMessage>* Session(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ListServices(grpc::CallbackServerContext* context,
                                         const v1::ListServicesRequest*,
                                         v1::ListServicesResponse* response) override;
  grpc::ServerUnaryReactor* GetCluster(grpc::CallbackServerContext* context,
                                       const v1::GetClusterRequest*,
                                       v1::ClusterInfo* response) override;
  grpc::ServerUnaryReactor* GetService(grpc::CallbackServerContext* context,
                                       const v1::GetServiceRequest* request,
                                       v1::ServiceSnapshot* response) override;
  grpc::ServerUnaryReactor* GetConfig(grpc::CallbackServerContext* context,
                                      const v1::GetConfigRequest* request,
                                      v1::ConfigEntry* response) override;
  grpc::ServerUnaryReactor* ListConfig(grpc::CallbackServerContext* context,
                                       const v1::ListConfigRequest* request,
                                       v1::ListConfigResponse* response) override;
  grpc::ServerUnaryReactor* PutConfig(grpc::CallbackServerContext* context,
                                      const v1::PutConfigRequest* request,
                                      v1::PutConfigResponse* response) override;
  grpc::ServerUnaryReactor* DeleteConfig(grpc::CallbackServerContext* context,
                                         const v1::DeleteConfigRequest* request,
                                         v1::DeleteConfigResponse* response) override;
  grpc::ServerUnaryReactor* SetPushSwitch(grpc::CallbackServerContext* context,
                                          const v1::SetPushSwitchRequest* request,
                                          v1::PushSwitchState* response) override;
  grpc::ServerUnaryReactor* GetPushSwitch(grpc::CallbackServerContext* context,
                                          const v1::GetPushSwitchRequest*,
                                          v1::PushSwitchState* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest*,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* KillSession(grpc::CallbackServerContext* context,
                                        const v1::KillSessionRequest* request,
                                        v1::KillSessionResponse*) override;

 private:
  // An operator view. Embedded, it reads memory and the local store and
  // answers at once. In cluster mode it may read etcd, for up to
  // storage.etcd.request_timeout: it runs on the view threads, never on a
  // callback thread, and fails at once while this node cannot reach etcd
  // (checked again when it leaves the queue).
  grpc::ServerUnaryReactor* View(grpc::CallbackServerContext* context,
                                 std::function<absl::Status()> view);
  // A config write, on the writer thread; watchers here learn of it.
  using ConfigWrite = std::function<absl::StatusOr<StoredConfig>()>;
  // Runs `write` on the writer thread and answers; the act (`action`,
  // `act` and the new version) goes to the audit log.
  grpc::ServerUnaryReactor* Write(grpc::CallbackServerContext* context, ConfigWrite write,
                                  v1::ConfigEntry* out, const char* action, std::string act);

  // Views wait for etcd at most request_timeout each; a few run at once.
  static constexpr int kViewThreads = 4;

  RegistryCore* const core_;
  Worker writer_{1};
  Worker views_{kViewThreads};
};

}  // namespace formica::registry
