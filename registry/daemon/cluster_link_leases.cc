// ClusterLink's keep-alives: sessions' and the node's leases renewed over
// one LeaseKeepAlive stream, whose replies also tell whether etcd answers.
#include "cluster_link_impl.h"

namespace formica::registry {

void ClusterLink::Impl::KeepAlive(uint64_t lease, std::function<void()> renewed) {
  if (lease == 0) {
    return;
  }
  absl::MutexLock lock(&keep_mu_);
  keep_pending_.insert(lease);
  if (renewed) keep_waiting_[lease].push_back(std::move(renewed));
}

void ClusterLink::Impl::KeepAliveSender() {
  absl::Time next_probe = absl::Now();
  while (true) {
    std::set<uint64_t> leases;
    {
      absl::MutexLock lock(&keep_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(keep_mu_) {
        return keep_stopping_ || (!keep_pending_.empty() && keep_stream_ != nullptr);
      };
      // The node's own lease goes every kReachabilityProbe, whatever else
      // is busy: its replies tell Reachable() that etcd still answers.
      if (!keep_mu_.AwaitWithDeadline(absl::Condition(&ready), next_probe)) {
        next_probe = absl::Now() + kReachabilityProbe;
        keep_pending_.insert(static_cast<uint64_t>(node_lease_.load()));
        if (keep_stream_ == nullptr) {
          continue;
        }
      }
      if (keep_stopping_) {
        return;
      }
      leases.swap(keep_pending_);
      // Each renewal about to be sent takes its waiters with it; the
      // reader answers them in order.
      for (uint64_t lease : leases) {
        Renewed waiters;
        if (auto w = keep_waiting_.find(lease); w != keep_waiting_.end()) {
          waiters.swap(w->second);
          keep_waiting_.erase(w);
        }
        keep_in_flight_[lease].push_back(std::move(waiters));
      }
      // The reader thread keeps the stream alive until keep_writing_ drops.
      ++keep_writers_;
    }
    for (uint64_t lease : leases) {
      pb::LeaseKeepAliveRequest request;
      request.set_id(static_cast<int64_t>(lease));
      if (!keep_writer_stream_->Write(request)) {
        break;
      }
    }
    absl::MutexLock lock(&keep_mu_);
    --keep_writers_;
  }
}

void ClusterLink::Impl::KeepAliveLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("hasleader", "true");
    context->set_wait_for_ready(true);
    std::unique_ptr<grpc::ClientReaderWriter<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>>
        stream;
    {
      absl::MutexLock lock(&keep_mu_);
      if (keep_stopping_) {
        return;
      }
      keep_context_ = context.get();  // so Shutdown can cancel the start below
    }
    // Starting a stream waits for a connection: never under a lock.
    stream = lease_->LeaseKeepAlive(context.get());
    {
      absl::MutexLock lock(&keep_mu_);
      keep_stream_ = stream.get();
      keep_writer_stream_ = stream.get();
    }
    pb::LeaseKeepAliveResponse response;
    bool heard = false;
    while (stream->Read(&response)) {
      heard = true;
      Heard();
      uint64_t id = static_cast<uint64_t>(response.id());
      Renewed answered;
      {
        absl::MutexLock lock(&keep_mu_);
        if (auto f = keep_in_flight_.find(id); f != keep_in_flight_.end()) {
          answered.swap(f->second.front());
          f->second.pop_front();
          if (f->second.empty()) keep_in_flight_.erase(f);
        }
      }
      if (response.ttl() > 0) {
        for (auto& renewed : answered) renewed();
        continue;
      }
      if (response.id() == node_lease_) {
        node_lost_ = true;
        SPDLOG_WARN("this node's etcd lease lapsed; registering again");
      } else {
        listener_->OnLeaseLost(id);
      }
    }
    {
      absl::MutexLock lock(&keep_mu_);
      keep_stream_ = nullptr;
      auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(keep_mu_) { return keep_writers_ == 0; };
      keep_mu_.Await(absl::Condition(&idle));
      keep_writer_stream_ = nullptr;
      // Renewals this stream sent and etcd did not answer: nobody hears of
      // them (a heartbeat is acknowledged only once its renewal was).
      keep_in_flight_.clear();
    }
    grpc::Status st = stream->Finish();
    absl::MutexLock lock(&keep_mu_);
    keep_context_ = nullptr;
    if (keep_stopping_) {
      return;
    }
    SPDLOG_WARN("etcd keep-alive stream ended ({}); reconnecting", st.error_message());
    backoff = heard ? absl::Milliseconds(100) : std::min(backoff * 2, absl::Seconds(2));
    keep_mu_.AwaitWithTimeout(absl::Condition(&keep_stopping_), backoff);
  }
}

}  // namespace formica::registry
