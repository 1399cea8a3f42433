// RegistryCore: streams, sessions and the requests on them. Pushes, sweeps
// and the backend's changes are in registry_core_push.cc; operator views
// and controls in registry_core_admin.cc.
#include "registry_core.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "formica/common/clock.h"
#include "formica/internal/permissions.h"
#include "formica/registry/v1/registry.pb.h"

namespace formica::registry {

RegistryCore::RegistryCore(RegistryCoreOptions options, Clock* clock)
    : options_(std::move(options)),
      clock_(clock != nullptr ? clock : Clock::Real()),
      sessions_(clock_),
      pushes_(clock_, options_.merge_window, options_.warmup) {}

RegistryCore::~RegistryCore() { StopMaintenance(); }

CoreTables RegistryCore::tables() {
  CoreTables tables;
  tables.mu = &mu_;
  tables.sessions = &sessions_;
  tables.services = &services_;
  tables.mark_dirty = [this](const std::string& service)
                          ABSL_NO_THREAD_SAFETY_ANALYSIS { MarkDirty(service); };
  tables.write_done = [this](uint64_t session_id, uint64_t incarnation, uint64_t request_id,
                             const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    WriteResult(session_id, incarnation, request_id, status);
  };
  return tables;
}

void RegistryCore::AttachBackend(RegistryBackend* backend) {
  absl::MutexLock lock(&mu_);
  backend_ = backend;
  configs_.set_backend(backend);
}

// ---------------------------------------------------------------------------
// Session stream handling

void RegistryCore::Handle(SessionStream* stream, const v1::ClientMessage& message) {
  absl::MutexLock lock(&mu_);
  if (stream->finishing) {
    return;
  }
  if (stream->session_id == 0) {
    if (!message.has_open()) {
      RequestFinish(stream, absl::InvalidArgumentError(
                                "the first message on a session stream must be 'open'"));
      return;
    }
    HandleOpen(stream, message.open());
    return;
  }
  Session* found = sessions_.Find(stream->session_id);
  if (found == nullptr || found->stream != stream) {
    RequestFinish(stream, absl::UnavailableError(absl::StrCat("session ", stream->session_id,
                                                              " is no longer attached")));
    return;
  }
  Session& session = *found;
  sessions_.Touch(session);
  // A heartbeat renews the backend's lease each time, and is acknowledged
  // only once the backend renewed it: the ack tells the client its session
  // lives a lease past the heartbeat's sending
  // (registry::Client::SessionView::lease_valid_until), so a node cut off
  // from etcd must not send it. Other messages renew at most every quarter
  // lease, unacknowledged.
  if (message.has_heartbeat()) {
    auto ack = std::make_shared<v1::ServerMessage>();
    ack->mutable_heartbeat_ack()->set_seq(message.heartbeat().seq());
    auto later = [this, id = session.id, serial = stream->serial, ack] {
      absl::MutexLock lock(&mu_);
      Session* s = sessions_.Find(id);
      if (s != nullptr && s->stream != nullptr && s->stream->serial == serial) {
        Reply(s->stream, ack);
      }
    };
    if (backend_->KeepAlive(session.id, later)) Reply(stream, ack);
    session.last_keepalive = session.last_seen;
  } else if (session.last_seen - session.last_keepalive >= session.lease / 4) {
    // Any message shows the client alive: renew its lease in the backend.
    backend_->KeepAlive(session.id, nullptr);
    session.last_keepalive = session.last_seen;
  }
  switch (message.body_case()) {
    case v1::ClientMessage::kHeartbeat:
      break;  // answered above
    case v1::ClientMessage::kPublish: {
      uint64_t request_id = message.publish().request_id();
      if (absl::Status st =
              CheckPermission(session.identity, "publish", message.publish().instance().service());
          !st.ok()) {
        SPDLOG_WARN("session {}: {}", session.id, std::string(st.message()));
        ReplyResult(stream, request_id, st);
        break;
      }
      std::optional<absl::Status> done = backend_->Publish(session, message.publish());
      if (done.has_value()) {
        ReplyResult(stream, request_id, *done);
      }
      break;
    }
    case v1::ClientMessage::kUnpublish: {
      uint64_t request_id = message.unpublish().request_id();
      std::optional<absl::Status> done = backend_->Unpublish(session, message.unpublish());
      if (done.has_value()) {
        ReplyResult(stream, request_id, *done);
      }
      break;
    }
    case v1::ClientMessage::kSubscribe:
      ReplyResult(stream, message.subscribe().request_id(),
                  HandleSubscribe(session, message.subscribe().service(),
                                  message.subscribe().known_version()));
      break;
    case v1::ClientMessage::kUnsubscribe:
      HandleUnsubscribe(session, message.unsubscribe().service(),
                        message.unsubscribe().request_id());
      break;
    case v1::ClientMessage::kWatchConfig:
      ReplyResult(stream, message.watch_config().request_id(),
                  HandleWatch(session, message.watch_config().key(),
                              message.watch_config().known_version()));
      break;
    case v1::ClientMessage::kUnwatchConfig:
      HandleUnwatch(session, message.unwatch_config().key(), message.unwatch_config().request_id());
      break;
    case v1::ClientMessage::kAck: {
      const v1::Ack& ack = message.ack();
      auto& table = ack.has_config_key() ? session.configs : session.services;
      auto sub = table.find(ack.has_config_key() ? ack.config_key() : ack.service());
      if (sub == table.end()) break;
      // The newest push sent (a key that does not exist is version 0)
      // reached the subscriber: it is caught up.
      if (ack.version() >= sub->second.sent && sub->second.unacked_since != absl::InfinitePast()) {
        push_acks_.Observe(clock_->Now() - sub->second.unacked_since);
        sub->second.unacked_since = absl::InfinitePast();
      }
      if (ack.version() > sub->second.acked) sub->second.acked = ack.version();
      break;
    }
    case v1::ClientMessage::kReconcile:
      HandleReconcile(session, message);
      break;
    case v1::ClientMessage::kClose:
      RemoveSession(session.id, "closed by the client");
      RequestFinish(stream, absl::OkStatus());
      return;
    case v1::ClientMessage::kOpen:
      RequestFinish(stream, absl::InvalidArgumentError("this stream already has a session"));
      return;
    case v1::ClientMessage::BODY_NOT_SET:
      RequestFinish(stream, absl::InvalidArgumentError("empty message on a session stream"));
      return;
  }
  Pump(session);
  if (!stream->finishing) {
    stream->ReadNext();
  }
}

void RegistryCore::HandleUnsubscribe(Session& session, const std::string& name,
                                     uint64_t request_id) {
  absl::Status st = absl::OkStatus();
  if (session.services.erase(name) == 0) {
    st = absl::NotFoundError(absl::StrCat("this session is not subscribed to '", name, "'"));
  } else {
    session.pending.erase(ServiceTopic(name));
    auto s = services_.find(name);
    if (s != services_.end()) {
      s->second.subscribers.erase(session.id);
      MaybeForgetService(name);
    }
  }
  ReplyResult(session.stream, request_id, st);
}

void RegistryCore::HandleUnwatch(Session& session, const std::string& key, uint64_t request_id) {
  absl::Status st = absl::OkStatus();
  if (session.configs.erase(key) == 0) {
    st = absl::NotFoundError(absl::StrCat("this session does not watch '", key, "'"));
  } else {
    session.pending.erase(ConfigTopic(key));
    configs_.Remove(key, session.id);
  }
  ReplyResult(session.stream, request_id, st);
}

void RegistryCore::HandleReconcile(Session& session, const v1::ClientMessage& message) {
  for (const auto& [service, version] : message.reconcile().services()) {
    if (session.services.count(service) == 0) {
      // A subscription the registry lost: take it up again.
      (void)HandleSubscribe(session, service, version);
      continue;
    }
    Subscription& sub = session.services[service];
    sub.acked = std::max(sub.acked, version);
    auto s = services_.find(service);
    if (s != services_.end() && Stale(s->second.version, version) && !Held()) {
      EnqueueService(session, service);
    }
  }
  for (const auto& [key, version] : message.reconcile().configs()) {
    if (session.configs.count(key) == 0) {
      (void)HandleWatch(session, key, version);
      continue;
    }
    Subscription& sub = session.configs[key];
    sub.acked = std::max(sub.acked, version);
    WatchedConfig* c = configs_.Find(key);
    if (c != nullptr && Stale(c->version, version) && !Held()) {
      EnqueueConfig(session, key);
    }
  }
}

// The stream reads nothing more until the backend has answered.
void RegistryCore::HandleOpen(SessionStream* stream, const v1::OpenSession& open) {
  absl::Duration lease =
      open.lease_ms() == 0 ? options_.default_lease : absl::Milliseconds(open.lease_ms());
  lease = std::clamp(lease, options_.min_lease, options_.max_lease);
  SessionRequest request;
  request.resume_id = open.resume_session_id();
  request.client_name = open.client_name();
  request.peer = stream->peer;
  request.identity = stream->identity;
  request.lease = lease;
  if (request.resume_id != 0) {
    // A session is resumed only by the identity that holds it: another
    // caller would take over its publications and pushes, or keep a dead
    // client's session (and what it reported) alive.
    if (const Session* held = sessions_.Find(request.resume_id);
        held != nullptr && held->identity != stream->identity) {
      absl::Status refused = absl::PermissionDeniedError(absl::StrCat(
          "identity ", stream->identity.empty() ? "(no certificate)" : "'" + stream->identity + "'",
          " may not resume session ", request.resume_id, " of identity ",
          held->identity.empty() ? "(no certificate)" : "'" + held->identity + "'"));
      SPDLOG_WARN("{}", std::string(refused.message()));
      RequestFinish(stream, refused);
      return;
    }
  }
  uint64_t serial = stream->serial;
  std::optional<absl::StatusOr<SessionGrant>> now =
      backend_->OpenSession(request, [this, serial, open](absl::StatusOr<SessionGrant> grant) {
        absl::MutexLock lock(&mu_);
        SessionStream* stream = TakeOpening(serial);
        if (stream == nullptr) {
          if (grant.ok() && !grant->resumed) {
            backend_->CloseSession(grant->id);  // nobody will use it
          }
          return;  // a resumed lease lives on for another try
        }
        CompleteOpen(stream, open, std::move(grant));
      });
  if (now.has_value()) {
    CompleteOpen(stream, open, std::move(*now));
  } else {
    opening_[serial] = stream;
  }
}

void RegistryCore::CompleteOpen(SessionStream* stream, const v1::OpenSession& open,
                                absl::StatusOr<SessionGrant> grant) {
  if (!grant.ok()) {
    if (open.resume_session_id() != 0 && absl::IsNotFound(grant.status())) {
      RemoveSession(open.resume_session_id(),
                    absl::StrCat("its ", backend_->name(), " lease is gone"), false);
    }
    RequestFinish(stream, grant.status());
    return;
  }
  uint64_t id = grant->id;
  if (grant->resumed && !grant->publications.has_value()) {
    Session& session = *sessions_.Find(id);
    session.lease = grant->lease;
    ResumeLocal(stream, session, open);
    return;
  }
  if (grant->publications.has_value()) {
    if (Session* local = sessions_.Find(id); local != nullptr) {
      // A copy held here may be stale (the client may have been on another
      // node since): the backend's publications win, and the client's
      // replay brings its subscriptions back.
      if (local->stream != nullptr && local->stream != stream) {
        SessionStream* old = local->stream;
        local->stream = nullptr;
        RequestFinish(old, absl::AbortedError("session taken over by a newer stream"));
      }
      RemoveSession(id, "resumed by a new stream", false);
    }
  }
  Session& session = sessions_.Add(id);
  session.record_revision = grant->record_revision;
  session.last_keepalive = clock_->Now();
  if (grant->publications.has_value()) {
    for (auto& publication : *grant->publications) {
      session.publications.insert(std::move(publication));
    }
    SPDLOG_INFO("session {} of '{}' taken over from {} with {} publication(s)", id,
                open.client_name(), std::string(backend_->name()), session.publications.size());
  }
  FinishOpen(stream, session, open, grant->lease, grant->resumed);
}

void RegistryCore::ResumeLocal(SessionStream* stream, Session& session,
                               const v1::OpenSession& open) {
  if (session.stream != nullptr && session.stream != stream) {
    SessionStream* old = session.stream;
    session.stream = nullptr;
    RequestFinish(old, absl::AbortedError("session taken over by a newer stream"));
  }
  // Whatever was sent on the old stream may be lost: resend what is unacked.
  for (auto& [name, sub] : session.services) {
    sub.sent = sub.acked;
    auto s = services_.find(name);
    if (s != services_.end() && s->second.loaded && Stale(s->second.version, sub.acked) &&
        !Held()) {
      EnqueueService(session, name);
    }
  }
  for (auto& [key, sub] : session.configs) {
    sub.sent = sub.acked;
    WatchedConfig* c = configs_.Find(key);
    if (c != nullptr && c->loaded && Stale(c->version, sub.acked) && !Held()) {
      EnqueueConfig(session, key);
    }
  }
  FinishOpen(stream, session, open, session.lease, true);
}

void RegistryCore::FinishOpen(SessionStream* stream, Session& session, const v1::OpenSession& open,
                              absl::Duration lease, bool resumed) {
  session.client_name = open.client_name();
  session.peer = stream->peer;
  session.identity = stream->identity;
  session.lease = lease;
  sessions_.Touch(session);
  session.stream = stream;
  stream->session_id = session.id;
  SPDLOG_DEBUG("session {} {} for '{}' at {}", session.id, resumed ? "resumed" : "opened",
               session.client_name, session.peer);
  auto reply = std::make_shared<v1::ServerMessage>();
  v1::SessionOpened* opened = reply->mutable_opened();
  opened->set_session_id(session.id);
  opened->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(lease)));
  opened->set_resumed(resumed);
  opened->set_registry_id(options_.registry_id);
  opened->set_cluster(backend_->identity());
  Reply(stream, std::move(reply));
  Pump(session);
  if (!stream->finishing) {
    stream->ReadNext();
  }
}

