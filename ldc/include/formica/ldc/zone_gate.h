// formica::ldc::ZoneWriteGate — LDC's write gate for DDS: a zone's data
// source writes only the shards its zone owns now, and holds a write for a
// fenced shard back until the switch moves it (or `fence_wait` passes).
// Reads of another zone's shards are refused unless cross-zone reads are
// allowed; then the result says which shards were read from this copy.
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
  struct Options {
    // How long a plain write waits for a fenced shard.
    absl::Duration fence_wait = absl::Seconds(5);
    // Reads of another zone's shards from this data source's copy: refused
    // (false, FAILED_PRECONDITION naming the owner) or allowed and listed
    // in ResultSet::read_elsewhere (true).
    bool cross_zone_reads = false;
  };

  explicit ZoneWriteGate(Router* router, absl::Duration fence_wait = absl::Seconds(5))
      : router_(router), options_{fence_wait, false} {}
  ZoneWriteGate(Router* router, Options options) : router_(router), options_(options) {}

  // OK while this zone owns `shard` unfenced; while it is fenced, waits up
  // to fence_wait if `may_wait` (UNAVAILABLE, retryable, after that or at
  // once in a transaction: retry the transaction); FAILED_PRECONDITION
  // naming the owner zone otherwise.
  absl::StatusOr<std::unique_ptr<Pass>> Admit(int shard, bool may_wait) override;
  // "" for a shard this zone owns (fenced or not); the owner zone for
  // another's when cross-zone reads are allowed; FAILED_PRECONDITION
  // naming the owner otherwise.
  absl::StatusOr<std::string> AdmitRead(int shard) override;

 private:
  Router* const router_;
  const Options options_;
};

}  // namespace formica::ldc
