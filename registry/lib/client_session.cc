// registry::Client's session: one stream to a dsrd node at a time, opened or
// resumed, replayed, kept alive by heartbeats and reconciles, and reopened
// with backoff after any fault.
#include "client_impl.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/credentials.h"
#include "formica/internal/jittered_backoff.h"

namespace formica::registry {

// ---------------------------------------------------------------------------
// Session

void Client::Impl::SessionLoop() {
  JitteredBackoff backoff(options_.backoff_initial, options_.backoff_max);
  while (true) {
    std::string address;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        return;
      }
      address = options_.registries[address_index_ % options_.registries.size()];
    }
    SessionEnd end = RunSession(address);
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return;
    }
    if (end == SessionEnd::kRetryNow) {
      continue;  // the registry forgot our session: open a new one at once
    }
    if (end == SessionEnd::kClosed) {
      backoff.Reset();  // it worked for a while: retry soon
    } else {
      ++address_index_;  // this node failed us: try the next
    }
    // Jitter: sleep a random time between half and all of the backoff.
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), backoff.Next());
  }
}

// Runs one stream to its end.
Client::Impl::SessionEnd Client::Impl::RunSession(const std::string& address) {
  grpc::ChannelArguments args;
  int64_t lease_ms = absl::ToInt64Milliseconds(options_.lease);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(std::max<int64_t>(1000, lease_ms / 2)));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              static_cast<int>(std::max<int64_t>(500, lease_ms / 3)));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // One connection per client, as a separate process would have.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, formica::ChannelCredentials(), args);
  absl::Time give_up = absl::Now() + options_.request_timeout;
  bool tried = false;
  while (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + absl::Milliseconds(100)))) {
    // With other nodes to go to, a node that refuses the connection (a dead
    // process) is left at once rather than after request_timeout.
    // An embedded node's session lives only there: give it request_timeout
    // to come back before the session is given up elsewhere.
    bool refused = tried && options_.registries.size() > 1 &&
                   channel->GetState(false) == GRPC_CHANNEL_TRANSIENT_FAILURE;
    tried = true;
    absl::MutexLock lock(&mu_);
    refused = refused && (!session_cluster_.empty() || session_id_ == 0);
    if (stopping_ || refused || absl::Now() >= give_up) {
      SPDLOG_DEBUG("registry {} unreachable", address);
      return SessionEnd::kNeverOpened;
    }
  }
  auto stub = v1::Registry::NewStub(channel);
  grpc::ClientContext context;
  uint64_t resume = 0;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return SessionEnd::kNeverOpened;
    }
    context_ = &context;
    stream_started_ = std::chrono::steady_clock::now();
    // An embedded node's session lives on that node only; a cluster's
    // session can be resumed on any node (another cluster answers NOT_FOUND).
    resume = (session_address_ == address || !session_cluster_.empty()) ? session_id_ : 0;
  }
  std::unique_ptr<Stream> stream = stub->Session(&context);
  v1::ClientMessage open;
  open.mutable_open()->set_client_name(options_.client_name);
  open.mutable_open()->set_lease_ms(static_cast<uint32_t>(lease_ms));
  open.mutable_open()->set_resume_session_id(resume);
  v1::ServerMessage reply;
  bool opened = stream->Write(open) && stream->Read(&reply) && reply.has_opened();
  if (opened) {
    // Publish the stream and replay everything under the write lock, so no
    // request can slip in between (an Unpublish overtaken by a replay).
    absl::MutexLock write_lock(&write_mu_);
    std::vector<v1::ClientMessage> replay;
    {
      absl::MutexLock lock(&mu_);
      session_id_ = reply.opened().session_id();
      session_address_ = address;
      // Versions of one cluster compare across its nodes: keep refusing
      // older ones even on a new session there.
      bool same_cluster =
          !reply.opened().cluster().empty() && reply.opened().cluster() == session_cluster_;
      session_cluster_ = reply.opened().cluster();
      granted_lease_ = reply.opened().lease_ms() > 0 ? absl::Milliseconds(reply.opened().lease_ms())
                                                     : options_.lease;
      connected_ = true;
      channel_ = channel;
      last_heard_ = absl::Now();
      answered_sent_ = stream_started_;  // the open was sent after this
      heartbeats_sent_.clear();
      if (reply.opened().resumed()) {
        // The registry still holds what this session had: take back what
        // was withdrawn while the stream was down.
        for (const auto& [service, addr] : withdrawn_) {
          v1::ClientMessage m;
          m.mutable_unpublish()->set_service(service);
          m.mutable_unpublish()->set_address(addr);
          replay.push_back(std::move(m));
        }
        for (const std::string& service : dropped_services_) {
          v1::ClientMessage m;
          m.mutable_unsubscribe()->set_service(service);
          replay.push_back(std::move(m));
        }
        for (const std::string& key : dropped_configs_) {
          v1::ClientMessage m;
          m.mutable_unwatch_config()->set_key(key);
          replay.push_back(std::move(m));
        }
      } else if (!same_cluster) {
        for (auto& [name, sub] : services_) sub.accept_next = true;
        for (auto& [key, watch] : configs_) watch.accept_next = true;
      }
      // A cluster compares versions: tell it only versions it issued (not
      // ones from the disk cache, an embedded node or another cluster).
      bool comparable =
          reply.opened().cluster().empty() || reply.opened().resumed() || same_cluster;
      withdrawn_.clear();
      dropped_services_.clear();
      dropped_configs_.clear();
      for (const auto& [key, pub] : publications_) {
        v1::ClientMessage m;
        m.mutable_publish()->set_request_id(pub.waiting_request);
        *m.mutable_publish()->mutable_instance() = pub.instance;
        replay.push_back(std::move(m));
      }
      for (const auto& [name, sub] : services_) {
        v1::ClientMessage m;
        m.mutable_subscribe()->set_service(name);
        m.mutable_subscribe()->set_known_version(comparable ? sub.version : 0);
        replay.push_back(std::move(m));
      }
      for (const auto& [key, watch] : configs_) {
        v1::ClientMessage m;
        m.mutable_watch_config()->set_key(key);
        m.mutable_watch_config()->set_known_version(comparable && watch.value ? watch.value->version
                                                                              : 0);
        replay.push_back(std::move(m));
      }
    }
    stream_ = stream.get();
    for (const auto& m : replay) {
      if (!stream->Write(m)) {
        break;
      }
    }
    SPDLOG_INFO("registry session {} {} on {}", reply.opened().session_id(),
                reply.opened().resumed() ? "resumed" : "opened", address);
  }
  v1::ServerMessage message;
  while (opened && stream->Read(&message)) {
    {
      absl::MutexLock lock(&mu_);
      last_heard_ = absl::Now();
    }
    switch (message.body_case()) {
      case v1::ServerMessage::kResult: {
        absl::MutexLock lock(&mu_);
        CompleteRequest(message.result().request_id(),
                        StatusFromCode(message.result().code(), message.result().message()));
        break;
      }
      case v1::ServerMessage::kService:
        HandleService(message.service());
        break;
      case v1::ServerMessage::kConfig:
        HandleConfig(message.config());
        break;
      case v1::ServerMessage::kHeartbeatAck: {
        absl::MutexLock lock(&mu_);
        auto it = heartbeats_sent_.find(message.heartbeat_ack().seq());
        if (it != heartbeats_sent_.end()) {
          answered_sent_ = std::max(answered_sent_, it->second);
          heartbeats_sent_.erase(heartbeats_sent_.begin(), std::next(it));
        }
        break;
      }
      default:
        break;
    }
  }
  {
    absl::MutexLock write_lock(&write_mu_);
    stream_ = nullptr;
  }
  grpc::Status status = stream->Finish();
  absl::MutexLock lock(&mu_);
  context_ = nullptr;
  connected_ = false;
  SessionEnd end = opened ? SessionEnd::kClosed : SessionEnd::kNeverOpened;
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
    session_id_ = 0;  // the registry forgot our session: open a new one next time
    end = SessionEnd::kRetryNow;
  } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
             status.error_message().find("lapsed") != std::string::npos) {
    session_id_ = 0;
  }
  // A pending Publish is replayed with its request id on reconnect and
  // completes then. A pending Unpublish is already out of the replay, so the
  // next session will not have the instance: it is done.
  for (auto& [id, request] : requests_) {
    if (!request.done && request.unpublish) {
      withdrawn_.insert(*request.unpublish);
      request.done = true;
      request.status = absl::OkStatus();
    }
  }
  if (!stopping_) {
    SPDLOG_WARN("registry stream to {} ended: {} {}", address,
                static_cast<int>(status.error_code()), status.error_message());
  }
  return end;
}

