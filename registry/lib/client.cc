// formica::registry::Client: its options check, its public methods and the
// conversions between its types and the wire. The rest of the client is in
// the files client_impl.h lists.
#include "client_impl.h"

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "formica/internal/address.h"

namespace formica::registry {

bool Instance::operator==(const Instance& o) const {
  return service == o.service && address == o.address && zone == o.zone && weight == o.weight &&
         tags == o.tags && metadata == o.metadata;
}

namespace {

// Client-side checks: the shape of what is sent. Size limits are the
// registry's to enforce, since an operator may raise them.
Limits ShapeOnlyLimits() {
  Limits l;
  l.max_weight = std::numeric_limits<int32_t>::max();
  l.max_tags = std::numeric_limits<int>::max();
  l.max_tag_length = std::numeric_limits<int>::max();
  l.max_metadata_bytes = std::numeric_limits<int64_t>::max();
  l.max_name_length = 4096;
  l.max_config_key_length = 4096;
  return l;
}

}  // namespace

// ---------------------------------------------------------------------------
// Wire conversions

v1::Instance Client::Impl::ToProto(const Instance& in) {
  v1::Instance out;
  out.set_service(in.service);
  out.set_address(in.address);
  out.set_zone(in.zone);
  out.set_weight(in.weight);
  out.mutable_tags()->insert(in.tags.begin(), in.tags.end());
  out.mutable_metadata()->insert(in.metadata.begin(), in.metadata.end());
  return out;
}

Instance Client::Impl::FromProto(const v1::Instance& in) {
  Instance out;
  out.service = in.service();
  out.address = in.address();
  out.zone = in.zone();
  out.weight = in.weight();
  out.tags.insert(in.tags().begin(), in.tags().end());
  out.metadata.insert(in.metadata().begin(), in.metadata().end());
  return out;
}

ServiceSnapshot Client::Impl::FromProto(const v1::ServiceSnapshot& in) {
  ServiceSnapshot out;
  out.service = in.service();
  out.version = in.version();
  for (const auto& i : in.instances()) {
    out.instances.push_back(FromProto(i));
  }
  return out;
}

ConfigValue Client::Impl::FromProto(const v1::ConfigEntry& in) {
  return ConfigValue{in.key(), in.value(), in.version(), in.exists()};
}

// ---------------------------------------------------------------------------
// Impl

Client::Impl::Impl(ClientOptions options) : options_(std::move(options)) {
  limits_ = ShapeOnlyLimits();
  session_thread_ = std::thread([this] { SessionLoop(); });
  timer_thread_ = std::thread([this] { TimerLoop(); });
  dispatch_thread_ = std::thread([this] { DispatchLoop(); });
}

// ---------------------------------------------------------------------------
// Client

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (options.registries.empty()) {
    return absl::InvalidArgumentError("ClientOptions.registries is empty: name at least one dsrd");
  }
  for (const std::string& address : options.registries) {
    if (absl::Status st = ValidateAddress(address); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("ClientOptions.registries: ", st.message()));
    }
  }
  if (options.lease < absl::Milliseconds(100)) {
    return absl::InvalidArgumentError("ClientOptions.lease must be at least 100ms");
  }
  if (options.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.request_timeout must be positive");
  }
  if (options.backoff_initial <= absl::ZeroDuration() ||
      options.backoff_max < options.backoff_initial) {
    return absl::InvalidArgumentError(
        "ClientOptions.backoff_initial must be positive and not above backoff_max");
  }
  if (options.reconcile_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.reconcile_interval must be positive");
  }
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(std::move(options))));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() { impl_->Stop(); }

absl::Status Client::Publish(const Instance& instance) { return impl_->Publish(instance); }
absl::Status Client::Unpublish(absl::string_view service, absl::string_view address) {
  return impl_->Unpublish(service, address);
}
absl::StatusOr<uint64_t> Client::Subscribe(absl::string_view service, SnapshotCallback callback) {
  return impl_->Subscribe(service, std::move(callback));
}
void Client::Unsubscribe(uint64_t id) {
  impl_->Unsubscribe(id);
  impl_->AwaitCallbackDone(id);
}
std::optional<ServiceSnapshot> Client::GetSnapshot(absl::string_view service) const {
  return impl_->GetSnapshot(service);
}
absl::StatusOr<ServiceSnapshot> Client::AwaitSnapshot(absl::string_view service,
                                                      absl::Duration timeout,
                                                      bool allow_empty) const {
  return impl_->AwaitSnapshot(service, timeout, allow_empty);
}
absl::StatusOr<ConfigValue> Client::GetConfig(absl::string_view key) {
  return impl_->GetConfig(key);
}
absl::StatusOr<ConfigValue> Client::PutConfig(absl::string_view key, absl::string_view value,
                                              std::optional<uint64_t> expected_version) {
  return impl_->PutConfig(key, value, expected_version);
}
absl::Status Client::DeleteConfig(absl::string_view key, std::optional<uint64_t> expected_version) {
  return impl_->DeleteConfig(key, expected_version);
}
absl::StatusOr<uint64_t> Client::WatchConfig(absl::string_view key, ConfigCallback callback) {
  return impl_->WatchConfig(key, std::move(callback));
}
void Client::Unwatch(uint64_t id) {
  impl_->Unwatch(id);
  impl_->AwaitCallbackDone(id);
}
bool Client::connected() const { return impl_->connected(); }
uint64_t Client::session_id() const { return impl_->session_id(); }
Client::SessionView Client::session() const { return impl_->session(); }
absl::Time Client::lease_valid_until() const {
  SessionView view = session();
  if (!view.connected) return absl::InfinitePast();
  return absl::Now() + absl::FromChrono(view.lease_valid_until - std::chrono::steady_clock::now());
}
std::string Client::connected_registry() const { return impl_->connected_registry(); }
void Client::DropConnectionForTesting() { impl_->DropConnection(); }

}  // namespace formica::registry