SessionStream* RegistryCore::TakeOpening(uint64_t serial) {
  auto it = opening_.find(serial);
  if (it == opening_.end()) {
    return nullptr;
  }
  SessionStream* stream = it->second;
  opening_.erase(it);
  return stream->finishing ? nullptr : stream;
}

void RegistryCore::WriteResult(uint64_t session_id, uint64_t incarnation, uint64_t request_id,
                               const absl::Status& status) {
  Session* found = sessions_.Find(session_id);
  if (found == nullptr || found->record_revision != incarnation) {
    return;  // gone, or resumed since: the client replayed what it needs
  }
  Session& session = *found;
  if (absl::IsFailedPrecondition(status)) {
    // Resumed by another node meanwhile: this copy is stale.
    if (session.stream != nullptr) {
      RequestFinish(session.stream, absl::AbortedError(status.message()));
    }
    RemoveSession(session_id, "it was resumed on another node", false);
    return;
  }
  if (absl::IsNotFound(status)) {
    // The backend no longer has the lease: the session is over everywhere.
    if (session.stream != nullptr) {
      RequestFinish(session.stream,
                    absl::NotFoundError(absl::StrCat(
                        "session ", session_id, " lapsed in the cluster; open a new session")));
    }
    RemoveSession(session_id, absl::StrCat("its ", backend_->name(), " lease is gone"), false);
    return;
  }
  if (!status.ok()) {
    // This node cannot reach the backend: send the client to another node,
    // where it resumes the same session.
    if (session.stream != nullptr) {
      SessionStream* stream = session.stream;
      session.stream = nullptr;
      RequestFinish(stream,
                    absl::UnavailableError(absl::StrCat("this registry node cannot reach ",
                                                        backend_->name(), ": ", status.message())));
    }
    return;
  }
  if (session.stream != nullptr) {
    ReplyResult(session.stream, request_id, status);
    Pump(session);
  }
}

