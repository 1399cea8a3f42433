// fund::Ledger — consumes the order-confirmed messages (topic fund.orders,
// group fund-ledger) into each user's statement (table statements, on the
// user's shard) and serves the statements. A message delivered again (after
// a redelivery, a dmsd restart) finds its row and changes nothing: the
// insert is keyed by (user id, order id).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "formica/dds/data_source.h"
#include "formica/dms/consumer.h"
#include "formica/rpc/client.h"
#include "fund/v1/fund.grpc.pb.h"

namespace fund {

class LedgerService final : public v1::Ledger::Service {
 public:
  // Creates its table and starts consuming. Borrowed: rpc, ds.
  // `group`: its consumer group. `owns` (optional, with zones): whether
  // this zone owns a user now; a message for another zone's user is left
  // to that zone's ledger (its own group) and acknowledged here unhandled.
  static absl::StatusOr<std::unique_ptr<LedgerService>> Start(
      formica::rpc::Client* rpc, formica::dds::ShardedDataSource* ds,
      const std::string& group = "fund-ledger",
      std::function<bool(const std::string& user)> owns = nullptr);
  ~LedgerService() override;
  void Stop();

  grpc::Status Statement(grpc::ServerContext* ctx, const v1::StatementRequest* req,
                         v1::StatementReply* reply) override;
  grpc::Status Totals(grpc::ServerContext* ctx, const v1::LedgerTotalsRequest*,
                      v1::LedgerTotals* reply) override;

  int64_t applied() const { return applied_.load(); }
  int64_t duplicates() const { return duplicates_.load(); }

 private:
  LedgerService(formica::dds::ShardedDataSource* ds,
                std::function<bool(const std::string& user)> owns)
      : ds_(ds), owns_(std::move(owns)) {}
  formica::dms::ConsumeResult Apply(const formica::dms::ReceivedMessage& m);

  formica::dds::ShardedDataSource* ds_;
  std::function<bool(const std::string& user)> owns_;
  std::unique_ptr<formica::dms::Consumer> consumer_;
  std::atomic<int64_t> applied_{0};
  std::atomic<int64_t> duplicates_{0};
};

}  // namespace fund
