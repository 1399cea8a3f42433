// registry::Client's requests: Publish and Unpublish, answered on the session
// stream, and the unary config calls, tried on each registry in turn.
#include "client_impl.h"

#include "absl/strings/str_cat.h"
#include "formica/common/grpc_status.h"
#include "formica/internal/credentials.h"

namespace formica::registry {

// ---------------------------------------------------------------------------
// Requests

void Client::Impl::CompleteRequest(uint64_t id, absl::Status status) {
  auto it = requests_.find(id);
  if (it != requests_.end()) {
    it->second.done = true;
    it->second.status = std::move(status);
  }
}

absl::Status Client::Impl::WaitForRequest(uint64_t id) {
  auto done = [this, id]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return requests_[id].done || stopping_; };
  mu_.AwaitWithTimeout(absl::Condition(&done), options_.request_timeout);
  absl::Status status = requests_[id].done
                            ? requests_[id].status
                            : absl::DeadlineExceededError(absl::StrCat(
                                  "the registry did not answer within ",
                                  absl::FormatDuration(options_.request_timeout),
                                  "; the request stays queued and is sent on reconnect"));
  if (!requests_[id].done && stopping_) {
    status = absl::CancelledError("the client is shutting down");
  }
  requests_.erase(id);
  return status;
}

absl::Status Client::Impl::Publish(const Instance& instance) {
  v1::Instance proto = ToProto(instance);
  if (absl::Status st = ValidateInstance(proto, limits_); !st.ok()) {
    return st;
  }
  auto key = std::make_pair(instance.service, instance.address);
  uint64_t id = 0;
  v1::ClientMessage message;
  {
    absl::MutexLock write_lock(&write_mu_);
    {
      absl::MutexLock lock(&mu_);
      id = next_id_++;
      requests_[id];
      publications_[key] = Publication{proto, id};
      withdrawn_.erase(key);
    }
    message.mutable_publish()->set_request_id(id);
    *message.mutable_publish()->mutable_instance() = proto;
    WriteLocked(message);
  }
  absl::MutexLock lock(&mu_);
  absl::Status status = WaitForRequest(id);
  auto it = publications_.find(key);
  if (it != publications_.end() && it->second.waiting_request == id) {
    it->second.waiting_request = 0;
    if (absl::IsInvalidArgument(status)) {
      publications_.erase(it);  // refused by the registry: nothing to replay
    }
  }
  return status;
}

absl::Status Client::Impl::Unpublish(absl::string_view service, absl::string_view address) {
  uint64_t id = 0;
  {
    absl::MutexLock write_lock(&write_mu_);
    {
      absl::MutexLock lock(&mu_);
      if (publications_.erase({std::string(service), std::string(address)}) == 0) {
        return absl::NotFoundError(absl::StrCat("instance ", address, " of service '", service,
                                                "' was not published by this client"));
      }
      if (stream_ == nullptr) {
        // Not connected: a new session will not have it; a resumed one is
        // told on reconnect.
        withdrawn_.insert({std::string(service), std::string(address)});
        return absl::OkStatus();
      }
      id = next_id_++;
      requests_[id].unpublish = std::make_pair(std::string(service), std::string(address));
    }
    v1::ClientMessage message;
    message.mutable_unpublish()->set_request_id(id);
    message.mutable_unpublish()->set_service(std::string(service));
    message.mutable_unpublish()->set_address(std::string(address));
    WriteLocked(message);
  }
  absl::MutexLock lock(&mu_);
  return WaitForRequest(id);
}

// ---------------------------------------------------------------------------
// Unary config calls

// Tries each registry in turn. A write moves on only when the call surely
// never reached the registry (UNAVAILABLE); a read also on a timeout.
template <typename Call>
absl::Status Client::Impl::Unary(bool is_read, Call call) {
  std::vector<std::string> order;
  {
    absl::MutexLock lock(&mu_);
    size_t n = options_.registries.size();
    for (size_t i = 0; i < n; ++i) {
      order.push_back(options_.registries[(address_index_ + i) % n]);
    }
  }
  absl::Status last = absl::UnavailableError("no registry configured");
  for (const std::string& address : order) {
    auto stub = StubFor(address);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.request_timeout));
    grpc::Status status = call(stub.get(), &context);
    last = FromGrpcStatus(status);
    bool retry = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                 (is_read && status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
    if (!retry) {
      return last;
    }
  }
  return last;
}

std::unique_ptr<v1::Registry::Stub> Client::Impl::StubFor(const std::string& address) {
  absl::MutexLock lock(&mu_);
  if (connected_ && channel_ != nullptr &&
      options_.registries[address_index_ % options_.registries.size()] == address) {
    return v1::Registry::NewStub(channel_);
  }
  return v1::Registry::NewStub(grpc::CreateChannel(address, formica::ChannelCredentials()));
}

absl::StatusOr<ConfigValue> Client::Impl::GetConfig(absl::string_view key) {
  v1::GetConfigRequest request;
  request.set_key(std::string(key));
  v1::ConfigEntry response;
  absl::Status st = Unary(true, [&](v1::Registry::Stub* stub, grpc::ClientContext* ctx) {
    return stub->GetConfig(ctx, request, &response);
  });
  if (!st.ok()) {
    return st;
  }
  return FromProto(response);
}

absl::StatusOr<ConfigValue> Client::Impl::PutConfig(absl::string_view key, absl::string_view value,
                                                    std::optional<uint64_t> expected) {
  v1::PutConfigRequest request;
  request.set_key(std::string(key));
  request.set_value(std::string(value));
  if (expected) {
    request.set_expected_version(*expected);
  }
  v1::PutConfigResponse response;
  absl::Status st = Unary(false, [&](v1::Registry::Stub* stub, grpc::ClientContext* ctx) {
    return stub->PutConfig(ctx, request, &response);
  });
  if (!st.ok()) {
    return st;
  }
  return FromProto(response.entry());
}

absl::Status Client::Impl::DeleteConfig(absl::string_view key, std::optional<uint64_t> expected) {
  v1::DeleteConfigRequest request;
  request.set_key(std::string(key));
  if (expected) {
    request.set_expected_version(*expected);
  }
  v1::DeleteConfigResponse response;
  return Unary(false, [&](v1::Registry::Stub* stub, grpc::ClientContext* ctx) {
    return stub->DeleteConfig(ctx, request, &response);
  });
}

}  // namespace formica::registry
