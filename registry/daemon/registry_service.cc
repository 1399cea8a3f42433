#include "registry_service.h"

#include <spdlog/spdlog.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/audit_log.h"
#include "formica/internal/credentials.h"
#include "formica/internal/permissions.h"
#include "registry_store.h"

namespace formica::registry {
namespace {

// One session stream. Deletes itself when gRPC is done with it; the core
// decides what it reads and writes.
class SessionReactor final : public grpc::ServerBidiReactor<v1::ClientMessage, v1::ServerMessage>,
                             public SessionStream {
 public:
  SessionReactor(RegistryCore* core, std::string peer, std::string identity)
      : SessionStream(std::move(peer), std::move(identity), NextSerial()), core_(core) {
    StartRead(&request_);
    core_->StreamStarted(this);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      core_->StreamEnded(this);
      return;
    }
    core_->Handle(this, request_);
  }
  void OnWriteDone(bool ok) override { core_->WriteDone(this, ok); }
  void OnCancel() override { core_->StreamEnded(this); }
  void OnDone() override {
    core_->StreamDone(this);
    delete this;
  }

  // ---- SessionStream, called by the core under its lock ----
  void StartSend() override { StartWrite(in_flight.get()); }
  void End(const absl::Status& status) override { Finish(ToGrpcStatus(status)); }
  void ReadNext() override { StartRead(&request_); }

 private:
  static uint64_t NextSerial() {
    static std::atomic<uint64_t> next{0};
    return ++next;
  }
  RegistryCore* const core_;
  v1::ClientMessage request_;
};

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void Fill(const StoredConfig& e, v1::ConfigEntry* out) {
  out->set_key(e.key);
  out->set_value(e.value);
  out->set_version(e.version);
  out->set_exists(e.exists);
}

}  // namespace

// ---------------------------------------------------------------------------
// Worker

Worker::Worker(int threads) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Loop(); });
  }
}

void Worker::Run(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  jobs_.push_back(std::move(job));
}

void Worker::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) {
    if (thread.joinable()) {
      thread.join();
    }
  }
}

