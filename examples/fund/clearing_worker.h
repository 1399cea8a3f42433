// fund::ClearingWorker — one worker of the daily clearing (fund-clear
// worker), found by the master through DSR as fund.v1.ClearingWorker. It
// clears the shards the master hands it, one call per shard and phase, from
// the shard files the master split out (`ShardTask`):
//   Prepare     applies the day's trades to each user's opening shares and
//               returns the shard's totals and every difference found (a
//               user redeeming more than held; with check_online, a user
//               whose holding in the fund service's data differs).
//   Distribute  does the same, then divides the shard's income among its
//               users by largest remainder (distribution.h) and writes the
//               shard's result lines, sorted by user id, atomically.
// A worker keeps no state between calls, so a shard whose worker died is
// simply run again on another one, with the same result.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formica/dds/data_source.h"
#include "fund/v1/fund.grpc.pb.h"

namespace fund {

// One user's day in a shard, before income.
struct UserDay {
  int64_t user = 0;
  int64_t opening = 0;
  int64_t purchased = 0;
  int64_t redeemed = 0;
  int64_t Before() const { return opening + purchased - redeemed; }
};

// Reads a shard's opening and trade files into its users' days, sorted by
// user id. INVALID_ARGUMENT naming the file and line for a bad line.
absl::StatusOr<std::vector<UserDay>> LoadShard(const std::string& opening_file,
                                               const std::string& trades_file);

class ClearingWorker final : public v1::ClearingWorker::Service {
 public:
  // `holdings` (borrowed, may be empty): the fund service's data, for
  // check_online; with LDC zones one data source per zone, a user's
  // holding read from the one zone whose data holds its row (a user with
  // rows in two zones' data is a difference). `delay` is slept before each
  // shard (tests, demos).
  ClearingWorker(std::vector<formica::dds::ShardedDataSource*> holdings, absl::Duration delay)
      : holdings_(std::move(holdings)), delay_(delay) {}

  grpc::Status Prepare(grpc::ServerContext* ctx, const v1::ShardTask* task,
                       v1::ShardTotals* totals) override;
  grpc::Status Distribute(grpc::ServerContext* ctx, const v1::ShardTask* task,
                          v1::ShardTotals* totals) override;

 private:
  absl::StatusOr<std::vector<UserDay>> Load(const v1::ShardTask& task, v1::ShardTotals* totals);
  absl::Status CheckOnline(const std::vector<UserDay>& days, v1::ShardTotals* totals);

  std::vector<formica::dds::ShardedDataSource*> holdings_;
  absl::Duration delay_;
};

}  // namespace fund
