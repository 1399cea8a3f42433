// Client-side ("soft") load balancing: the policies rpc::Client picks a
// provider with. One interface, one class per policy, chosen per service by
// name in config. A Balancer is built for one provider set and thrown away
// when the set changes; the per-provider counters (in-flight calls, latency)
// live in EndpointState, shared across rebuilds so history is kept.
//
//   auto balancer = NewBalancer(Policy::kP2cEwma, endpoints);
//   EndpointState* e = balancer->Pick({});
//   e->CallStarted(); ... e->CallFinished(latency, ok);
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace formica::rpc {

// One provider as balancers see it. Thread-safe: calls update the counters
// from any thread.
class EndpointState {
 public:
  EndpointState(std::string address, int32_t weight) : address_(std::move(address)) {
    set_weight(weight);
  }

  const std::string& address() const { return address_; }
  // The effective weight (after warm-up); 0 takes no traffic while others can.
  int32_t weight() const { return weight_.load(std::memory_order_relaxed); }
  void set_weight(int32_t weight) { weight_.store(weight < 0 ? 0 : weight); }

  int in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  void CallStarted() { in_flight_.fetch_add(1, std::memory_order_relaxed); }
  // Feeds the latency average (EWMA, alpha 0.2) and ends the in-flight count.
  void CallFinished(absl::Duration latency);
  // Microseconds; 0 until the first call ends.
  double latency_ewma_us() const { return latency_ewma_us_.load(std::memory_order_relaxed); }

 private:
  const std::string address_;
  std::atomic<int32_t> weight_{0};
  std::atomic<int> in_flight_{0};
  std::atomic<double> latency_ewma_us_{0};
};

enum class Policy {
  kWeightedRandom,  // "weighted_random"
  kRoundRobin,      // "round_robin": smooth weighted round-robin
  kLeastActive,     // "least_active": fewest in-flight calls, ties by weight
  kConsistentHash,  // "consistent_hash": weighted Maglev on the call's hash key
  kP2cEwma,         // "p2c_ewma": best of two by latency EWMA x in-flight / weight
};

// INVALID_ARGUMENT names the policies there are.
absl::StatusOr<Policy> ParsePolicy(absl::string_view name);
const char* PolicyName(Policy policy);

struct PickContext {
  // For kConsistentHash: the call key's hash (see HashKey). Without one, the
  // pick is weighted random.
  std::optional<uint64_t> hash_key;
};

class Balancer {
 public:
  virtual ~Balancer() = default;
  // One of the endpoints given at construction; null when there are none.
  // Endpoints of weight 0 are picked only when every endpoint has weight 0
  // (a set being drained still serves rather than failing). Thread-safe.
  virtual EndpointState* Pick(const PickContext& context) = 0;
};

std::unique_ptr<Balancer> NewBalancer(Policy policy,
                                      std::vector<std::shared_ptr<EndpointState>> endpoints);

// Weight during warm-up: a linear ramp from 1 to `weight` over `warmup`
// since the provider started (`uptime`). Full weight once warm, or with no
// warm-up configured; 0 stays 0.
int32_t WarmedWeight(int32_t weight, absl::Duration uptime, absl::Duration warmup);

// A stable 64-bit hash of a call key (user id, order id...), the same in
// every process and build.
uint64_t HashKey(absl::string_view key);

}  // namespace formica::rpc
