// Leadership of a replicated dtsd (docs/ha.md): only the leader of the
// current Raft term, once its term's first entry is applied (leader_ready),
// serves the Coordinator API, drives phase two and the deadlines, and is
// published in the registry. CoordinatorLeadership follows the RaftNode's
// role on its own thread: on becoming ready it takes an epoch through the
// log, reloads every unfinished activity from the applied state (as after a
// crash) and starts serving; on losing leadership it stops serving and
// driving, unpublishes, and refuses writes, so nothing is acknowledged by a
// deposed leader. Followers answer every call UNAVAILABLE naming the leader.
// A leadership is one term: a member found leading a later term than the
// one it took over in (lost and won again meanwhile), or whose store
// stopped taking writes after a failed proposal, steps down and takes
// over afresh. Each round (200 ms) also syncs writes still buffered.
//
//   LeaderDiscovery discovery(&registry_discovery);   // handed to rpc::Server
//   CoordinatorLeadership leadership(parts);
//   auto node = RaftNode::Start(raft, &store,
//       [&](const RaftNodeStatus& s) { leadership.OnRole(s); }).value();
//   store.Attach(node.get());
//   leadership.Start(node.get());
//   ...
//   leadership.Stop();   // steps down if leading
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "activity_engine.h"
#include "formica/internal/raft_node.h"
#include "formica/rpc/discovery.h"
#include "phase_two.h"
#include "recovery.h"
#include "replicated_activity_store.h"

namespace formica::dts {

// A Discovery that publishes what the server asks only while this member
// leads, and forwards everything else to `inner`. Thread-safe.
class LeaderDiscovery final : public rpc::Discovery {
 public:
  explicit LeaderDiscovery(rpc::Discovery* inner) : inner_(inner) {}

  // Publishes (true) or withdraws (false) every provider the server announced.
  void SetLeading(bool leading);

  absl::StatusOr<uint64_t> Subscribe(absl::string_view service,
                                     ProvidersCallback callback) override {
    return inner_->Subscribe(service, std::move(callback));
  }
  void Unsubscribe(uint64_t id) override { inner_->Unsubscribe(id); }
  std::optional<rpc::ProviderSet> Current(absl::string_view service) const override {
    return inner_->Current(service);
  }
  absl::StatusOr<uint64_t> WatchRoutes(absl::string_view service,
                                       RoutesCallback callback) override {
    return inner_->WatchRoutes(service, std::move(callback));
  }
  void UnwatchRoutes(uint64_t id) override { inner_->UnwatchRoutes(id); }
  absl::StatusOr<uint64_t> WatchDrain(absl::string_view service, RoutesCallback callback) override {
    return inner_->WatchDrain(service, std::move(callback));
  }
  void UnwatchDrain(uint64_t id) override { inner_->UnwatchDrain(id); }
  absl::Status Publish(absl::string_view service, const rpc::Provider& provider) override;
  absl::Status Unpublish(absl::string_view service, absl::string_view address) override;

 private:
  rpc::Discovery* const inner_;
  absl::Mutex mu_;
  bool leading_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, rpc::Provider> announced_ ABSL_GUARDED_BY(mu_);
};

// What leadership starts and stops; every pointer borrowed.
struct LeadershipParts {
  ReplicatedActivityStore* store = nullptr;
  ActivityEngine* engine = nullptr;
  PhaseTwoScheduler* scheduler = nullptr;
  LeaderDiscovery* discovery = nullptr;
  // A new sweeper of finished activities for each leadership.
  std::function<std::unique_ptr<RetentionSweeper>()> make_sweeper;
};

class CoordinatorLeadership {
 public:
  CoordinatorLeadership(uint64_t self_id, LeadershipParts parts);
  ~CoordinatorLeadership() { Stop(); }
  CoordinatorLeadership(const CoordinatorLeadership&) = delete;
  CoordinatorLeadership& operator=(const CoordinatorLeadership&) = delete;

  // From the RaftNode's role callback: records the status; never blocks.
  void OnRole(const RaftNodeStatus& status);
  // Starts following `node`'s role on a thread (borrowed; outlives Stop()).
  void Start(RaftNode* node);
  // Steps down when leading, then ends the thread. Idempotent.
  void Stop();

 private:
  void Loop();
  bool Lead(const RaftNodeStatus& status);
  void StepDown(const std::string& refusal);
  std::string Refusal(const RaftNodeStatus& status) const;

  const uint64_t self_id_;
  const LeadershipParts parts_;
  RaftNode* node_ = nullptr;
  absl::Mutex mu_;
  RaftNodeStatus latest_ ABSL_GUARDED_BY(mu_);
  bool changed_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  // Owned by the thread.
  bool leading_ = false;
  uint64_t led_term_ = 0;  // the term Lead took over in (its epoch entry's)
  std::unique_ptr<RetentionSweeper> sweeper_;
};

}  // namespace formica::dts
