// formica::registry::Client — a process's link to the DSR service registry.
//
// A Client keeps one session with a dsrd node (failing over between the
// listed nodes), publishes this process's instances, subscribes to the
// services it calls and watches config keys. It restores its session,
// publications, subscriptions and watches by itself after any disconnect.
// It keeps the last snapshot of every subscribed service in memory and, with
// `cache_dir`, on disk, so a process started while the registry is down
// still finds its providers.
//
//   ClientOptions options;
//   options.registries = {"127.0.0.1:7370"};
//   auto client = Client::Create(options).value();
//   client->Publish({.service = "fund.Trade", .address = "10.0.0.5:9000"});
//   client->Subscribe("account.Balance", [](const ServiceSnapshot& s) {
//     // s.instances is the full provider set at s.version
//   });
//
// Thread-safe. Callbacks run on the client's own dispatch thread, never on
// the network thread: a callback that blocks delays only later callbacks
// (which are merged to the newest snapshot meanwhile), and one that throws
// is logged and ignored. Destroying the Client closes the session cleanly,
// which withdraws its publications at once, and waits for a running
// callback: what callbacks use must outlive the Client (declare it first).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace formica::registry {

// One provider of a service.
struct Instance {
  std::string service;
  std::string address;  // host:port
  std::string zone;
  int32_t weight = 100;                     // 0..10000 (the registry's limit)
  std::map<std::string, std::string> tags;  // version, color, group...
  std::map<std::string, std::string> metadata;

  bool operator==(const Instance& other) const;
};

// The full provider set of a service at one version. Versions only grow.
struct ServiceSnapshot {
  std::string service;
  uint64_t version = 0;
  std::vector<Instance> instances;
  bool from_cache = false;  // loaded from the local cache, not yet confirmed
};

// A persistent config entry; `version` only grows for a key.
struct ConfigValue {
  std::string key;
  std::string value;
  uint64_t version = 0;
  bool exists = false;
};

struct ClientOptions {
  // dsrd nodes, "host:port"; the client moves to the next when one fails.
  std::vector<std::string> registries;
  // Shown to operators in `formicactl registry sessions`.
  std::string client_name = "formica-client";
  // The session lease: without a heartbeat for this long, the registry drops
  // the session and its publications. Heartbeats go every lease/3.
  absl::Duration lease = absl::Seconds(10);
  // How long Publish, Unpublish and config calls wait for the registry.
  absl::Duration request_timeout = absl::Seconds(5);
  // How often the client compares its versions with the registry's.
  absl::Duration reconcile_interval = absl::Seconds(30);
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(5);
  // Directory for the snapshot cache; empty: no disk cache.
  std::string cache_dir;
  // By default a push with no instances is recorded but not applied, so a
  // registry fault never empties a caller's provider list.
  bool accept_empty_push = false;
};

class Client {
 public:
  using SnapshotCallback = std::function<void(const ServiceSnapshot&)>;
  using ConfigCallback = std::function<void(const ConfigValue&)>;

  // Checks the options and starts connecting in the background; does not
  // wait for the registry. INVALID_ARGUMENT names a bad option.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Publishes (or updates) an instance owned by this client's session and
  // waits for the registry's verdict. INVALID_ARGUMENT (nothing kept) names
  // the bad field. If the registry is unreachable, the instance stays queued
  // and is published on reconnect; the call then returns DEADLINE_EXCEEDED.
  absl::Status Publish(const Instance& instance);
  // Withdraws an instance this client published. NOT_FOUND if it did not.
  absl::Status Unpublish(absl::string_view service, absl::string_view address);

  // Calls `callback` with every newer snapshot of `service` (and at once
  // with the cached one, if any). Returns an id for Unsubscribe.
  absl::StatusOr<uint64_t> Subscribe(absl::string_view service, SnapshotCallback callback);
  // After it returns, the callback is not running and never runs again
  // (when called from a callback, only the latter holds).
  void Unsubscribe(uint64_t subscription_id);

  // The newest snapshot known for a subscribed service, if any.
  std::optional<ServiceSnapshot> GetSnapshot(absl::string_view service) const;
  // Waits up to `timeout` for a snapshot of a subscribed service with at
  // least one instance (or any snapshot if `allow_empty`).
  absl::StatusOr<ServiceSnapshot> AwaitSnapshot(absl::string_view service, absl::Duration timeout,
                                                bool allow_empty = false) const;

  // Config entries (persistent, versioned).
  absl::StatusOr<ConfigValue> GetConfig(absl::string_view key);
  // With `expected_version`, a compare-and-set: FAILED_PRECONDITION when the
  // key moved on (0 means "must not exist").
  absl::StatusOr<ConfigValue> PutConfig(absl::string_view key, absl::string_view value,
                                        std::optional<uint64_t> expected_version = std::nullopt);
  absl::Status DeleteConfig(absl::string_view key,
                            std::optional<uint64_t> expected_version = std::nullopt);
  // Calls `callback` with every newer version of `key`, at once with the
  // current one. Returns an id for Unwatch.
  absl::StatusOr<uint64_t> WatchConfig(absl::string_view key, ConfigCallback callback);
  void Unwatch(uint64_t watch_id);

  bool connected() const;
  uint64_t session_id() const;
  // The session as one consistent reading.
  struct SessionView {
    bool connected = false;
    uint64_t id = 0;
    // Until when this client's session is surely alive at the registry, by
    // this process's monotonic clock: the registry ends a session only
    // after a lease with nothing from its client, so the session outlives
    // the sending of the newest message the registry answered (a
    // heartbeat, or the open) by a lease; a tenth of it is kept as a margin
    // for the clocks' rates. The epoch (min()) when not connected. A
    // process that was paused (SIGSTOP, a long GC-like stall) past it must
    // not act on what the session told it (LDC rules) until it has a
    // session again.
    std::chrono::steady_clock::time_point lease_valid_until;
  };
  SessionView session() const;
  // session().lease_valid_until on the wall clock (InfinitePast when not
  // connected), for display; decisions take session().
  absl::Time lease_valid_until() const;
  // The registry node this client is connected to, or empty.
  std::string connected_registry() const;

  // Breaks the connection as a network fault would; the client reconnects
  // and resumes its session. For tests.
  void DropConnectionForTesting();

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::registry
