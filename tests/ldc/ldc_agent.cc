// A client process for LDC tests: a registry client and an ldc::Router in
// one zone, up until killed. Prints "applied N" for every rules version it
// applies and "reported N" once the registry confirmed its report. With
// --probe-shard S it also asks for a write permit on shard S every 5 ms and
// prints "admitted S under N asked at MS" for each one granted (MS: the
// Unix time in milliseconds when it was asked for).
//   ldc_agent --registry H:P --zone Z [--name NAME] [--lease-ms N] [--probe-shard S]
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "formica/ldc/router.h"
#include "formica/registry/client.h"

int main(int argc, char** argv) {
  formica::registry::ClientOptions options;
  options.client_name = "ldc_agent";
  options.backoff_initial = absl::Milliseconds(50);
  options.backoff_max = absl::Milliseconds(300);
  formica::ldc::RouterOptions router_options;
  router_options.client_name = "ldc_agent";
  int probe = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--registry") {
      options.registries.push_back(argv[i + 1]);
    } else if (a == "--zone") {
      router_options.zone = argv[i + 1];
    } else if (a == "--name") {
      router_options.client_name = argv[i + 1];
    } else if (a == "--lease-ms") {
      options.lease = absl::Milliseconds(std::atoi(argv[i + 1]));
    } else if (a == "--probe-shard") {
      probe = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "ldc_agent: bad argument %s\n", a.c_str());
      return 2;
    }
  }
  auto client = formica::registry::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "ldc_agent: %s\n", client.status().ToString().c_str());
    return 2;
  }
  auto router = formica::ldc::Router::Start(client->get(), router_options);
  if (!router.ok()) {
    std::fprintf(stderr, "ldc_agent: %s\n", router.status().ToString().c_str());
    return 2;
  }
  (*router)->OnChange([](uint64_t version, const formica::ldc::RuleSet&) {
    std::printf("applied %llu\n", static_cast<unsigned long long>(version));
    std::fflush(stdout);
  });
  std::thread prober;
  if (probe >= 0) {
    prober = std::thread([&router, probe] {
      while (true) {
        absl::Time asked = absl::Now();
        auto permit = (*router)->AdmitWrite(probe, asked + absl::Milliseconds(50));
        if (permit.ok()) {
          std::printf("admitted %d under %llu asked at %lld\n", probe,
                      static_cast<unsigned long long>(permit->version()),
                      static_cast<long long>(absl::ToUnixMillis(asked)));
          std::fflush(stdout);
        }
        usleep(5000);
      }
    });
  }
  uint64_t reported = 0;
  while (true) {
    uint64_t now = (*router)->reported_version();
    if (now != reported) {
      reported = now;
      std::printf("reported %llu\n", static_cast<unsigned long long>(reported));
      std::fflush(stdout);
    }
    usleep(10000);
  }
}
