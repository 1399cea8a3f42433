// ActivityEngine's serving gate: a replicated dtsd serves only while it
// leads (docs/ha.md); see ActivityEngine::StopServing.
#include "activity_engine.h"

namespace formica::dts {

ActivityEngine::CallScope::CallScope(ActivityEngine* engine, uint64_t generation)
    : engine_(engine) {
  absl::MutexLock lock(&engine_->gate_mu_);
  if (!engine_->serving_ || (generation != 0 && generation != engine_->generation_)) {
    status_ = absl::UnavailableError(engine_->refusal_);
    return;
  }
  ++engine_->in_calls_;
}

ActivityEngine::CallScope::~CallScope() {
  if (!status_.ok()) return;
  absl::MutexLock lock(&engine_->gate_mu_);
  --engine_->in_calls_;
}

void ActivityEngine::StopServing(const std::string& refusal) {
  absl::MutexLock lock(&gate_mu_);
  serving_ = false;
  refusal_ = refusal;
  ++generation_;
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_mu_) { return in_calls_ == 0; };
  gate_mu_.Await(absl::Condition(&idle));
}

void ActivityEngine::SetRefusal(const std::string& refusal) {
  absl::MutexLock lock(&gate_mu_);
  refusal_ = refusal;
}

void ActivityEngine::Reset(uint64_t epoch) {
  absl::MutexLock lock(&mu_);
  entries_.clear();
  epoch_ = epoch;
  seq_ = 0;
}

void ActivityEngine::StartServing() {
  absl::MutexLock lock(&gate_mu_);
  serving_ = true;
}

}  // namespace formica::dts
