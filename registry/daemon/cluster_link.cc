// ClusterLink: connecting to etcd, the node's membership, and the public
// calls, which queue work for the link's threads (see cluster_link_impl.h).
#include "cluster_link_impl.h"
#include "formica/internal/credentials.h"

namespace formica::registry {

namespace {

std::string StripScheme(absl::string_view endpoint) {
  for (absl::string_view scheme : {"http://", "https://"}) {
    if (absl::StartsWith(endpoint, scheme)) {
      endpoint.remove_prefix(scheme.size());
    }
  }
  while (!endpoint.empty() && endpoint.back() == '/') {
    endpoint.remove_suffix(1);
  }
  return std::string(endpoint);
}

bool IsIpEndpoint(absl::string_view endpoint, bool* v6) {
  if (!endpoint.empty() && endpoint.front() == '[') {
    *v6 = true;
    return true;
  }
  size_t colon = endpoint.rfind(':');
  absl::string_view host = endpoint.substr(0, colon);
  for (char c : host) {
    if (!(c == '.' || (c >= '0' && c <= '9'))) {
      return false;
    }
  }
  *v6 = false;
  return !host.empty();
}

// One gRPC target for all endpoints: several IP addresses become an ipv4:
// (or ipv6:) address list, served round robin; gRPC skips a dead member.
absl::StatusOr<std::string> ChannelTarget(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) {
    return absl::InvalidArgumentError("storage.etcd.endpoints is empty: list the etcd members");
  }
  std::vector<std::string> stripped;
  for (const std::string& e : endpoints) {
    stripped.push_back(StripScheme(e));
    if (stripped.back().empty() || stripped.back().find(':') == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("etcd endpoint '", e, "' is not host:port"));
    }
  }
  if (stripped.size() == 1) {
    return stripped[0];
  }
  bool any_v6 = false;
  bool any_v4 = false;
  for (const std::string& e : stripped) {
    bool v6 = false;
    if (!IsIpEndpoint(e, &v6)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "etcd endpoint '", e,
          "' is a host name; several endpoints must be IP addresses (or give one DNS name that "
          "resolves to every member)"));
    }
    (v6 ? any_v6 : any_v4) = true;
  }
  if (any_v6 && any_v4) {
    return absl::InvalidArgumentError("etcd endpoints mix IPv4 and IPv6 addresses");
  }
  return absl::StrCat(any_v6 ? "ipv6:" : "ipv4:", absl::StrJoin(stripped, ","));
}

}  // namespace

absl::Status EtcdError(absl::string_view what, const grpc::Status& st) {
  return FromGrpcStatus(
      grpc::Status(st.error_code(), absl::StrCat("etcd ", what, ": ", st.error_message())));
}