void Worker::Loop() {
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !jobs_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (jobs_.empty()) {
        return;
      }
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

// ---------------------------------------------------------------------------
// RegistryService

grpc::ServerBidiReactor<v1::ClientMessage, v1::ServerMessage>* RegistryService::Session(
    grpc::CallbackServerContext* context) {
  return new SessionReactor(core_, context->peer(), PeerIdentity(*context->auth_context()));
}

grpc::ServerUnaryReactor* RegistryService::ListServices(grpc::CallbackServerContext* context,
                                                        const v1::ListServicesRequest*,
                                                        v1::ListServicesResponse* response) {
  return View(context, [this, response] { return core_->ListServices(response); });
}

grpc::ServerUnaryReactor* RegistryService::GetCluster(grpc::CallbackServerContext* context,
                                                      const v1::GetClusterRequest*,
                                                      v1::ClusterInfo* response) {
  return View(context, [this, response] { return core_->Describe(response); });
}

grpc::ServerUnaryReactor* RegistryService::GetService(grpc::CallbackServerContext* context,
                                                      const v1::GetServiceRequest* request,
                                                      v1::ServiceSnapshot* response) {
  return View(context, [this, request, response] {
    return core_->GetService(request->service(), response);
  });
}

grpc::ServerUnaryReactor* RegistryService::GetConfig(grpc::CallbackServerContext* context,
                                                     const v1::GetConfigRequest* request,
                                                     v1::ConfigEntry* response) {
  if (absl::Status st = ValidateConfigKey(request->key(), core_->options().limits); !st.ok()) {
    return Done(context, st);
  }
  return View(context, [this, request, response] {
    absl::StatusOr<StoredConfig> entry =
        core_->backend()->config_store()->GetConfig(request->key());
    if (!entry.ok()) {
      return entry.status();
    }
    if (!entry->exists) {
      return absl::NotFoundError(absl::StrCat("config key '", request->key(), "' does not exist"));
    }
    Fill(*entry, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistryService::ListConfig(grpc::CallbackServerContext* context,
                                                      const v1::ListConfigRequest* request,
                                                      v1::ListConfigResponse* response) {
  return View(context, [this, request, response] {
    absl::StatusOr<std::vector<StoredConfig>> entries =
        core_->backend()->config_store()->ListConfig(request->prefix());
    if (!entries.ok()) {
      return entries.status();
    }
    for (const StoredConfig& e : *entries) {
      Fill(e, response->add_entries());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* RegistryService::PutConfig(grpc::CallbackServerContext* context,
                                                     const v1::PutConfigRequest* request,
                                                     v1::PutConfigResponse* response) {
  std::string act = absl::StrCat("key=", request->key(), " bytes=", request->value().size());
  if (request->has_expected_version()) {
    absl::StrAppend(&act, " expected_version=", request->expected_version());
  }
  const Limits& limits = core_->options().limits;
  absl::Status st = ValidateConfigKey(request->key(), limits);
  if (st.ok() && static_cast<int64_t>(request->value().size()) > limits.max_config_value_bytes) {
    st = absl::InvalidArgumentError(absl::StrCat("config value is ", request->value().size(),
                                                 " bytes; the limit is ",
                                                 limits.max_config_value_bytes));
  }
  if (st.ok()) st = CheckCaller(context, "config.write", request->key());
  if (!st.ok()) {
    RecordAct(context, "config.put", act, st);
    return Done(context, st);
  }
  std::optional<uint64_t> expected;
  if (request->has_expected_version()) {
    expected = request->expected_version();
  }
  return Write(
      context,
      [this, request, expected] {
        return core_->backend()->config_store()->PutConfig(request->key(), request->value(),
                                                           expected);
      },
      response->mutable_entry(), "config.put", act);
}

grpc::ServerUnaryReactor* RegistryService::DeleteConfig(grpc::CallbackServerContext* context,
                                                        const v1::DeleteConfigRequest* request,
                                                        v1::DeleteConfigResponse* response) {
  std::string act = absl::StrCat("key=", request->key());
  if (request->has_expected_version()) {
    absl::StrAppend(&act, " expected_version=", request->expected_version());
  }
  absl::Status st = ValidateConfigKey(request->key(), core_->options().limits);
  if (st.ok()) st = CheckCaller(context, "config.write", request->key());
  if (!st.ok()) {
    RecordAct(context, "config.delete", act, st);
    return Done(context, st);
  }
  std::optional<uint64_t> expected;
  if (request->has_expected_version()) {
    expected = request->expected_version();
  }
  return Write(
      context,
      [this, request, expected] {
        return core_->backend()->config_store()->DeleteConfig(request->key(), expected);
      },
      response->mutable_entry(), "config.delete", act);
}

grpc::ServerUnaryReactor* RegistryService::SetPushSwitch(grpc::CallbackServerContext* context,
                                                         const v1::SetPushSwitchRequest* request,
                                                         v1::PushSwitchState* response) {
  std::string act = request->stop_push() ? "on" : "off";
  absl::Status st = CheckCaller(context, "operate", "registry");
  if (st.ok()) *response = core_->SetStopPush(request->stop_push());
  RecordAct(context, "registry.stop-push", act, st);
  return Done(context, st);
}

grpc::ServerUnaryReactor* RegistryService::GetPushSwitch(grpc::CallbackServerContext* context,
                                                         const v1::GetPushSwitchRequest*,
                                                         v1::PushSwitchState* response) {
  *response = core_->SetStopPush(std::nullopt);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* RegistryService::ListSessions(grpc::CallbackServerContext* context,
                                                        const v1::ListSessionsRequest*,
                                                        v1::ListSessionsResponse* response) {
  // Who is connected from where: an operator's read.
  absl::Status st = CheckCaller(context, "operate", "registry");
  if (st.ok()) core_->ListSessions(response);
  return Done(context, st);
}

grpc::ServerUnaryReactor* RegistryService::KillSession(grpc::CallbackServerContext* context,
                                                       const v1::KillSessionRequest* request,
                                                       v1::KillSessionResponse*) {
  absl::Status st = CheckCaller(context, "operate", "registry");
  if (st.ok()) st = core_->KillSession(request->session_id());
  RecordAct(context, "registry.kill-session", absl::StrCat("session=", request->session_id()), st);
  return Done(context, st);
}

grpc::ServerUnaryReactor* RegistryService::View(grpc::CallbackServerContext* context,
                                                std::function<absl::Status()> view) {
  RegistryBackend* backend = core_->backend();
  if (!backend->views_may_block()) {
    return Done(context, view());
  }
  if (absl::Status st = backend->CheckReachable(); !st.ok()) {
    return Done(context, st);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  views_.Run([backend, reactor, view = std::move(view)] {
    absl::Status st = backend->CheckReachable();  // it may have gone while this view queued
    if (st.ok()) {
      st = view();
    }
    if (absl::IsDeadlineExceeded(st)) {
      // etcd did not answer in time: as unavailable as a refused call.
      st = absl::UnavailableError(st.message());
    }
    reactor->Finish(ToGrpcStatus(st));
  });
  return reactor;
}

grpc::ServerUnaryReactor* RegistryService::Write(grpc::CallbackServerContext* context,
                                                 ConfigWrite write, v1::ConfigEntry* out,
                                                 const char* action, std::string act) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  writer_.Run([this, context, reactor, write = std::move(write), out, action,
               act = std::move(act)] {
    absl::StatusOr<StoredConfig> entry = write();
    if (entry.ok()) {
      core_->ConfigChanged(*entry);
      Fill(*entry, out);
    }
    RecordAct(context, action, entry.ok() ? absl::StrCat(act, " -> version ", entry->version) : act,
              entry.status());
    reactor->Finish(ToGrpcStatus(entry.status()));
  });
  return reactor;
}

}  // namespace formica::registry