absl::Status RegistryCore::HandleSubscribe(Session& session, const std::string& service,
                                           uint64_t known) {
  if (absl::Status st = ValidateServiceName(service, options_.limits); !st.ok()) {
    return st;
  }
  if (absl::Status st = CheckPermission(session.identity, "subscribe", service); !st.ok()) {
    SPDLOG_WARN("session {}: {}", session.id, std::string(st.message()));
    return st;
  }
  Subscription& sub = session.services[service];
  sub.acked = std::max(sub.acked, known);
  ServiceState& state = EnsureService(service);
  state.subscribers.insert(session.id);
  if (!Held() && state.loaded && Stale(state.version, sub.acked)) {
    EnqueueService(session, service);
  }
  return absl::OkStatus();
}

absl::Status RegistryCore::HandleWatch(Session& session, const std::string& key, uint64_t known) {
  if (absl::Status st = ValidateConfigKey(key, options_.limits); !st.ok()) {
    return st;
  }
  absl::StatusOr<WatchedConfig*> watched = configs_.Add(key, session.id);
  if (!watched.ok()) {
    return watched.status();
  }
  Subscription& sub = session.configs[key];
  sub.acked = std::max(sub.acked, known);
  if (!Held() && (*watched)->loaded && Stale((*watched)->version, sub.acked)) {
    EnqueueConfig(session, key);
  }
  return absl::OkStatus();
}

