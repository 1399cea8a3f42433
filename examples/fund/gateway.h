// fund::GatewayService — takes orders and runs each as a business activity
// (dts) across the account and fund services, with an order-confirmed
// message (dms, topic fund.orders) joined to the activity: the money, the
// shares and the message all happen, or none does.
//
// An order is keyed by (user id, client order id) in the gateway's own
// table `orders` (DDS, on the user's shard), written by the activity's
// first action (the gateway's own participant, fund.gateway.dts): a repeat
// finds the row and gets the first result back (`repeated`), never a
// second execution; while the first is still running (or its outcome is
// being settled by dtsd) a repeat is ABORTED "still being executed". A business refusal
// (insufficient balance or shares, unknown user) is an answer, `confirmed = false` with the reason;
// the activity is rolled back so nothing stays frozen. Any other failure rolls the activity back
// (whose cancel removes the order's row, so that it may be repeated) and is the call's error.
//
// Business days: an order belongs to the day current when the gateway took
// it. CutOff starts the next day and returns once every order of the
// closed day has finished; Trades lists a day's confirmed orders.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "formica/dds/data_source.h"
#include "formica/dms/producer.h"
#include "formica/dts/sharded_participant.h"
#include "formica/rpc/client.h"
#include "fund/v1/fund.grpc.pb.h"

namespace fund {

inline constexpr char kOrdersTopic[] = "fund.orders";

struct GatewayCounters {
  std::atomic<int64_t> confirmed{0};
  std::atomic<int64_t> refused{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> repeated{0};
};

class GatewayService final : public v1::Gateway::Service {
 public:
  // Creates its tables when missing. Everything is borrowed.
  // `participant`: the registry name of its order rows' participant.
  static absl::StatusOr<std::unique_ptr<GatewayService>> Open(
      formica::rpc::Client* rpc, formica::dds::ShardedDataSource* ds,
      formica::dms::Producer* producer, const std::string& participant = "fund.gateway.dts");

  grpc::Status Place(grpc::ServerContext* ctx, const v1::Order* order,
                     v1::OrderResult* result) override;
  grpc::Status CutOff(grpc::ServerContext* ctx, const v1::CutOffRequest*,
                      v1::CutOffReply* reply) override;
  grpc::Status Trades(grpc::ServerContext* ctx, const v1::TradesRequest* req,
                      grpc::ServerWriter<v1::Trade>* writer) override;

  ~GatewayService() override;

  // Sends an order-confirmed message joined to the activity current on
  // the calling thread; returns its transaction id.
  using MessageSender = std::function<absl::StatusOr<std::string>(
      const std::string& topic, formica::dms::OutgoingMessage message)>;
  // Replaces the producer's SendInActivity (with zones: the user's zone's
  // broker, ldc::ZoneProducer::SendInActivity). Call before serving.
  void set_message_sender(MessageSender send) { send_ = std::move(send); }

  const GatewayCounters& counters() const { return counters_; }
  // The order rows' participant (fund.gateway.dts): host it beside the gateway.
  formica::dts::ShardedParticipant* participant() { return participant_.get(); }

 private:
  class CallPool;
  GatewayService(formica::rpc::Client* rpc, formica::dds::ShardedDataSource* ds,
                 formica::dms::Producer* producer);
  absl::Status Execute(const v1::Order& order, int64_t user, int64_t day, v1::OrderResult* result);
  absl::Status Existing(const v1::Order& order, int64_t user, v1::OrderResult* result);
  absl::Status Try(const std::string& service, bool take, const v1::Order& order);
  // Takes an order into day `*day` (the current one); Done ends it.
  void Enter(int64_t* day);
  void Done(int64_t day);

  formica::rpc::Client* rpc_;
  formica::dds::ShardedDataSource* ds_;
  formica::dms::Producer* producer_;
  MessageSender send_;
  std::unique_ptr<formica::dts::ShardedParticipant> participant_;
  std::unique_ptr<CallPool> calls_;  // the account and fund calls of orders
  GatewayCounters counters_;
  absl::Mutex mu_;
  int64_t day_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, int64_t> in_flight_ ABSL_GUARDED_BY(mu_);  // day -> orders running
};

}  // namespace fund
