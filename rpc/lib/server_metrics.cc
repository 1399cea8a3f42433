#include "server_metrics.h"

#include <google/protobuf/descriptor.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/rpc_service_method.h>

#include <atomic>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "call_stats.h"
#include "formica/rpc/metrics.h"
#include "formica/rpc/v1/rpc.grpc.pb.h"

namespace formica::rpc {
namespace {

// grpc::Service keeps its methods in a private member, and a method its
// handler in another, with no way to wrap one; an explicit instantiation may
// name private members, which gives us their pointers (checked by the
// compiler against the gRPC in use).
using MethodList = std::vector<std::unique_ptr<grpc::internal::RpcServiceMethod>>;
struct ServiceMethodsTag {
  using Member = MethodList grpc::Service::*;
  friend Member MemberOf(ServiceMethodsTag);
};
struct MethodHandlerTag {
  using Member = std::unique_ptr<grpc::internal::MethodHandler> grpc::internal::RpcServiceMethod::*;
  friend Member MemberOf(MethodHandlerTag);
};
template <typename Tag, typename Tag::Member M>
struct ExposeMember {
  friend typename Tag::Member MemberOf(Tag) { return M; }
};
template struct ExposeMember<ServiceMethodsTag, &grpc::Service::methods_>;
template struct ExposeMember<MethodHandlerTag, &grpc::internal::RpcServiceMethod::handler_>;

MethodList& MethodsOf(grpc::Service& service) { return service.*MemberOf(ServiceMethodsTag{}); }
std::unique_ptr<grpc::internal::MethodHandler>& HandlerOf(grpc::internal::RpcServiceMethod& m) {
  return m.*MemberOf(MethodHandlerTag{});
}

// The call a counting handler runs on this thread; rpc::Serve fills in the
// status its body returned.
struct ServedCall {
  int code = -1;
};
thread_local ServedCall* current_call = nullptr;

// Runs a method's own handler and counts the call.
class CountingHandler : public grpc::internal::MethodHandler {
 public:
  explicit CountingHandler(grpc::internal::MethodHandler* inner) : inner_(inner) {}

  void Count(std::shared_ptr<CallStats> stats) {
    absl::MutexLock lock(&mu_);
    owned_ = std::move(stats);
    stats_.store(owned_.get(), std::memory_order_release);
  }

  void RunHandler(const HandlerParameter& param) override {
    CallStats* stats = stats_.load(std::memory_order_acquire);
    if (stats == nullptr) {
      inner_->RunHandler(param);
      return;
    }
    ServedCall call;
    ServedCall* outer = current_call;
    current_call = &call;
    absl::Time start = absl::Now();
    inner_->RunHandler(param);
    current_call = outer;
    if (call.code >= 0) stats->Record(call.code, absl::Now() - start);
  }

  void* Deserialize(grpc_call* call, grpc_byte_buffer* request, grpc::Status* status,
                    void** handler_data) override {
    return inner_->Deserialize(call, request, status, handler_data);
  }

 private:
  const std::unique_ptr<grpc::internal::MethodHandler> inner_;
  std::atomic<CallStats*> stats_{nullptr};
  absl::Mutex mu_;
  std::shared_ptr<CallStats> owned_ ABSL_GUARDED_BY(mu_);
};

void FillSeries(const CallSeries& s, v1::CallSeries* out) {
  out->set_side(s.side == CallSeries::Side::kServer ? "server" : "client");
  out->set_service(s.service);
  out->set_method(s.method);
  out->set_provider(s.provider);
  out->set_calls(s.calls());
  out->set_failures(s.failures());
  for (int code = 0; code < kStatusCodes; ++code) {
    if (s.calls_by_code[code] > 0) (*out->mutable_calls_by_code())[code] = s.calls_by_code[code];
  }
  for (uint64_t n : s.latency_buckets) out->add_latency_buckets(n);
  out->set_latency_sum_us(s.latency_sum_us);
}

}  // namespace

void ReportServedStatus(const grpc::Status& status) {
  if (current_call != nullptr) current_call->code = static_cast<int>(status.error_code());
}

class ServerMetrics::State {
 public:
  struct Counted {
    std::string service;
    std::string method;
    CountingHandler* handler;  // null: a callback-API method
  };
  using CallbackSeries = absl::flat_hash_map<std::string, std::shared_ptr<CallStats>>;
  absl::Mutex mu;
  std::string provider ABSL_GUARDED_BY(mu);
  std::vector<Counted> counted ABSL_GUARDED_BY(mu);
  // The callback-API methods' series by "/pkg.Service/Method": made once by
  // Start, then read by the interceptor factory without a lock.
  std::unique_ptr<const CallbackSeries> callback_series ABSL_GUARDED_BY(mu);
  std::atomic<const CallbackSeries*> callback{nullptr};
};

namespace {

class StatsService final : public v1::Stats::Service {
 public:
  explicit StatsService(std::shared_ptr<ServerMetrics::State> state) : state_(std::move(state)) {}
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest* request,
                        v1::StatsReply* reply) override {
    {
      absl::MutexLock lock(&state_->mu);
      reply->set_provider(state_->provider);
    }
    reply->set_unix_ms(absl::ToUnixMillis(absl::Now()));
    for (int i = 0; i + 1 < kLatencyBuckets; ++i) {
      reply->add_latency_bounds_us(LatencyBucketBoundUs(i));
    }
    for (const CallSeries& s : CallMetricsSnapshot()) {
      if (!request->service().empty() && s.service != request->service()) continue;
      FillSeries(s, reply->add_series());
    }
    return grpc::Status::OK;
  }

