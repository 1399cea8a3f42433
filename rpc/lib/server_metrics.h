// rpc::Server's share of the call metrics (formica/rpc/metrics.h).
//
// Each synchronous method of a hosted service gets its handler wrapped in a
// counting one (CountMethods, before the server starts). The wrapper makes
// the method's series current on the handler thread; rpc::Serve, which the
// handler's body runs in, reports the status the body returned
// (ReportServedStatus), and the wrapper counts the call with that code and
// the handler's time. No interceptor: with one, gRPC runs its interception
// machinery on every operation of every call; this costs two clock reads and
// three relaxed atomic additions per call (bench/rpc measures it). A call whose
// handler does not use rpc::Serve, and methods of the async API, are not
// counted.
//
// Callback-API methods (a reactor finishes the call later, on another
// thread) are counted by an interceptor that reads the status sent
// (CallbackCounting); it runs only on their calls, and only servers that
// host such a method install it.
//
// ServerMetrics also serves the process's counters as formica.rpc.v1.Stats.
#pragma once

#include <grpcpp/support/server_interceptor.h>
#include <grpcpp/support/status.h>

#include <memory>
#include <string>
#include <vector>

#include "formica/rpc/server.h"

namespace formica::rpc {

// Called by rpc::Serve with the status the handler's body returned.
void ReportServedStatus(const grpc::Status& status);

class ServerMetrics {
 public:
  ServerMetrics();
  ~ServerMetrics();

  // Wraps the handlers of every synchronous method of `services`; call
  // before the services are registered with a gRPC server.
  void CountMethods(const std::vector<HostedService>& services);
  // The interceptor factory counting the callback-API methods CountMethods
  // found, to install in the server's builder; null when there are none.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> CallbackCounting();
  // Once the server listens: counting starts, each series labelled with
  // `provider` (the advertised address). Calls before this are not counted.
  void Start(const std::string& provider);

  // The Stats service to register with the server (owned by this object).
  grpc::Service* stats_service();

  class State;

 private:
  std::shared_ptr<State> state_;
  std::unique_ptr<grpc::Service> stats_service_;
};

}  // namespace formica::rpc
