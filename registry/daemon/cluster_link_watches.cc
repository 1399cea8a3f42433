// ClusterLink's watches: the shared etcd watch stream, the loads that start
// each watch, and the events handed to the listener.
#include "cluster_link_impl.h"

namespace formica::registry {

void ClusterLink::Impl::AddWatch(bool config, const std::string& name) {
  Op op;
  op.kind = config ? Op::kLoadConfig : Op::kLoadService;
  {
    absl::MutexLock lock(&watch_mu_);
    auto& by_name = config ? config_watches_ : service_watches_;
    if (by_name.count(name) > 0) {
      return;
    }
    uint64_t serial = ++next_watch_serial_;
    WatchEntry& entry = watches_[serial];
    entry.config = config;
    entry.name = name;
    if (config) {
      entry.key = ConfigKey(name);
    } else {
      entry.key = ServicePrefix(name);
      entry.range_end = EtcdPrefixEnd(entry.key);
    }
    by_name[name] = serial;
    op.serial = serial;
    op.key = entry.key;
    op.address = entry.range_end;
    op.service = name;
  }
  Enqueue(std::move(op));
}

void ClusterLink::Impl::RemoveWatch(bool config, const std::string& name) {
  absl::MutexLock lock(&watch_mu_);
  auto& by_name = config ? config_watches_ : service_watches_;
  auto it = by_name.find(name);
  if (it == by_name.end()) {
    return;
  }
  uint64_t serial = it->second;
  by_name.erase(it);
  auto w = watches_.find(serial);
  if (w == watches_.end()) {
    return;
  }
  if (w->second.created && !w->second.acknowledged) {
    w->second.cancelled = true;  // HandleWatchResponse cancels it
    return;
  }
  bool created = w->second.created;
  watches_.erase(w);
  if (created) {
    CancelWatch(serial);
  }
}

void ClusterLink::Impl::CancelWatch(uint64_t serial) {
  Op op;
  op.kind = Op::kCancelWatch;
  op.serial = serial;
  Enqueue(std::move(op));
}

void ClusterLink::Impl::Load(const Op& op) {
  {
    absl::MutexLock lock(&watch_mu_);
    auto it = watches_.find(op.serial);
    if (it == watches_.end() || it->second.cancelled) {
      return;  // unwatched meanwhile
    }
  }
  pb::RangeResponse response;
  absl::Status st = Range(op.key, op.address, false, &response);
  if (!st.ok()) {
    SPDLOG_WARN("loading '{}' from etcd failed ({}); retrying", op.service, st.ToString());
    absl::SleepFor(absl::Milliseconds(200));
    Enqueue(op);
    return;
  }
  uint64_t revision = static_cast<uint64_t>(response.header().revision());
  if (op.kind == Op::kLoadService) {
    std::vector<InstanceChange> changes;
    for (const auto& kv : response.kvs()) {
      InstanceChange change;
      std::string service;
      if (!ParseInstanceKey(kv.key(), &service, &change.address)) {
        continue;
      }
      auto instance = std::make_shared<v1::Instance>();
      if (!instance->ParseFromString(kv.value())) {
        SPDLOG_WARN("etcd key {} does not hold an instance; ignored", kv.key());
        continue;
      }
      change.instance = std::move(instance);
      change.owner = static_cast<uint64_t>(kv.lease());
      changes.push_back(std::move(change));
    }
    listener_->OnServiceUpdate(op.service, revision, true, std::move(changes));
  } else {
    StoredConfig entry;
    entry.key = op.service;
    // Absent: as of this read's revision, so a deletion missed while the
    // watch was behind compaction still reaches the watchers.
    entry.version = revision;
    if (response.kvs_size() > 0) {
      entry.value = response.kvs(0).value();
      entry.version = static_cast<uint64_t>(response.kvs(0).mod_revision());
      entry.exists = true;
    }
    listener_->OnConfigUpdate(entry);
  }
  std::optional<pb::WatchRequest> create;
  {
    absl::MutexLock lock(&watch_mu_);
    auto it = watches_.find(op.serial);
    if (it == watches_.end() || it->second.cancelled) {
      return;
    }
    it->second.loaded = true;
    it->second.next_revision = response.header().revision() + 1;
    create = CreateRequest(op.serial, it->second);
  }
  if (create.has_value()) {
    WriteWatch(*create);
  }
}

std::optional<pb::WatchRequest> ClusterLink::Impl::CreateRequest(uint64_t serial,
                                                                 WatchEntry& entry) {
  if (watch_stream_ == nullptr || entry.created) {
    return std::nullopt;
  }
  pb::WatchRequest request;
  pb::WatchCreateRequest* create = request.mutable_create_request();
  create->set_key(entry.key);
  create->set_range_end(entry.range_end);
  create->set_start_revision(entry.next_revision);
  create->set_watch_id(static_cast<int64_t>(serial));
  // Progress reports move next_revision on a quiet range, so a reconnect
  // does not start below etcd's compaction.
  create->set_progress_notify(true);
  entry.created = true;
  entry.acknowledged = false;
  return request;
}

void ClusterLink::Impl::WriteWatch(const pb::WatchRequest& request) {
  absl::MutexLock write_lock(&watch_write_mu_);
  if (watch_writer_ != nullptr) {
    watch_writer_->Write(request);
  }
}

void ClusterLink::Impl::WatchLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    auto context = std::make_unique<grpc::ClientContext>();
    // End the stream if its member loses the leader, rather than go quiet.
    context->AddMetadata("hasleader", "true");
    context->set_wait_for_ready(true);
    std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream;
    {
      absl::MutexLock lock(&watch_mu_);
      if (watch_stopping_) {
        return;
      }
      watch_context_ = context.get();  // so Shutdown can cancel the start below
    }
    // Starting a stream waits for a connection: never under a lock.
    stream = watch_->Watch(context.get());
    {
      absl::MutexLock write_lock(&watch_write_mu_);
      watch_writer_ = stream.get();
    }
    std::vector<pb::WatchRequest> creates;
    std::function<void()> hold;
    {
      absl::MutexLock lock(&watch_mu_);
      hold = std::move(hold_creates_);
      hold_creates_ = nullptr;
      watch_stream_ = stream.get();
      for (auto it = watches_.begin(); it != watches_.end();) {
        WatchEntry& entry = it->second;
        if (entry.cancelled) {
          it = watches_.erase(it);  // gone with the old stream
          continue;
        }
        entry.created = false;
        if (entry.loaded) {
          if (auto create = CreateRequest(it->first, entry)) {
            creates.push_back(std::move(*create));
          }
        }
        ++it;
      }
    }
    if (hold) {
      hold();
    }
    for (const pb::WatchRequest& create : creates) {
      WriteWatch(create);
    }
    pb::WatchResponse response;
    bool heard = false;
    while (stream->Read(&response)) {
      heard = true;
      Heard();
      HandleWatchResponse(response);
    }
    {
      absl::MutexLock lock(&watch_mu_);
      watch_stream_ = nullptr;
    }
    {
      // Waits for a write in progress; later ones find no stream.
      absl::MutexLock write_lock(&watch_write_mu_);
      watch_writer_ = nullptr;
    }
    grpc::Status st = stream->Finish();
    absl::MutexLock lock(&watch_mu_);
    watch_context_ = nullptr;
    if (watch_stopping_) {
      return;
    }
    SPDLOG_WARN("etcd watch stream ended ({}); reconnecting", st.error_message());
    backoff = heard ? absl::Milliseconds(100) : std::min(backoff * 2, absl::Seconds(2));
    watch_mu_.AwaitWithTimeout(absl::Condition(&watch_stopping_), backoff);
  }
}

