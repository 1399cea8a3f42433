#include "balancer.h"

#include <algorithm>
#include <mutex>
#include <random>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace formica::rpc {
namespace {

std::mt19937_64& Rng() {
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   std::hash<std::thread::id>()(std::this_thread::get_id()));
  return rng;
}

uint64_t Uniform(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(Rng()); }

using Endpoints = std::vector<std::shared_ptr<EndpointState>>;

// The endpoints that may take traffic: those with weight > 0, or all of
// them when every weight is 0. Weights are read once, at construction.
struct Eligible {
  Endpoints owned;  // keeps every endpoint alive as long as the balancer
  std::vector<EndpointState*> endpoints;
  std::vector<int64_t> weights;  // 1 each when all were 0
  int64_t total = 0;

  explicit Eligible(const Endpoints& all) : owned(all) {
    for (const auto& e : all) {
      if (e->weight() > 0) {
        endpoints.push_back(e.get());
        weights.push_back(e->weight());
      }
    }
    if (endpoints.empty()) {
      for (const auto& e : all) {
        endpoints.push_back(e.get());
        weights.push_back(1);
      }
    }
    for (int64_t w : weights) total += w;
  }
};

// Index by weight: prefix sums and a binary search.
class WeightedRandom : public Balancer {
 public:
  explicit WeightedRandom(const Endpoints& all) : eligible_(all) {
    int64_t sum = 0;
    for (int64_t w : eligible_.weights) {
      sum += w;
      prefix_.push_back(sum);
    }
  }
  EndpointState* Pick(const PickContext&) override {
    if (eligible_.endpoints.empty()) return nullptr;
    int64_t r = static_cast<int64_t>(Uniform(static_cast<uint64_t>(eligible_.total)));
    size_t i = std::upper_bound(prefix_.begin(), prefix_.end(), r) - prefix_.begin();
    return eligible_.endpoints[i];
  }

 private:
  Eligible eligible_;
  std::vector<int64_t> prefix_;
};

// nginx's smooth weighted round-robin: every pick adds each weight to its
// endpoint's score, takes the highest and takes the total off it. Weights
// 5,1,1 give a a b a c a a, not a a a a a b c.
class SmoothRoundRobin : public Balancer {
 public:
  explicit SmoothRoundRobin(const Endpoints& all)
      : eligible_(all), current_(eligible_.endpoints.size(), 0) {}
  EndpointState* Pick(const PickContext&) override {
    if (eligible_.endpoints.empty()) return nullptr;
    absl::MutexLock lock(&mu_);
    size_t best = 0;
    for (size_t i = 0; i < current_.size(); ++i) {
      current_[i] += eligible_.weights[i];
      if (current_[i] > current_[best]) best = i;
    }
    current_[best] -= eligible_.total;
    return eligible_.endpoints[best];
  }

 private:
  Eligible eligible_;
  absl::Mutex mu_;
  std::vector<int64_t> current_ ABSL_GUARDED_BY(mu_);
};

// Fewest in-flight calls; among equals, weighted random.
class LeastActive : public Balancer {
 public:
  explicit LeastActive(const Endpoints& all) : eligible_(all) {}
  EndpointState* Pick(const PickContext&) override {
    if (eligible_.endpoints.empty()) return nullptr;
    int least = std::numeric_limits<int>::max();
    int64_t tie_weight = 0;
    EndpointState* chosen = nullptr;
    for (size_t i = 0; i < eligible_.endpoints.size(); ++i) {
      int active = eligible_.endpoints[i]->in_flight();
      int64_t w = eligible_.weights[i];
      if (active < least) {
        least = active;
        tie_weight = w;
        chosen = eligible_.endpoints[i];
      } else if (active == least) {
        // Reservoir choice among ties, in proportion to weight.
        tie_weight += w;
        if (static_cast<int64_t>(Uniform(static_cast<uint64_t>(tie_weight))) < w) {
          chosen = eligible_.endpoints[i];
        }
      }
    }
    return chosen;
  }

 private:
  Eligible eligible_;
};

// Maglev (Eisenbud et al., NSDI 2016) with weights: each endpoint fills
// table slots in the order of its own permutation, taking a turn in each
// round in proportion to its weight. A lookup is one table read; adding an
// endpoint to N moves about 1/(N+1) of the keys.
class Maglev : public Balancer {
 public:
  static constexpr uint64_t kTableSize = 65537;  // prime

