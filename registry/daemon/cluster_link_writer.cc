// ClusterLink's writer thread: sessions (leases), publications and the
// other queued work, in call order; consecutive publishes share one etcd
// transaction.
#include "cluster_link_impl.h"

namespace formica::registry {

void ClusterLink::Impl::Enqueue(Op op) {
  absl::MutexLock lock(&queue_mu_);
  queue_.push_back(std::move(op));
}

void ClusterLink::Impl::WriterLoop() {
  absl::Time next_node_tick = absl::Now();
  absl::Duration node_tick = std::max(absl::Milliseconds(200), options_.node_lease / 3);
  while (true) {
    std::deque<Op> ops;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
        return stopping_ || !queue_.empty();
      };
      queue_mu_.AwaitWithDeadline(absl::Condition(&ready), next_node_tick);
      ops.swap(queue_);
    }
    bool stopping = Stopping();
    while (!ops.empty()) {
      if (stopping) {
        Fail(ops.front(), absl::UnavailableError("dsrd is shutting down"));
        ops.pop_front();
        continue;
      }
      if (ops.front().kind == Op::kPublish) {
        RunPublishes(ops);
      } else {
        Run(ops.front());
        ops.pop_front();
      }
    }
    if (stopping) {
      return;
    }
    if (absl::Now() >= next_node_tick) {
      next_node_tick = absl::Now() + node_tick;
      if (node_lost_) {
        if (absl::Status st = RegisterNode(); !st.ok()) {
          SPDLOG_WARN("cannot re-register this node in etcd: {}", st.ToString());
        } else {
          SPDLOG_INFO("node {} registered again in etcd", options_.node_id);
        }
      }
    }
  }
}

bool ClusterLink::Impl::Stopping() {
  absl::MutexLock lock(&queue_mu_);
  return stopping_;
}

void ClusterLink::Impl::Fail(Op& op, const absl::Status& status) {
  if (op.done) op.done(status);
  if (op.session_done) op.session_done(status);
  if (op.resume_done) op.resume_done(status);
}

void ClusterLink::Impl::GuardSession(pb::TxnRequest* txn, const Op& op) const {
  pb::Compare* cmp = txn->add_compare();
  cmp->set_key(SessionKey(op.lease));
  cmp->set_target(pb::Compare::MOD);
  cmp->set_result(pb::Compare::EQUAL);
  cmp->set_mod_revision(static_cast<int64_t>(op.record_revision));
}

absl::Status ClusterLink::Impl::Moved(const Op& op) {
  return absl::FailedPreconditionError(
      absl::StrCat("session ", op.lease, " moved to another node"));
}

void ClusterLink::Impl::RunPublishes(std::deque<Op>& ops) {
  std::vector<Op> batch;
  std::set<std::string> keys;
  std::set<std::pair<uint64_t, uint64_t>> sessions;
  while (!ops.empty() && ops.front().kind == Op::kPublish &&
         static_cast<int>(batch.size() + sessions.size()) < kMaxTxnOps - 1 &&
         keys.count(ops.front().key) == 0) {
    keys.insert(ops.front().key);
    sessions.insert({ops.front().lease, ops.front().record_revision});
    batch.push_back(std::move(ops.front()));
    ops.pop_front();
  }
  if (batch.size() > 1) {
    pb::TxnRequest txn;
    std::set<uint64_t> guarded;
    for (const Op& op : batch) {
      if (guarded.insert(op.lease).second) {
        GuardSession(&txn, op);
      }
      pb::PutRequest* put = txn.add_success()->mutable_request_put();
      put->set_key(op.key);
      put->set_value(op.value);
      put->set_lease(static_cast<int64_t>(op.lease));
    }
    pb::TxnResponse response;
    absl::Status st = Txn(txn, &response);
    if (st.ok() && response.succeeded()) {
      for (Op& op : batch) op.done(absl::OkStatus());
      return;
    }
    if (!st.ok() && !absl::IsNotFound(st)) {
      for (Op& op : batch) op.done(st);  // etcd is out of reach: no use trying each
      return;
    }
    // A moved session or a lapsed lease fails the whole transaction: go
    // one by one.
  }
  for (Op& op : batch) {
    pb::TxnRequest txn;
    GuardSession(&txn, op);
    pb::PutRequest* put = txn.add_success()->mutable_request_put();
    put->set_key(op.key);
    put->set_value(op.value);
    put->set_lease(static_cast<int64_t>(op.lease));
    pb::TxnResponse response;
    absl::Status st = Txn(txn, &response);
    op.done(st.ok() && !response.succeeded() ? Moved(op) : st);
  }
}

