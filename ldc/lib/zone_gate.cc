#include "formica/ldc/zone_gate.h"

#include "absl/time/clock.h"

namespace formica::ldc {
namespace {

class PermitPass : public dds::WriteGate::Pass {
 public:
  explicit PermitPass(Router::WritePermit permit) : permit_(std::move(permit)) {}

 private:
  Router::WritePermit permit_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<dds::WriteGate::Pass>> ZoneWriteGate::Admit(int shard,
                                                                           bool may_wait) {
  absl::StatusOr<Router::WritePermit> permit =
      router_->AdmitWrite(shard, may_wait ? absl::Now() + fence_wait_ : absl::InfinitePast());
  if (!permit.ok()) return permit.status();
  return std::unique_ptr<Pass>(new PermitPass(*std::move(permit)));
}

}  // namespace formica::ldc
