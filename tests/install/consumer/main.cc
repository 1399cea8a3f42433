// A user's program: links only the installed Formica::client package.
#include <cstdio>

#include "formica/registry/client.h"

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
  return 0;
}