  explicit Maglev(const Endpoints& all) : eligible_(all), fallback_(all) {
    size_t n = eligible_.endpoints.size();
    if (n == 0) return;
    std::vector<uint64_t> offset(n);
    std::vector<uint64_t> skip(n);
    std::vector<uint64_t> next(n, 0);
    std::vector<double> credit(n, 0);
    int64_t max_weight = *std::max_element(eligible_.weights.begin(), eligible_.weights.end());
    for (size_t i = 0; i < n; ++i) {
      const std::string& name = eligible_.endpoints[i]->address();
      offset[i] = HashKey(name) % kTableSize;
      skip[i] = HashKey(absl::StrCat(name, "#skip")) % (kTableSize - 1) + 1;
    }
    table_.assign(kTableSize, -1);
    uint64_t filled = 0;
    while (filled < kTableSize) {
      for (size_t i = 0; i < n && filled < kTableSize; ++i) {
        credit[i] += static_cast<double>(eligible_.weights[i]) / max_weight;
        if (credit[i] < 1) continue;
        credit[i] -= 1;
        uint64_t slot = (offset[i] + next[i] * skip[i]) % kTableSize;
        while (table_[slot] >= 0) {
          ++next[i];
          slot = (offset[i] + next[i] * skip[i]) % kTableSize;
        }
        table_[slot] = static_cast<int32_t>(i);
        ++next[i];
        ++filled;
      }
    }
  }
  EndpointState* Pick(const PickContext& context) override {
    if (eligible_.endpoints.empty()) return nullptr;
    if (!context.hash_key.has_value()) return fallback_.Pick(context);
    return eligible_.endpoints[table_[*context.hash_key % kTableSize]];
  }

 private:
  Eligible eligible_;
  WeightedRandom fallback_;
  std::vector<int32_t> table_;
};

// Power of two choices: two distinct random endpoints, the one with the
// lower expected cost (latency EWMA x (in-flight + 1) / weight) wins.
class P2cEwma : public Balancer {
 public:
  explicit P2cEwma(const Endpoints& all) : eligible_(all) {}
  EndpointState* Pick(const PickContext&) override {
    size_t n = eligible_.endpoints.size();
    if (n == 0) return nullptr;
    if (n == 1) return eligible_.endpoints[0];
    size_t a = Uniform(n);
    size_t b = Uniform(n - 1);
    if (b >= a) ++b;
    return Cost(a) <= Cost(b) ? eligible_.endpoints[a] : eligible_.endpoints[b];
  }

 private:
  double Cost(size_t i) const {
    const EndpointState* e = eligible_.endpoints[i];
    // An endpoint with no history yet counts as fast (1us) so it gets tried.
    double latency = std::max(1.0, e->latency_ewma_us());
    return latency * (e->in_flight() + 1) / static_cast<double>(eligible_.weights[i]);
  }
  Eligible eligible_;
};

}  // namespace

void EndpointState::CallFinished(absl::Duration latency) {
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
  double sample = absl::ToDoubleMicroseconds(latency);
  double old = latency_ewma_us_.load(std::memory_order_relaxed);
  double updated;
  do {
    updated = old == 0 ? sample : old * 0.8 + sample * 0.2;
  } while (!latency_ewma_us_.compare_exchange_weak(old, updated, std::memory_order_relaxed));
}

absl::StatusOr<Policy> ParsePolicy(absl::string_view name) {
  for (Policy p : {Policy::kWeightedRandom, Policy::kRoundRobin, Policy::kLeastActive,
                   Policy::kConsistentHash, Policy::kP2cEwma}) {
    if (name == PolicyName(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("balancing policy '", name,
                   "' is not one of weighted_random, round_robin, least_active, "
                   "consistent_hash, p2c_ewma"));
}

const char* PolicyName(Policy policy) {
  switch (policy) {
    case Policy::kWeightedRandom:
      return "weighted_random";
    case Policy::kRoundRobin:
      return "round_robin";
    case Policy::kLeastActive:
      return "least_active";
    case Policy::kConsistentHash:
      return "consistent_hash";
    case Policy::kP2cEwma:
      return "p2c_ewma";
  }
  return "?";
}

std::unique_ptr<Balancer> NewBalancer(Policy policy,
                                      std::vector<std::shared_ptr<EndpointState>> endpoints) {
  switch (policy) {
    case Policy::kWeightedRandom:
      return std::make_unique<WeightedRandom>(endpoints);
    case Policy::kRoundRobin:
      return std::make_unique<SmoothRoundRobin>(endpoints);
    case Policy::kLeastActive:
      return std::make_unique<LeastActive>(endpoints);
    case Policy::kConsistentHash:
      return std::make_unique<Maglev>(endpoints);
    case Policy::kP2cEwma:
      return std::make_unique<P2cEwma>(endpoints);
  }
  return nullptr;
}

int32_t WarmedWeight(int32_t weight, absl::Duration uptime, absl::Duration warmup) {
  if (weight <= 0) return 0;
  if (warmup <= absl::ZeroDuration() || uptime >= warmup) return weight;
  if (uptime <= absl::ZeroDuration()) return 1;
  double share = absl::FDivDuration(uptime, warmup);
  return std::max<int32_t>(1, static_cast<int32_t>(weight * share));
}

uint64_t HashKey(absl::string_view key) {
  // FNV-1a, then a 64-bit finalizer (splitmix64) to spread the bits.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : key) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

}  // namespace formica::rpc