void RegistryCore::RemoveSession(uint64_t id, absl::string_view why, bool revoke) {
  Session* found = sessions_.Find(id);
  if (found == nullptr) {
    return;
  }
  Session& session = *found;
  backend_->SessionEnded(session, why, revoke);
  for (const auto& [service, sub] : session.services) {
    auto s = services_.find(service);
    if (s != services_.end()) {
      s->second.subscribers.erase(id);
      MaybeForgetService(service);
    }
  }
  for (const auto& [key, sub] : session.configs) {
    configs_.Remove(key, id);
  }
  sessions_.Erase(id);
}

// ---------------------------------------------------------------------------
// The stream's life and writes

void RegistryCore::StreamStarted(SessionStream* stream) {
  absl::MutexLock lock(&mu_);
  streams_.insert(stream);
  if (!closed_why_.empty()) {
    RequestFinish(stream, absl::UnavailableError(closed_why_));
  }
}

void RegistryCore::StreamEnded(SessionStream* stream) {
  absl::MutexLock lock(&mu_);
  Session* session = sessions_.Find(stream->session_id);
  if (session != nullptr && session->stream == stream) {
    // Not a clean close: keep the session for its lease so the client can
    // resume it without its providers flapping.
    session->stream = nullptr;
    SPDLOG_DEBUG("session {} detached; lease keeps running", session->id);
  }
  RequestFinish(stream, absl::OkStatus());
}

