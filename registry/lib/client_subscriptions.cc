// registry::Client's subscriptions and config watches: what pushes apply, the
// dispatch thread that runs callbacks, and the snapshot cache on disk.
#include "client_impl.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace formica::registry {

namespace {

std::string CacheFileName(absl::string_view service) {
  std::string out;
  for (char c : service) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') {
      out.push_back(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof(buf), "%%%02X", static_cast<unsigned char>(c));
      out += buf;
    }
  }
  return out + ".snapshot";
}

}  // namespace

// ---------------------------------------------------------------------------
// Subscriptions and watches

absl::StatusOr<uint64_t> Client::Impl::Subscribe(absl::string_view service,
                                                 SnapshotCallback callback) {
  if (absl::Status st = ValidateServiceName(service, limits_); !st.ok()) {
    return st;
  }
  if (!callback) {
    callback = [](const ServiceSnapshot&) {};
  }
  std::optional<ServiceSnapshot> cached;
  {
    absl::MutexLock lock(&mu_);
    if (services_.find(service) == services_.end()) {
      cached = ReadCache(service);
    }
  }
  absl::MutexLock write_lock(&write_mu_);
  uint64_t id = 0;
  v1::ClientMessage message;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = services_.try_emplace(std::string(service));
    ServiceSub& sub = it->second;
    dropped_services_.erase(std::string(service));
    if (inserted && cached && cached->version > sub.version) {
      sub.version = cached->version;
      sub.snapshot = std::move(cached);
    }
    id = next_id_++;
    sub.callbacks[id] = std::move(callback);
    callback_owner_[id] = std::string(service);
    if (sub.snapshot) {
      ServiceSnapshot copy = *sub.snapshot;
      SnapshotCallback cb = sub.callbacks[id];
      QueueDelivery(id, [cb, copy] { cb(copy); });
    }
    if (!inserted) {
      return id;
    }
    message.mutable_subscribe()->set_service(std::string(service));
    message.mutable_subscribe()->set_known_version(sub.version);
  }
  WriteLocked(message);
  return id;
}

void Client::Impl::Unsubscribe(uint64_t id) {
  absl::MutexLock write_lock(&write_mu_);
  v1::ClientMessage message;
  {
    absl::MutexLock lock(&mu_);
    auto owner = callback_owner_.find(id);
    if (owner == callback_owner_.end()) {
      return;
    }
    std::string service = owner->second;
    callback_owner_.erase(owner);
    deliveries_.erase(id);
    auto it = services_.find(service);
    if (it == services_.end()) {
      return;
    }
    it->second.callbacks.erase(id);
    if (!it->second.callbacks.empty()) {
      return;
    }
    services_.erase(it);
    if (stream_ == nullptr) {
      dropped_services_.insert(service);
    }
    message.mutable_unsubscribe()->set_service(service);
  }
  WriteLocked(message);
}

void Client::Impl::HandleService(const v1::ServiceSnapshot& snapshot) {
  v1::ClientMessage ack;
  ack.mutable_ack()->set_service(snapshot.service());
  ack.mutable_ack()->set_version(snapshot.version());
  bool cache = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = services_.find(snapshot.service());
    if (it != services_.end() &&
        (snapshot.version() > it->second.version || it->second.accept_next)) {
      ServiceSub& sub = it->second;
      sub.version = snapshot.version();
      sub.accept_next = false;
      bool had_instances = sub.snapshot && !sub.snapshot->instances.empty();
      if (snapshot.instances_size() == 0 && had_instances && !options_.accept_empty_push) {
        SPDLOG_WARN("ignoring an empty push for '{}' (version {}); keeping {} instance(s)",
                    snapshot.service(), snapshot.version(), sub.snapshot->instances.size());
      } else {
        sub.snapshot = FromProto(snapshot);
        cache = true;
        for (auto& [id, cb] : sub.callbacks) {
          ServiceSnapshot copy = *sub.snapshot;
          SnapshotCallback callback = cb;
          QueueDelivery(id, [callback, copy] { callback(copy); });
        }
      }
    }
  }
  if (cache) {
    WriteCache(snapshot);
  }
  Send(ack);
}

absl::StatusOr<uint64_t> Client::Impl::WatchConfig(absl::string_view key, ConfigCallback callback) {
  if (absl::Status st = ValidateConfigKey(key, limits_); !st.ok()) {
    return st;
  }
  if (!callback) {
    callback = [](const ConfigValue&) {};
  }
  absl::MutexLock write_lock(&write_mu_);
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = configs_.try_emplace(std::string(key));
    dropped_configs_.erase(std::string(key));
    id = next_id_++;
    it->second.callbacks[id] = std::move(callback);
    callback_owner_[id] = absl::StrCat("\x01", key);
    if (it->second.value) {
      ConfigValue copy = *it->second.value;
      ConfigCallback cb = it->second.callbacks[id];
      QueueDelivery(id, [cb, copy] { cb(copy); });
    }
    if (!inserted) {
      return id;
    }
  }
  v1::ClientMessage message;
  message.mutable_watch_config()->set_key(std::string(key));
  WriteLocked(message);
  return id;
}