void ClusterLink::Impl::Run(Op& op) {
  switch (op.kind) {
    case Op::kOpen: {
      pb::LeaseGrantRequest grant;
      grant.set_ttl(op.ttl);
      pb::LeaseGrantResponse granted;
      absl::Status st =
          Call("lease grant", &pb::Lease::Stub::LeaseGrant, lease_.get(), grant, &granted);
      if (st.ok() && !granted.error().empty()) {
        st = absl::UnavailableError(absl::StrCat("etcd lease grant: ", granted.error()));
      }
      if (!st.ok()) {
        op.session_done(st);
        return;
      }
      pb::PutRequest put;
      put.set_key(SessionKey(static_cast<uint64_t>(granted.id())));
      put.set_value(op.value);
      put.set_lease(granted.id());
      pb::PutResponse put_response;
      st = Call("put", &pb::KV::Stub::Put, kv_.get(), put, &put_response);
      if (!st.ok()) {
        op.session_done(st);
        return;
      }
      op.session_done(Opened{static_cast<uint64_t>(granted.id()),
                             static_cast<uint64_t>(put_response.header().revision())});
      return;
    }
    case Op::kResume: {
      pb::LeaseTimeToLiveRequest request;
      request.set_id(static_cast<int64_t>(op.lease));
      request.set_keys(true);
      pb::LeaseTimeToLiveResponse response;
      absl::Status st = Call("lease time-to-live", &pb::Lease::Stub::LeaseTimeToLive, lease_.get(),
                             request, &response);
      if (!st.ok()) {
        op.resume_done(st);
        return;
      }
      // etcd answers TTL -1 for a lease it does not have.
      if (response.ttl() <= 0) {
        op.resume_done(absl::NotFoundError(
            absl::StrCat("session ", op.lease,
                         " not found: its lease lapsed or it never existed; open a new session")));
        return;
      }
      // A session is resumed only by the identity holding it, whichever
      // node it was on: its record in etcd names that identity, and it is
      // replaced below only if nobody replaced it since it was read here.
      pb::RangeResponse held;
      st = Range(SessionKey(op.lease), "", false, &held);
      if (!st.ok()) {
        op.resume_done(st);
        return;
      }
      v1::SessionRecord mine;
      v1::SessionRecord theirs;
      if (held.kvs_size() == 0 || !theirs.ParseFromString(held.kvs(0).value()) ||
          !mine.ParseFromString(op.value)) {
        op.resume_done(absl::NotFoundError(absl::StrCat(
            "session ", op.lease, " has no readable record in etcd; open a new session")));
        return;
      }
      if (theirs.identity() != mine.identity()) {
        auto name = [](const std::string& identity) {
          return identity.empty() ? std::string("(no certificate)") : "'" + identity + "'";
        };
        op.resume_done(absl::PermissionDeniedError(
            absl::StrCat("identity ", name(mine.identity()), " may not resume session ", op.lease,
                         " of identity ", name(theirs.identity()))));
        return;
      }
      // Renew at once, so the lease does not lapse while the client replays.
      KeepAlive(op.lease);
      Resumed resumed;
      resumed.ttl_seconds = response.grantedttl();
      for (const std::string& key : response.keys()) {
        std::string service;
        std::string address;
        if (ParseInstanceKey(key, &service, &address)) {
          resumed.publications.emplace_back(std::move(service), std::move(address));
        }
      }
      pb::TxnRequest txn;
      pb::Compare* same = txn.add_compare();
      same->set_key(SessionKey(op.lease));
      same->set_target(pb::Compare::MOD);
      same->set_result(pb::Compare::EQUAL);
      same->set_mod_revision(held.kvs(0).mod_revision());
      pb::PutRequest* put = txn.add_success()->mutable_request_put();
      put->set_key(SessionKey(op.lease));
      put->set_value(op.value);
      put->set_lease(static_cast<int64_t>(op.lease));
      pb::TxnResponse put_response;
      bool repeated = false;
      st = Txn(txn, &put_response, &repeated);
      resumed.record_revision = static_cast<uint64_t>(put_response.header().revision());
      if (st.ok() && !put_response.succeeded() && repeated) {
        // Sent again after a lost reply: the first may have been applied.
        pb::RangeResponse now;
        if (Range(SessionKey(op.lease), "", false, &now).ok() && now.kvs_size() == 1 &&
            now.kvs(0).value() == op.value) {
          put_response.set_succeeded(true);
          resumed.record_revision = static_cast<uint64_t>(now.kvs(0).mod_revision());
        }
      }
      if (!st.ok()) {
        op.resume_done(absl::IsNotFound(st) ? absl::NotFoundError(absl::StrCat(
                                                  "session ", op.lease, " lapsed while resuming"))
                                            : st);
        return;
      }
      if (!put_response.succeeded()) {
        // Another node took it over meanwhile: the client tries again.
        op.resume_done(absl::AbortedError(
            absl::StrCat("session ", op.lease, " was taken over while resuming; try again")));
        return;
      }
      op.resume_done(std::move(resumed));
      return;
    }
    case Op::kUnpublish: {
      // Only if this session still holds it: a provider that restarted
      // may have taken the address over.
      pb::TxnRequest txn;
      GuardSession(&txn, op);
      pb::Compare* cmp = txn.add_compare();
      cmp->set_key(op.key);
      cmp->set_target(pb::Compare::LEASE);
      cmp->set_result(pb::Compare::EQUAL);
      cmp->set_lease(static_cast<int64_t>(op.lease));
      txn.add_success()->mutable_request_delete_range()->set_key(op.key);
      pb::TxnResponse response;
      op.done(Txn(txn, &response));
      return;
    }
    case Op::kRevoke: {
      pb::LeaseRevokeRequest request;
      request.set_id(static_cast<int64_t>(op.lease));
      pb::LeaseRevokeResponse response;
      absl::Status st =
          Call("lease revoke", &pb::Lease::Stub::LeaseRevoke, lease_.get(), request, &response);
      if (!st.ok() && !absl::IsNotFound(st)) {
        SPDLOG_WARN("revoking session {}: {}", op.lease, st.ToString());
      }
      return;
    }
    case Op::kLoadService:
    case Op::kLoadConfig:
      Load(op);
      return;
    case Op::kCancelWatch: {
      pb::WatchRequest cancel;
      cancel.mutable_cancel_request()->set_watch_id(static_cast<int64_t>(op.serial));
      WriteWatch(cancel);
      return;
    }
    case Op::kPublish:
      break;
  }
}

}  // namespace formica::registry