bool Client::Impl::Send(const v1::ClientMessage& message) {
  absl::MutexLock write_lock(&write_mu_);
  return WriteLocked(message);
}

bool Client::Impl::WriteLocked(const v1::ClientMessage& message) {
  return stream_ != nullptr && stream_->Write(message);
}

void Client::Impl::TimerLoop() {
  absl::Time next_reconcile = absl::Now() + options_.reconcile_interval;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      // Heartbeats follow the lease the registry granted, which may be
      // shorter than the one asked for.
      absl::Duration lease = connected_ ? std::min(granted_lease_, options_.lease) : options_.lease;
      absl::Duration heartbeat = std::max(lease / 3, absl::Milliseconds(50));
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), heartbeat);
      if (stopping_) {
        return;
      }
      absl::Time now = absl::Now();
      if (!connected_) {
        // A registry that accepts the connection but never answers the
        // open must not hold the client: give up and try the next one.
        if (context_ != nullptr && std::chrono::steady_clock::now() - stream_started_ >
                                       absl::ToChronoMilliseconds(options_.request_timeout)) {
          SPDLOG_WARN("registry did not open a session within {}: trying again",
                      absl::FormatDuration(options_.request_timeout));
          context_->TryCancel();
        }
        continue;
      }
      if (now - last_heard_ > granted_lease_ && context_ != nullptr) {
        SPDLOG_WARN("registry silent for longer than the lease: reconnecting");
        context_->TryCancel();
        continue;
      }
    }
    // Built and sent under the write lock, so no Unsubscribe can slip in
    // between and be undone by a stale view.
    absl::MutexLock write_lock(&write_mu_);
    v1::ClientMessage beat;
    std::optional<v1::ClientMessage> reconcile;
    {
      absl::MutexLock lock(&mu_);
      beat.mutable_heartbeat()->set_seq(++heartbeat_seq_);
      heartbeats_sent_[heartbeat_seq_] = std::chrono::steady_clock::now();
      // Unanswered ones of a stream that broke are not kept for ever.
      while (heartbeats_sent_.size() > 64) heartbeats_sent_.erase(heartbeats_sent_.begin());
      if (absl::Now() >= next_reconcile) {
        next_reconcile = absl::Now() + options_.reconcile_interval;
        reconcile.emplace();
        reconcile->mutable_reconcile();  // an empty view is still a reconcile
        for (const auto& [name, sub] : services_) {
          (*reconcile->mutable_reconcile()->mutable_services())[name] = sub.version;
        }
        for (const auto& [key, watch] : configs_) {
          (*reconcile->mutable_reconcile()->mutable_configs())[key] =
              watch.value ? watch.value->version : 0;
        }
      }
    }
    WriteLocked(beat);
    if (reconcile) {
      WriteLocked(*reconcile);
    }
  }
}

void Client::Impl::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return;
    }
    stopping_ = true;
  }
  v1::ClientMessage close;
  close.mutable_close();
  bool sent = false;
  {
    absl::MutexLock write_lock(&write_mu_);
    if (stream_ != nullptr) {
      sent = stream_->Write(close);
      stream_->WritesDone();
      stream_ = nullptr;  // nothing may be written after WritesDone
    }
  }
  {
    // The registry ends the stream after a close; do not wait forever.
    absl::MutexLock lock(&mu_);
    auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return context_ == nullptr; };
    if (sent) {
      mu_.AwaitWithTimeout(absl::Condition(&ended), options_.request_timeout);
    }
    if (context_ != nullptr) {
      context_->TryCancel();
    }
  }
  session_thread_.join();
  timer_thread_.join();
  dispatch_thread_.join();
}

}  // namespace formica::registry
