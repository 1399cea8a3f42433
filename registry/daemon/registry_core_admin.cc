// RegistryCore: operator views and controls (formicactl, the admin calls).
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "formica/registry/v1/registry.pb.h"
#include "registry_core.h"

namespace formica::registry {

absl::Status RegistryCore::Describe(v1::ClusterInfo* out) { return backend_->Describe(out); }

absl::Status RegistryCore::ListServices(v1::ListServicesResponse* out) {
  return backend_->ListServices(out);
}

absl::Status RegistryCore::GetService(const std::string& service, v1::ServiceSnapshot* out) {
  if (absl::Status st = ValidateServiceName(service, options_.limits); !st.ok()) {
    return st;
  }
  return backend_->GetService(service, out);
}

v1::PushSwitchState RegistryCore::SetStopPush(std::optional<bool> stop) {
  absl::MutexLock lock(&mu_);
  if (stop.has_value() && pushes_.SetStopPush(*stop)) {
    SPDLOG_WARN("stop-push switch turned {}", *stop ? "on: pushes are held" : "off");
    if (!Held()) {
      Release();
    }
  }
  v1::PushSwitchState state;
  state.set_stop_push(pushes_.stop_push());
  state.set_warming_up(pushes_.warming_up());
  return state;
}

void RegistryCore::ListSessions(v1::ListSessionsResponse* out) {
  absl::MutexLock lock(&mu_);
  for (const auto& [id, session] : sessions_.all()) {
    v1::SessionInfo* info = out->add_sessions();
    info->set_session_id(id);
    info->set_client_name(session.client_name);
    info->set_peer(session.peer);
    info->set_identity(session.identity);
    info->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(session.lease)));
    info->set_attached(session.stream != nullptr);
    info->set_publications(static_cast<uint32_t>(session.publications.size()));
    info->set_subscriptions(
        static_cast<uint32_t>(session.services.size() + session.configs.size()));
  }
}

absl::Status RegistryCore::KillSession(uint64_t id) {
  absl::MutexLock lock(&mu_);
  Session* session = sessions_.Find(id);
  if (session == nullptr) {
    return backend_->KillUnheldSession(id);
  }
  if (session->stream != nullptr) {
    RequestFinish(session->stream,
                  absl::UnavailableError(absl::StrCat("session ", id, " ended by an operator")));
  }
  RemoveSession(id, "ended by an operator");
  return absl::OkStatus();
}

}  // namespace formica::registry
