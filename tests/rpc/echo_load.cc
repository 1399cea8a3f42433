// A caller for demonstrations and release tests: calls formica.test.Echo
// through rpc::Client at a steady rate and prints, every second, how many
// calls ended and how many failed (and the first failure's message).
//   echo_load --registry H:P [--qps N] [--seconds S]
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "formica/internal/daemon.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/test/echo.grpc.pb.h"

int main(int argc, char** argv) {
  formica::InstallTerminationHandler();
  formica::registry::ClientOptions registry_options;
  registry_options.client_name = "echo_load";
  int qps = 100;
  int seconds = 0;  // 0: until SIGTERM
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--registry") {
      registry_options.registries.push_back(argv[i + 1]);
    } else if (flag == "--qps") {
      qps = std::max(1, std::atoi(argv[i + 1]));
    } else if (flag == "--seconds") {
      seconds = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "echo_load: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  auto registry = formica::registry::Client::Create(registry_options);
  if (!registry.ok()) {
    std::fprintf(stderr, "echo_load: %s\n", registry.status().ToString().c_str());
    return 2;
  }
  formica::rpc::ClientOptions options;
  options.app_name = "echo_load";
  auto client = *formica::rpc::Client::Create(options, registry->get());
  static std::atomic<bool> stop{false};
  std::thread([] {
    formica::WaitForTerminationSignal();
    stop = true;
  }).detach();
  const absl::Time start = absl::Now();
  long total = 0, failed = 0, second_calls = 0, second_failed = 0;
  std::string first_error;
  absl::Time next_report = start + absl::Seconds(1);
  for (long n = 0; !stop.load(); ++n) {
    absl::Time due = start + absl::Seconds(1) * n / qps;
    if (seconds > 0 && due >= start + absl::Seconds(seconds)) break;
    absl::SleepFor(due - absl::Now());
    formica::test::EchoRequest request;
    formica::test::EchoResponse response;
    absl::Status st = client->CallWithStub<formica::test::Echo>(
        "formica.test.Echo", {}, [&](formica::test::Echo::Stub& stub, grpc::ClientContext* ctx) {
          return stub.Echo(ctx, request, &response);
        });
    ++total;
    ++second_calls;
    if (!st.ok()) {
      ++failed;
      ++second_failed;
      if (first_error.empty()) first_error = st.ToString();
    }
    if (absl::Now() >= next_report) {
      std::printf("load: %ld calls, %ld failed in the last second (%ld, %ld in all)%s%s\n",
                  second_calls, second_failed, total, failed, first_error.empty() ? "" : ": ",
                  first_error.c_str());
      std::fflush(stdout);
      second_calls = second_failed = 0;
      first_error.clear();
      next_report += absl::Seconds(1);
    }
  }
  std::printf("load done: %ld calls, %ld failed\n", total, failed);
  return failed == 0 ? 0 : 1;
}