void RegistryCore::WriteDone(SessionStream* stream, bool ok) {
  absl::MutexLock lock(&mu_);
  stream->in_flight.reset();
  if (!ok && !stream->finishing) {
    stream->finishing = true;
    stream->finish_status = absl::UnavailableError("write failed");
  }
  Session* session = sessions_.Find(stream->session_id);
  if (stream->finishing) {
    if (!stream->finished) {
      stream->finished = true;
      stream->End(stream->finish_status);
    }
    if (session != nullptr && session->stream == stream) {
      session->stream = nullptr;
    }
    return;
  }
  if (session != nullptr && session->stream == stream) {
    Pump(*session);
  } else if (!stream->control.empty()) {
    // Replies for a stream whose session went away (e.g. a failed open).
    stream->in_flight = stream->control.front();
    stream->control.pop_front();
    stream->StartSend();
  }
}

void RegistryCore::StreamDone(SessionStream* stream) {
  absl::MutexLock lock(&mu_);
  streams_.erase(stream);
  opening_.erase(stream->serial);
  Session* session = sessions_.Find(stream->session_id);
  if (session != nullptr && session->stream == stream) {
    session->stream = nullptr;
  }
}

void RegistryCore::CloseAllStreams(absl::string_view why) {
  absl::MutexLock lock(&mu_);
  closed_why_ = std::string(why);
  for (auto& [id, session] : sessions_.all()) {
    session.stream = nullptr;
  }
  for (SessionStream* stream : streams_) {
    RequestFinish(stream, absl::UnavailableError(why));
  }
}