 private:
  std::shared_ptr<ServerMetrics::State> state_;
};

}  // namespace

namespace {

// Counts one call of a callback-API method: its status as sent, and the
// time since the call reached the server.
class CallbackCounter final : public grpc::experimental::Interceptor {
 public:
  explicit CallbackCounter(CallStats* stats) : stats_(stats), start_(absl::Now()) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      stats_->Record(static_cast<int>(methods->GetSendStatus().error_code()), absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  CallStats* const stats_;
  const absl::Time start_;
};

// Makes a CallbackCounter for each call of a counted callback-API method
// (none for other methods: gRPC skips a null interceptor).
class CallbackCounterFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallbackCounterFactory(std::shared_ptr<ServerMetrics::State> state)
      : state_(std::move(state)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    const ServerMetrics::State::CallbackSeries* series =
        state_->callback.load(std::memory_order_acquire);
    if (series == nullptr || info->method() == nullptr) return nullptr;
    auto it = series->find(absl::string_view(info->method()));
    return it == series->end() ? nullptr : new CallbackCounter(it->second.get());
  }

 private:
  const std::shared_ptr<ServerMetrics::State> state_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
ServerMetrics::CallbackCounting() {
  absl::MutexLock lock(&state_->mu);
  for (const State::Counted& c : state_->counted) {
    if (c.handler == nullptr) return std::make_unique<CallbackCounterFactory>(state_);
  }
  return nullptr;
}

ServerMetrics::ServerMetrics()
    : state_(std::make_shared<State>()), stats_service_(std::make_unique<StatsService>(state_)) {}
ServerMetrics::~ServerMetrics() = default;

grpc::Service* ServerMetrics::stats_service() { return stats_service_.get(); }

void ServerMetrics::CountMethods(const std::vector<HostedService>& services) {
  absl::MutexLock lock(&state_->mu);
  for (const HostedService& h : services) {
    for (std::unique_ptr<grpc::internal::RpcServiceMethod>& method : MethodsOf(*h.service)) {
      if (method == nullptr || method->handler() == nullptr) continue;
      // "/pkg.Service/Method" -> "Method"
      absl::string_view short_name = method->name();
      short_name = short_name.substr(short_name.rfind('/') + 1);
      if (method->api_type() == grpc::internal::RpcServiceMethod::ApiType::CALL_BACK) {
        // Counted by an interceptor (CallbackCounting), by its full name.
        state_->counted.push_back({h.name, std::string(method->name()), nullptr});
        continue;
      }
      if (method->api_type() != grpc::internal::RpcServiceMethod::ApiType::SYNC) continue;
      auto* counting = dynamic_cast<CountingHandler*>(method->handler());
      if (counting == nullptr) {  // not wrapped by an earlier Server
        // The wrapper takes the handler over; the method holds the wrapper.
        std::unique_ptr<grpc::internal::MethodHandler>& handler = HandlerOf(*method);
        counting = new CountingHandler(handler.release());
        handler.reset(counting);
      }
      state_->counted.push_back({h.name, std::string(short_name), counting});
    }
  }
}

void ServerMetrics::Start(const std::string& provider) {
  absl::MutexLock lock(&state_->mu);
  state_->provider = provider;
  auto callback = std::make_unique<State::CallbackSeries>();
  for (const State::Counted& c : state_->counted) {
    if (c.handler == nullptr) {
      absl::string_view name = c.method;
      (*callback)[c.method] = CallStatsRegistry::Global().Get(
          CallSeries::Side::kServer, c.service, name.substr(name.rfind('/') + 1), provider);
      continue;
    }
    c.handler->Count(
        CallStatsRegistry::Global().Get(CallSeries::Side::kServer, c.service, c.method, provider));
  }
  if (state_->callback_series == nullptr && !callback->empty()) {
    state_->callback_series = std::move(callback);
    state_->callback.store(state_->callback_series.get(), std::memory_order_release);
  }
}

}  // namespace formica::rpc
