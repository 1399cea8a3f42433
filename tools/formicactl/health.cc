// formicactl: health [SERVICE], the daemon's gRPC health status.
#include "formica/internal/credentials.h"
#include "formicactl.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <future>

namespace formica::ctl {

// grpc.health.v1.Health/Check without its generated stubs: the request is
// {1: service}, the response {1: status}, both tiny protobuf messages.
grpc::Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         grpc::ClientContext* ctx, int* code) {
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::GenericStub stub(channel);
  std::promise<grpc::Status> done;
  stub.UnaryCall(ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response_buffer, [&done](grpc::Status st) { done.set_value(st); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  (void)response_buffer.Dump(&slices);
  std::string response;
  for (const auto& s : slices) response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  *code = response.size() >= 2 && response[0] == 0x08 ? response[1] : 0;
  return status;
}

int Health(const Flags& flags, const std::string& service) {
  auto channel = grpc::CreateChannel(flags.registry, formica::ChannelCredentials());
  auto ctx = CallContext(flags);
  int code = 0;
  grpc::Status status = CheckHealth(channel, service, ctx.get(), &code);
  if (!status.ok()) return Fail(status);
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  const char* name = kNames[code >= 0 && code <= 3 ? code : 0];
  if (flags.output == Output::kJson) {
    std::printf("{\n \"status\": \"%s\"\n}\n", name);
  } else {
    std::printf("%s\n", name);
  }
  return code == 1 ? 0 : 1;
}

}  // namespace formica::ctl
