#include "stream_call.h"

#include <grpcpp/grpcpp.h>

#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"

namespace formica::dms {

absl::Status CallBrokerStream(rpc::Client* rpc, const rpc::Client::Attempt& attempt,
                              const std::string& service) {
  rpc::CallOptions probe;
  probe.timeout = absl::Seconds(1);
  probe.idempotent = true;
  probe.inherit_current = false;
  absl::Status reachable = rpc->Call(
      service, probe, [](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
        v1::ListTopicsRequest req;
        v1::ListTopicsReply reply;
        return v1::Broker::NewStub(channel)->ListTopics(ctx, req, &reply);
      });
  if (!reachable.ok()) return reachable;
  rpc::CallOptions co;
  co.timeout = absl::Hours(24 * 365);
  co.inherit_current = false;
  return rpc->Call(service, co, attempt);
}

}  // namespace formica::dms
