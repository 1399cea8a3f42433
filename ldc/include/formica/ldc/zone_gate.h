// formica::ldc::ZoneWriteGate — LDC's write gate for DDS: a zone's data
// source writes only the shards its zone owns now, and holds a write for a
// fenced shard back until the switch moves it (or `fence_wait` passes).
//
//   auto router = ldc::Router::Start(registry.get(), {.zone = "zone-a"}).value();
//   dds::DataSourceConfig config = dds::LoadDataSourceConfig("fund-dds.yaml").value();
//   config.write_gate = std::make_shared<ldc::ZoneWriteGate>(router.get());
//   auto ds = dds::ShardedDataSource::Open(config).value();
//   ds->Execute("INSERT ...", {user_id, ...});   // FAILED_PRECONDITION naming the
//                                                // owner for another zone's user
//
// Thread-safe. `router` is borrowed and must outlive the gate.
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "formica/dds/write_gate.h"
#include "formica/ldc/router.h"

namespace formica::ldc {

class ZoneWriteGate : public dds::WriteGate {
 public:
  explicit ZoneWriteGate(Router* router, absl::Duration fence_wait = absl::Seconds(5))
      : router_(router), fence_wait_(fence_wait) {}

  // OK while this zone owns `shard` unfenced; while it is fenced, waits up
  // to fence_wait if `may_wait` (UNAVAILABLE, retryable, after that or at
  // once in a transaction: retry the transaction); FAILED_PRECONDITION
  // naming the owner zone otherwise.
  absl::StatusOr<std::unique_ptr<Pass>> Admit(int shard, bool may_wait) override;

 private:
  Router* const router_;
  const absl::Duration fence_wait_;
};

}  // namespace formica::ldc
