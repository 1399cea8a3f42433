// A user's program: links only the installed Formica::client package.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <future>

#include "formica/registry/client.h"
#include "formica/rpc/client.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer HOST:PORT\n");
    return 2;
  }
  formica::registry::ClientOptions options;
  options.registries = {argv[1]};
  options.client_name = "consumer";
  auto client = formica::registry::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }
  formica::registry::Instance me;
  me.service = "consumer.Hello";
  me.address = "127.0.0.1:5555";
  if (absl::Status st = (*client)->Publish(me); !st.ok()) {
    std::fprintf(stderr, "publish: %s\n", st.ToString().c_str());
    return 1;
  }
  if (!(*client)->Subscribe("consumer.Hello", nullptr).ok()) {
    return 1;
  }
  auto snapshot = (*client)->AwaitSnapshot("consumer.Hello", absl::Seconds(10));
  if (!snapshot.ok() || snapshot->instances.size() != 1 ||
      snapshot->instances[0].address != "127.0.0.1:5555") {
    std::fprintf(stderr, "subscribe: %s\n", snapshot.status().ToString().c_str());
    return 1;
  }
  std::printf("consumer saw %s at version %llu\n", snapshot->instances[0].address.c_str(),
              static_cast<unsigned long long>(snapshot->version));

  // rpc::Client over the published gRPC health service of dsrd itself.
  formica::registry::Instance health;
  health.service = "grpc.health.v1.Health";
  health.address = argv[1];
  if (!(*client)->Publish(health).ok()) return 1;
  formica::rpc::ClientOptions rpc_options;
  rpc_options.app_name = "consumer";
  auto rpc = formica::rpc::Client::Create(rpc_options, client->get());
  if (!rpc.ok()) return 1;
  formica::rpc::CallOptions call;
  call.timeout = absl::Seconds(10);
  grpc::ByteBuffer response;
  absl::Status st = (*rpc)->Call(
      "grpc.health.v1.Health", call,
      [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
        grpc::GenericStub stub(channel);
        grpc::Slice empty("");  // an empty HealthCheckRequest: the server as a whole
        grpc::ByteBuffer request(&empty, 1);
        std::promise<grpc::Status> done;
        stub.UnaryCall(ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                       &response, [&done](grpc::Status s) { done.set_value(s); });
        return done.get_future().get();
      });
  if (!st.ok()) {
    std::fprintf(stderr, "rpc call: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("consumer called grpc.health.v1.Health through rpc::Client (%zu bytes back)\n",
              response.Length());
  return 0;
}