void RegistryCore::Reply(SessionStream* stream, Msg message) {
  constexpr size_t kMaxUnreadReplies = 1024;
  if (stream->control.size() >= kMaxUnreadReplies) {
    // A client that sends without reading would grow this without bound.
    RequestFinish(stream, absl::ResourceExhaustedError(absl::StrCat(
                              "more than ", kMaxUnreadReplies,
                              " replies unread on this session stream; read your stream")));
    return;
  }
  stream->control.push_back(std::move(message));
}

void RegistryCore::ReplyResult(SessionStream* stream, uint64_t request_id,
                               const absl::Status& status) {
  auto reply = std::make_shared<v1::ServerMessage>();
  v1::Result* result = reply->mutable_result();
  result->set_request_id(request_id);
  result->set_code(static_cast<int>(status.code()));
  result->set_message(std::string(status.message()));
  Reply(stream, std::move(reply));
}

void RegistryCore::RequestFinish(SessionStream* stream, const absl::Status& status) {
  if (stream->finishing) {
    return;
  }
  stream->finishing = true;
  stream->finish_status = status;
  if (absl::IsInvalidArgument(status) || absl::IsResourceExhausted(status)) {
    SPDLOG_WARN("session stream from {} refused: {}", stream->peer, status.ToString());
  }
  if (stream->in_flight == nullptr) {
    stream->finished = true;
    stream->End(stream->finish_status);
  }
}

void RegistryCore::WritePushMetrics(PrometheusText& out) const {
  out.Family("formica_registry_pushes_total", "counter",
             "Pushes sent to subscribers, by kind (service: a provider list; config: a config "
             "value).");
  out.Sample("formica_registry_pushes_total", {{"kind", "service"}},
             static_cast<double>(service_pushes_.load(std::memory_order_relaxed)));
  out.Sample("formica_registry_pushes_total", {{"kind", "config"}},
             static_cast<double>(config_pushes_.load(std::memory_order_relaxed)));
  push_acks_.Write(out, "formica_registry_push_ack_duration_seconds",
                   "Time a subscriber took to ack the newest push sent to it, from the first "
                   "one it had not acked (pushes sent meanwhile are one observation).");
}

void RegistryCore::Pump(Session& session) {
  SessionStream* stream = session.stream;
  if (stream == nullptr || stream->in_flight != nullptr || stream->finishing) {
    return;
  }
  if (!stream->control.empty()) {
    stream->in_flight = stream->control.front();
    stream->control.pop_front();
  } else if (!session.pending.empty() && !Held()) {
    auto first = session.pending.begin();
    stream->in_flight = first->second;
    const v1::ServerMessage& m = *first->second;
    absl::Time now = clock_->Now();
    if (m.has_service()) {
      auto sub = session.services.find(m.service().service());
      if (sub != session.services.end()) {
        sub->second.sent = m.service().version();
        sub->second.sent_at = now;
        if (sub->second.unacked_since == absl::InfinitePast()) sub->second.unacked_since = now;
      }
      service_pushes_.fetch_add(1, std::memory_order_relaxed);
    } else if (m.has_config()) {
      auto sub = session.configs.find(m.config().key());
      if (sub != session.configs.end()) {
        sub->second.sent = m.config().version();
        sub->second.sent_at = now;
        if (sub->second.unacked_since == absl::InfinitePast()) sub->second.unacked_since = now;
      }
      config_pushes_.fetch_add(1, std::memory_order_relaxed);
    }
    session.pending.erase(first);
  } else {
    return;
  }
  stream->StartSend();
}

}  // namespace formica::registry
