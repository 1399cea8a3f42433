// formica-console: the web console (docs/operations.md). A small daemon that
// serves the console's pages (HTML, JS, CSS from an assets directory) and a
// JSON API over HTTP (cpp-httplib), reading and changing the daemons through
// their gRPC APIs: dsrd (services, config, routes, releases, ldc rules, the
// audit trail), dtsd (activities) and dmsd (topics, lag, dead letters, half
// messages). Every change needs the operator token and is written to the
// audit trail in the registry.
//
//   ConsoleOptions o;
//   o.registry = "127.0.0.1:7370";
//   o.token = "...";
//   auto console = Console::Start(o).value();
//   console->port();   // http://127.0.0.1:<port>/
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "formica/common/config.h"

namespace formica::console {

struct ConsoleOptions {
  std::string listen = "127.0.0.1:7400";    // console.listen (port 0 picks one)
  std::string registry = "127.0.0.1:7370";  // console.registry (required)
  std::string dts;     // console.dts: dtsd's address; "" leaves Transactions empty
  std::string dms;     // console.dms: dmsd's address; "" leaves Messaging empty
  std::string token;   // console.token (or the first line of console.token_file);
                       // "": every change is refused
  std::string assets;  // console.assets: the pages' directory; "": the installed one
  absl::Duration call_timeout = absl::Seconds(5);  // console.call_timeout
};

// Reads the `console` section; INVALID_ARGUMENT naming a bad key.
absl::StatusOr<ConsoleOptions> LoadConsoleOptions(const Config& config);

// The running console. Thread-safe; Shutdown() stops serving.
class Console {
 public:
  // INVALID_ARGUMENT for a malformed listen address or a missing assets
  // directory, UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Console>> Start(ConsoleOptions options);
  ~Console();

  int port() const;
  void Shutdown();

  class Impl;

 private:
  explicit Console(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::console
