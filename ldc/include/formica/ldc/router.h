// formica::ldc::Router — this process's answer to "for this user, which
// zone, and may this zone write for them now?".
//
// A Router watches the rules (the registry config entry "ldc/rules"),
// applies every newer valid version, and reports the version it applied
// through its registry session, so a switch can prove every client applied
// a fence before ownership moves (docs/ldc.md). rpc, dms and dds ask it the
// same question; the shard is formica::UserShard, the function DDS uses.
//
//   auto router = ldc::Router::Start(registry.get(), {.zone = "zone-a"}).value();
//   router->AwaitRules(absl::Seconds(5));
//   auto route = router->RouteUser("20881042");   // shard 42, its owner zone
//   auto permit = router->AdmitWrite(42, absl::Now() + absl::Seconds(2));
//   if (permit.ok()) { /* write; the permit is released when it goes */ }
//
// Writes and versions: a write is admitted only under rules the registry
// knows this process holds (reported and confirmed on the current
// session), for a shard this zone owns and no switch has fenced. A newer
// version is reported as applied only once every write admitted under an
// older one has released its permit, so "every client reports version V"
// means no write under older rules is still running anywhere.
//
// Thread-safe. Change callbacks run one at a time, in version order, on
// the thread that applied the version (the registry client's dispatch
// thread, the Router's reporter, or the caller's for ForRules).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "formica/ldc/rules.h"

namespace formica::registry {
class Client;
}

namespace formica::ldc {

// The registry service every Router publishes its report in: one instance
// per process, zone = its zone, metadata "applied_version" and "client".
inline constexpr char kClientsService[] = "formica.ldc.clients";

struct RouterOptions {
  std::string zone;                        // this process's zone (required)
  std::string client_name = "ldc-client";  // shown by `formicactl ldc status`
  // The report's identity (its registry "address"); empty: host-pid-n.
  std::string instance_id;
};

// Where a user's requests belong under one rules version.
struct Route {
  int shard = 0;
  std::string owner;    // the RZone that owns the shard
  bool fenced = false;  // a switch is moving the shard: nobody writes it
  bool local = false;   // owner == this process's zone
  uint64_t version = 0;
};

class Router {
 public:
  using ChangeCallback = std::function<void(uint64_t version, const RuleSet& rules)>;

  // Holds a write admitted by AdmitWrite until destroyed. Movable.
  class WritePermit {
   public:
    WritePermit() = default;
    WritePermit(WritePermit&& other) noexcept;
    WritePermit& operator=(WritePermit&& other) noexcept;
    ~WritePermit();
    uint64_t version() const { return version_; }

   private:
    friend class Router;
    WritePermit(Router* router, uint64_t version) : router_(router), version_(version) {}
    Router* router_ = nullptr;
    uint64_t version_ = 0;
  };

  // Watches the rules through `registry` (borrowed; must outlive the
  // Router) and reports each applied version in kClientsService. Does not
  // wait for the rules (AwaitRules does). INVALID_ARGUMENT for a bad zone name.
  static absl::StatusOr<std::unique_ptr<Router>> Start(registry::Client* registry,
                                                       RouterOptions options);
  // Fixed rules at `version`, no registry: every valid version is
  // "confirmed". For tools, tests and benchmarks. INVALID_ARGUMENT for bad rules.
  static absl::StatusOr<std::unique_ptr<Router>> ForRules(RuleSet rules, uint64_t version,
                                                          std::string zone);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  const std::string& zone() const;
  // The version applied, 0 before any.
  uint64_t version() const;
  // The version the registry has confirmed this process reported, 0 before any.
  uint64_t reported_version() const;
  // The rules applied; nullptr before any.
  std::shared_ptr<const RuleSet> rules() const;
  // Waits until some rules are applied. DEADLINE_EXCEEDED otherwise.
  absl::Status AwaitRules(absl::Duration timeout) const;
  // Waits until the applied version is at least `version`.
  absl::Status AwaitVersion(uint64_t version, absl::Duration timeout) const;

  // The route of `user_id` (INVALID_ARGUMENT for an id without two final
  // digits, UNAVAILABLE before any rules).
  absl::StatusOr<Route> RouteUser(absl::string_view user_id) const;
  absl::StatusOr<Route> RouteShard(int shard) const;
  // The zone a call for `user_id` goes to: its owner; with no user, this zone.
  absl::StatusOr<std::string> ZoneForUser(absl::string_view user_id) const;

  // Admits a write for `shard` in this zone, waiting until `deadline` while
  // the shard is fenced or this process's rules are not yet confirmed.
  // FAILED_PRECONDITION naming the owner when another zone owns the shard;
  // UNAVAILABLE (retryable) when the fence or confirmation outlasts the deadline.
  absl::StatusOr<WritePermit> AdmitWrite(int shard, absl::Time deadline);
  absl::StatusOr<WritePermit> AdmitUserWrite(absl::string_view user_id, absl::Time deadline);

  // Calls `callback` after every newly applied version (and at once if some
  // rules are applied). Returns an id for RemoveCallback.
  uint64_t OnChange(ChangeCallback callback);
  // After it returns the callback is not running and never runs again.
  // REQUIRES: not called from a change callback.
  void RemoveCallback(uint64_t id);

  class Impl;

 private:
  explicit Router(std::unique_ptr<Impl> impl);
  void Release(uint64_t version);
  std::unique_ptr<Impl> impl_;
};

}  // namespace formica::ldc