absl::Status ClusterLink::Impl::Connect() {
  absl::StatusOr<std::string> target = ChannelTarget(options_.endpoints);
  if (!target.ok()) {
    return target.status();
  }
  grpc::ChannelArguments args;
  args.SetLoadBalancingPolicyName("round_robin");
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // etcd values and ranges can exceed gRPC's 4 MiB default.
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(*target, formica::ChannelCredentials(), args);
  kv_ = pb::KV::NewStub(channel_);
  lease_ = pb::Lease::NewStub(channel_);
  watch_ = pb::Watch::NewStub(channel_);
  cluster_ = pb::Cluster::NewStub(channel_);
  maintenance_ = pb::Maintenance::NewStub(channel_);

  // Wait for etcd to answer a read.
  absl::Time give_up = absl::Now() + options_.dial_timeout;
  absl::Status last;
  while (true) {
    pb::RangeRequest request;
    request.set_key(options_.prefix);
    request.set_count_only(true);
    pb::RangeResponse response;
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(absl::ToChronoTime(std::min(give_up, absl::Now() + absl::Seconds(1))));
    grpc::Status st = kv_->Range(&context, request, &response);
    if (st.ok()) {
      // Sessions and versions belong to one etcd cluster and prefix.
      identity_ = absl::StrCat(options_.cluster_name, "@",
                               absl::Hex(response.header().cluster_id()), options_.prefix);
      break;
    }
    last = EtcdError("range", st);
    if (absl::Now() >= give_up) {
      return absl::UnavailableError(absl::StrCat(
          "etcd at ", absl::StrJoin(options_.endpoints, ","), " did not answer within ",
          absl::FormatDuration(options_.dial_timeout), ": ", last.message()));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  if (absl::Status st = RegisterNode(); !st.ok()) {
    return st;
  }
  writer_ = std::thread([this] { WriterLoop(); });
  watcher_ = std::thread([this] { WatchLoop(); });
  keeper_ = std::thread([this] { KeepAliveLoop(); });
  keep_sender_ = std::thread([this] { KeepAliveSender(); });
  return absl::OkStatus();
}

void ClusterLink::Impl::Shutdown() {
  {
    absl::MutexLock lock(&queue_mu_);
    if (stopping_) {
      return;
    }
    stopping_ = true;
  }
  if (writer_.joinable()) {
    writer_.join();
  }
  {
    absl::MutexLock lock(&watch_mu_);
    watch_stopping_ = true;
    if (watch_context_ != nullptr) {
      watch_context_->TryCancel();
    }
  }
  if (watcher_.joinable()) {
    watcher_.join();
  }
  {
    absl::MutexLock lock(&keep_mu_);
    keep_stopping_ = true;
    if (keep_context_ != nullptr) {
      keep_context_->TryCancel();
    }
  }
  if (keeper_.joinable()) {
    keeper_.join();
  }
  if (keep_sender_.joinable()) {
    keep_sender_.join();
  }
  // Withdraw the node at once rather than after its lease.
  if (node_lease_ != 0 && channel_ != nullptr) {
    pb::LeaseRevokeRequest request;
    request.set_id(node_lease_);
    pb::LeaseRevokeResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    (void)lease_->LeaseRevoke(&context, request, &response);
  }
}

absl::Status ClusterLink::Impl::RegisterNode() {
  pb::LeaseGrantRequest grant;
  grant.set_ttl(std::max<int64_t>(2, absl::ToInt64Seconds(options_.node_lease)));
  pb::LeaseGrantResponse granted;
  if (absl::Status st =
          Call("lease grant", &pb::Lease::Stub::LeaseGrant, lease_.get(), grant, &granted);
      !st.ok()) {
    return st;
  }
  v1::ClusterNode node;
  node.set_id(options_.node_id);
  node.set_address(options_.node_address);
  node.set_started_unix_ms(absl::ToUnixMillis(started_));
  pb::PutRequest put;
  put.set_key(MemberKey());
  put.set_value(node.SerializeAsString());
  put.set_lease(granted.id());
  pb::PutResponse put_response;
  if (absl::Status st = Call("put", &pb::KV::Stub::Put, kv_.get(), put, &put_response); !st.ok()) {
    return st;
  }
  node_lease_ = granted.id();
  node_lost_ = false;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ClusterLink>> ClusterLink::Start(ClusterOptions options,
                                                                Listener* listener) {
  if (options.node_id.empty()) {
    return absl::InvalidArgumentError("cluster mode needs a node id (server.id)");
  }
  if (options.prefix.empty() || options.prefix.back() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("storage.etcd.prefix '", options.prefix, "' must end with '/'"));
  }
  auto impl = std::make_unique<Impl>(std::move(options), listener);
  if (absl::Status st = impl->Connect(); !st.ok()) {
    return st;
  }
  return std::unique_ptr<ClusterLink>(new ClusterLink(std::move(impl)));
}

ClusterLink::ClusterLink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClusterLink::~ClusterLink() { impl_->Shutdown(); }

void ClusterLink::Shutdown() { impl_->Shutdown(); }
const ClusterOptions& ClusterLink::options() const { return impl_->options(); }
const std::string& ClusterLink::identity() const { return impl_->identity(); }

void ClusterLink::OpenSession(int64_t ttl_seconds, const v1::SessionRecord& record,
                              SessionDone done) {
  Impl::Op op;
  op.kind = Impl::Op::kOpen;
  op.ttl = ttl_seconds;
  op.value = record.SerializeAsString();
  op.session_done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::ResumeSession(uint64_t session_id, const v1::SessionRecord& record,
                                std::function<void(absl::StatusOr<Resumed>)> done) {
  Impl::Op op;
  op.kind = Impl::Op::kResume;
  op.lease = session_id;
  op.value = record.SerializeAsString();
  op.resume_done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::Publish(uint64_t session_id, uint64_t record_revision,
                          const v1::Instance& instance, std::function<void(absl::Status)> done) {
  Impl::Op op;
  op.kind = Impl::Op::kPublish;
  op.lease = session_id;
  op.record_revision = record_revision;
  op.key = impl_->InstanceKey(instance.service(), instance.address());
  op.value = instance.SerializeAsString();
  op.done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::Unpublish(uint64_t session_id, uint64_t record_revision,
                            const std::string& service, const std::string& address,
                            std::function<void(absl::Status)> done) {
  Impl::Op op;
  op.kind = Impl::Op::kUnpublish;
  op.lease = session_id;
  op.record_revision = record_revision;
  op.key = impl_->InstanceKey(service, address);
  op.done = std::move(done);
  impl_->Enqueue(std::move(op));
}

void ClusterLink::CloseSession(uint64_t session_id) {
  Impl::Op op;
  op.kind = Impl::Op::kRevoke;
  op.lease = session_id;
  impl_->Enqueue(std::move(op));
}

void ClusterLink::KeepAlive(uint64_t session_id, std::function<void()> renewed) {
  impl_->KeepAlive(session_id, std::move(renewed));
}
bool ClusterLink::Reachable() const { return impl_->Reachable(); }
void ClusterLink::WatchService(const std::string& service) { impl_->AddWatch(false, service); }
void ClusterLink::UnwatchService(const std::string& service) { impl_->RemoveWatch(false, service); }
void ClusterLink::WatchConfig(const std::string& key) { impl_->AddWatch(true, key); }
void ClusterLink::UnwatchConfig(const std::string& key) { impl_->RemoveWatch(true, key); }

absl::Status ClusterLink::GetService(const std::string& service, v1::ServiceSnapshot* out) {
  return impl_->GetService(service, out);
}
absl::Status ClusterLink::ListServices(v1::ListServicesResponse* out) {
  return impl_->ListServices(out);
}
absl::Status ClusterLink::Describe(v1::ClusterInfo* out) { return impl_->Describe(out); }
void ClusterLink::DropTxnRepliesForTesting(int n) { impl_->DropTxnReplies(n); }
void ClusterLink::BreakWatchStreamForTesting(std::function<void()> hold) {
  impl_->BreakWatchStream(std::move(hold));
}

}  // namespace formica::registry