void ClusterLink::Impl::HandleWatchResponse(const pb::WatchResponse& response) {
  uint64_t serial = static_cast<uint64_t>(response.watch_id());
  bool config = false;
  std::string name;
  {
    absl::MutexLock lock(&watch_mu_);
    auto it = watches_.find(serial);
    if (it == watches_.end()) {
      return;  // canceled by us
    }
    WatchEntry& entry = it->second;
    if (entry.cancelled) {
      // Unwatched before etcd answered its create: now etcd knows it.
      if (response.created() || response.canceled()) {
        watches_.erase(it);
        if (!response.canceled()) {
          CancelWatch(serial);
        }
      }
      return;
    }
    if (response.created()) {
      entry.acknowledged = true;
    }
    if (response.canceled()) {
      // Fell behind compaction (or the member refused): load again under
      // a new watch id (etcd may still hold the old one on this stream).
      SPDLOG_WARN("etcd canceled the watch on '{}' ({}; compacted at {}); reloading", entry.name,
                  response.cancel_reason(), response.compact_revision());
      WatchEntry fresh = entry;
      fresh.loaded = false;
      fresh.created = false;
      watches_.erase(it);
      uint64_t renewed = ++next_watch_serial_;
      (fresh.config ? config_watches_ : service_watches_)[fresh.name] = renewed;
      Op op;
      op.kind = fresh.config ? Op::kLoadConfig : Op::kLoadService;
      op.serial = renewed;
      op.key = fresh.key;
      op.address = fresh.range_end;
      op.service = fresh.name;
      watches_[renewed] = std::move(fresh);
      Enqueue(std::move(op));
      return;
    }
    if (response.events_size() == 0) {
      // A progress report: nothing changed in the range up to here.
      if (!response.created()) {
        entry.next_revision = std::max(entry.next_revision, response.header().revision() + 1);
      }
      return;
    }
    config = entry.config;
    name = entry.name;
    for (const auto& event : response.events()) {
      entry.next_revision = std::max(entry.next_revision, event.kv().mod_revision() + 1);
    }
  }
  if (config) {
    for (const auto& event : response.events()) {
      StoredConfig entry;
      entry.key = name;
      entry.version = static_cast<uint64_t>(event.kv().mod_revision());
      entry.exists = event.type() == mvccpb::Event::PUT;
      if (entry.exists) {
        entry.value = event.kv().value();
      }
      listener_->OnConfigUpdate(entry);
    }
    return;
  }
  // One update per revision, so a version is always a whole revision.
  std::vector<InstanceChange> changes;
  int64_t revision = 0;
  auto flush = [&] {
    if (!changes.empty()) {
      listener_->OnServiceUpdate(name, static_cast<uint64_t>(revision), false, std::move(changes));
      changes.clear();
    }
  };
  for (const auto& event : response.events()) {
    if (event.kv().mod_revision() != revision) {
      flush();
      revision = event.kv().mod_revision();
    }
    InstanceChange change;
    std::string service;
    if (!ParseInstanceKey(event.kv().key(), &service, &change.address)) {
      continue;
    }
    if (event.type() == mvccpb::Event::PUT) {
      auto instance = std::make_shared<v1::Instance>();
      if (!instance->ParseFromString(event.kv().value())) {
        continue;
      }
      change.instance = std::move(instance);
      change.owner = static_cast<uint64_t>(event.kv().lease());
    }
    changes.push_back(std::move(change));
  }
  flush();
}

}  // namespace formica::registry
