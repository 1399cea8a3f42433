// formica::dds::WriteGate — what a ShardedDataSource asks before it writes a
// shard. LDC's ldc::ZoneWriteGate admits only the shards this zone owns now
// and holds writes back while a switch fences them; a service without
// zones sets no gate and every write runs.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace formica::dds {

class WriteGate {
 public:
  // A write in progress: the gate counts it until the Pass is destroyed.
  class Pass {
   public:
    virtual ~Pass() = default;
  };

  virtual ~WriteGate() = default;

  // Admits a write to logical shard `shard` (0..99), or refuses it with the
  // status the write then fails with (nothing runs). With `may_wait` it may
  // hold the write back a while; without (a transaction that already holds
  // database locks asks so) it answers at once. Thread-safe.
  virtual absl::StatusOr<std::unique_ptr<Pass>> Admit(int shard, bool may_wait) = 0;

  // Asked before a read of `shard`: "" to read it as this data source's
  // own, the name of the zone that owns it for a read allowed from this
  // copy (the result lists it in ResultSet::read_elsewhere), or the status
  // the read fails with. Never waits. By default every read is allowed.
  virtual absl::StatusOr<std::string> AdmitRead(int shard) {
    (void)shard;
    return std::string();
  }
};

}  // namespace formica::dds
