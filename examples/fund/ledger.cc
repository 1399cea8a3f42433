#include "ledger.h"

#include "absl/strings/str_cat.h"
#include "formica/common/grpc_status.h"
#include "formica/rpc/server.h"
#include "gateway.h"
#include "store.h"

namespace fund {

namespace dds = formica::dds;
namespace dms = formica::dms;

absl::StatusOr<std::unique_ptr<LedgerService>> LedgerService::Start(formica::rpc::Client* rpc,
                                                                    dds::ShardedDataSource* ds,
                                                                    const std::string& group,
                                                                    const HandlerWrap& wrap) {
  auto r = ds->Execute(
      "CREATE TABLE IF NOT EXISTS statements (user_id bigint NOT NULL, order_id text NOT NULL, "
      "kind bigint NOT NULL, amount bigint NOT NULL, day bigint NOT NULL, PRIMARY KEY (user_id, "
      "order_id))");
  if (!r.ok()) return r.status();
  std::unique_ptr<LedgerService> ledger(new LedgerService(ds));
  dms::ConsumerOptions o;
  o.group = group;
  o.topic = kOrdersTopic;
  o.ordered = false;
  o.threads = 4;
  o.start_timeout = absl::Seconds(20);
  LedgerService* l = ledger.get();
  dms::MessageHandler handler = [l](const dms::ReceivedMessage& m) { return l->Apply(m); };
  if (wrap) handler = wrap(std::move(handler));
  auto consumer = dms::Consumer::Start(o, std::move(handler), rpc);
  if (!consumer.ok()) return consumer.status();
  ledger->consumer_ = std::move(*consumer);
  return ledger;
}

LedgerService::~LedgerService() { Stop(); }

void LedgerService::Stop() {
  if (consumer_ != nullptr) consumer_->Stop();
}

dms::ConsumeResult LedgerService::Apply(const dms::ReceivedMessage& m) {
  v1::OrderConfirmed order;
  auto user = ParseUserId(order.ParseFromString(m.body) ? order.user_id() : "");
  if (!user.ok()) {
    // Not a message this ledger can read: retried, then parked as a dead letter.
    return dms::ConsumeResult::kRetryLater;
  }
  auto r = ds_->Execute(
      "INSERT INTO statements (user_id, order_id, kind, amount, day) VALUES ($1, $2, $3, $4, $5) "
      "ON CONFLICT DO NOTHING",
      {*user, order.order_id(), int64_t{order.kind()}, order.amount(), order.day()});
  if (!r.ok()) return dms::ConsumeResult::kRetryLater;
  ++(r->rows_affected == 1 ? applied_ : duplicates_);
  return dms::ConsumeResult::kSuccess;
}

grpc::Status LedgerService::Statement(grpc::ServerContext* ctx, const v1::StatementRequest* req,
                                      v1::StatementReply* reply) {
  return formica::rpc::Serve(ctx, [&] {
    auto user = ParseUserId(req->user_id());
    if (!user.ok()) return formica::ToGrpcStatus(user.status());
    auto r = ds_->Execute(
        "SELECT order_id, kind, amount, day FROM statements WHERE user_id = $1 ORDER BY order_id",
        {*user}, {.primary = true});
    if (!r.ok()) return formica::ToGrpcStatus(r.status());
    for (const auto& row : r->rows) {
      v1::OrderConfirmed* e = reply->add_entries();
      e->set_order_id(AsText(row[0]));
      e->set_user_id(req->user_id());
      e->set_kind(static_cast<v1::Kind>(AsInt(row[1])));
      e->set_amount(AsInt(row[2]));
      e->set_day(AsInt(row[3]));
      if (e->kind() == v1::PURCHASE) {
        reply->set_purchased(reply->purchased() + e->amount());
      } else {
        reply->set_redeemed(reply->redeemed() + e->amount());
      }
    }
    return grpc::Status::OK;
  });
}

grpc::Status LedgerService::Totals(grpc::ServerContext* ctx, const v1::LedgerTotalsRequest*,
                                   v1::LedgerTotals* reply) {
  return formica::rpc::Serve(ctx, [&] {
    auto r = ds_->Execute("SELECT kind, count(*), sum(amount) FROM statements GROUP BY kind", {},
                          {.primary = true});
    if (!r.ok()) return formica::ToGrpcStatus(r.status());
    for (const auto& row : r->rows) {
      reply->set_entries(reply->entries() + AsInt(row[1]));
      if (AsInt(row[0]) == v1::PURCHASE) {
        reply->set_purchased(AsInt(row[2]));
      } else {
        reply->set_redeemed(AsInt(row[2]));
      }
    }
    return grpc::Status::OK;
  });
}

}  // namespace fund
