// fund::Ledger — consumes the order-confirmed messages (topic fund.orders,
// group fund-ledger) into each user's statement (table statements, on the
// user's shard) and serves the statements. A message delivered again (after
// a redelivery, a dmsd restart) finds its row and changes nothing: the
// insert is keyed by (user id, order id). With LDC zones each zone's ledger
// reads its own zone's dmsd in its own group, and its handler is wrapped in
// ldc::ZoneHandler: a message for a user another zone owns now (the user's
// shard moved while the message waited) is forwarded to that zone's dmsd.
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
  // Wraps the ledger's message handler (ldc::ZoneHandler, with zones).
  using HandlerWrap = std::function<formica::dms::MessageHandler(formica::dms::MessageHandler)>;

  // Creates its table and starts consuming from the brokers `rpc` reaches.
  // Borrowed: rpc, ds. `group`: its consumer group. `wrap` (optional):
  // what the handler is wrapped in.
  static absl::StatusOr<std::unique_ptr<LedgerService>> Start(
      formica::rpc::Client* rpc, formica::dds::ShardedDataSource* ds,
      const std::string& group = "fund-ledger", const HandlerWrap& wrap = nullptr);
  ~LedgerService() override;
  void Stop();

  grpc::Status Statement(grpc::ServerContext* ctx, const v1::StatementRequest* req,
                         v1::StatementReply* reply) override;
  grpc::Status Totals(grpc::ServerContext* ctx, const v1::LedgerTotalsRequest*,
                      v1::LedgerTotals* reply) override;

  int64_t applied() const { return applied_.load(); }
  int64_t duplicates() const { return duplicates_.load(); }

 private:
  explicit LedgerService(formica::dds::ShardedDataSource* ds) : ds_(ds) {}
  formica::dms::ConsumeResult Apply(const formica::dms::ReceivedMessage& m);

  formica::dds::ShardedDataSource* ds_;
  std::unique_ptr<formica::dms::Consumer> consumer_;
  std::atomic<int64_t> applied_{0};
  std::atomic<int64_t> duplicates_{0};
};

}  // namespace fund