void Client::Impl::Unwatch(uint64_t id) {
  absl::MutexLock write_lock(&write_mu_);
  v1::ClientMessage message;
  {
    absl::MutexLock lock(&mu_);
    auto owner = callback_owner_.find(id);
    if (owner == callback_owner_.end() || owner->second.empty() || owner->second[0] != '\x01') {
      return;
    }
    std::string key = owner->second.substr(1);
    callback_owner_.erase(owner);
    deliveries_.erase(id);
    auto it = configs_.find(key);
    if (it == configs_.end()) {
      return;
    }
    it->second.callbacks.erase(id);
    if (!it->second.callbacks.empty()) {
      return;
    }
    configs_.erase(it);
    if (stream_ == nullptr) {
      dropped_configs_.insert(key);
    }
    message.mutable_unwatch_config()->set_key(key);
  }
  WriteLocked(message);
}

void Client::Impl::HandleConfig(const v1::ConfigEntry& entry) {
  v1::ClientMessage ack;
  ack.mutable_ack()->set_config_key(entry.key());
  ack.mutable_ack()->set_version(entry.version());
  {
    absl::MutexLock lock(&mu_);
    auto it = configs_.find(entry.key());
    uint64_t have = (it != configs_.end() && it->second.value) ? it->second.value->version : 0;
    if (it != configs_.end() && (entry.version() > have || it->second.accept_next)) {
      it->second.accept_next = false;
      it->second.value = FromProto(entry);
      for (auto& [id, cb] : it->second.callbacks) {
        ConfigValue copy = *it->second.value;
        ConfigCallback callback = cb;
        QueueDelivery(id, [callback, copy] { callback(copy); });
      }
    }
  }
  Send(ack);
}

std::optional<ServiceSnapshot> Client::Impl::GetSnapshot(absl::string_view service) const {
  absl::MutexLock lock(&mu_);
  auto it = services_.find(service);
  if (it == services_.end()) {
    return std::nullopt;
  }
  return it->second.snapshot;
}

absl::StatusOr<ServiceSnapshot> Client::Impl::AwaitSnapshot(absl::string_view service,
                                                            absl::Duration timeout,
                                                            bool allow_empty) const {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = services_.find(service);
    return it == services_.end() ||
           (it->second.snapshot && (allow_empty || !it->second.snapshot->instances.empty()));
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  auto it = services_.find(service);
  if (it == services_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("not subscribed to '", service, "'; call Subscribe first"));
  }
  if (!it->second.snapshot || (!allow_empty && it->second.snapshot->instances.empty())) {
    return absl::DeadlineExceededError(
        absl::StrCat("no provider of '", service, "' known after ", absl::FormatDuration(timeout)));
  }
  return *it->second.snapshot;
}

// ---------------------------------------------------------------------------
// Callback dispatch

void Client::Impl::QueueDelivery(uint64_t callback_id, std::function<void()> run) {
  auto [it, inserted] = deliveries_.insert_or_assign(callback_id, Delivery{std::move(run)});
  if (inserted) {
    delivery_order_.push_back(callback_id);
  }
}

void Client::Impl::DispatchLoop() {
  while (true) {
    std::function<void()> run;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !delivery_order_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) {
        return;
      }
      uint64_t id = delivery_order_.front();
      delivery_order_.pop_front();
      auto it = deliveries_.find(id);
      if (it == deliveries_.end()) {
        continue;  // unsubscribed meanwhile
      }
      run = std::move(it->second.run);
      deliveries_.erase(it);
      running_callback_ = id;
    }
    try {
      run();
    } catch (const std::exception& e) {
      SPDLOG_ERROR("a registry callback threw: {}", e.what());
    } catch (...) {
      SPDLOG_ERROR("a registry callback threw a non-standard exception");
    }
    absl::MutexLock lock(&mu_);
    running_callback_ = 0;
  }
}

// ---------------------------------------------------------------------------
// Cache

void Client::Impl::WriteCache(const v1::ServiceSnapshot& snapshot) {
  if (options_.cache_dir.empty()) {
    return;
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.cache_dir, ec);
  std::filesystem::path path =
      std::filesystem::path(options_.cache_dir) / CacheFileName(snapshot.service());
  // A name of its own, so processes sharing the directory never mix writes.
  std::filesystem::path tmp = path;
  tmp += absl::StrCat(".", getpid(), ".", std::hash<std::thread::id>()(std::this_thread::get_id()),
                      ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !snapshot.SerializeToOstream(&out)) {
      SPDLOG_WARN("cannot write the registry cache file {}", tmp.string());
      return;
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    SPDLOG_WARN("cannot move the registry cache file into place: {}", ec.message());
  }
}

std::optional<ServiceSnapshot> Client::Impl::ReadCache(absl::string_view service) {
  if (options_.cache_dir.empty()) {
    return std::nullopt;
  }
  std::ifstream in(std::filesystem::path(options_.cache_dir) / CacheFileName(service),
                   std::ios::binary);
  v1::ServiceSnapshot proto;
  if (!in || !proto.ParseFromIstream(&in) || proto.service() != service) {
    return std::nullopt;
  }
  ServiceSnapshot out = FromProto(proto);
  out.from_cache = true;
  return out;
}

}  // namespace formica::registry
