// A provider process for tests: publishes instances through the real client
// library and stays up until killed. Prints "published" once the registry
// has confirmed every instance.
//   registry_agent --registry H:P [--lease-ms N] SERVICE=ADDRESS...
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "formica/registry/client.h"

int main(int argc, char** argv) {
  formica::registry::ClientOptions options;
  options.client_name = "registry_agent";
  options.backoff_max = absl::Milliseconds(300);
  std::vector<formica::registry::Instance> instances;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--registry" && i + 1 < argc) {
      options.registries.push_back(argv[++i]);
    } else if (a == "--lease-ms" && i + 1 < argc) {
      options.lease = absl::Milliseconds(std::atoi(argv[++i]));
    } else if (a.find('=') != std::string::npos) {
      formica::registry::Instance inst;
      inst.service = a.substr(0, a.find('='));
      inst.address = a.substr(a.find('=') + 1);
      inst.tags["agent"] = "yes";
      instances.push_back(inst);
    } else {
      std::fprintf(stderr, "registry_agent: bad argument %s\n", a.c_str());
      return 2;
    }
  }
  auto client = formica::registry::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "registry_agent: %s\n", client.status().ToString().c_str());
    return 2;
  }
  for (const auto& inst : instances) {
    // Retry until the registry confirms: it may still be starting.
    for (int attempt = 0; attempt < 100; ++attempt) {
      if ((*client)->Publish(inst).ok()) {
        break;
      }
      usleep(100000);
    }
  }
  std::printf("published\n");
  std::fflush(stdout);
  while (true) {
    pause();
  }
}
