#include "gateway.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/activity.h"
#include "formica/ldc/messaging.h"
#include "formica/rpc/server.h"
#include "store.h"

namespace fund {

namespace dds = formica::dds;

// Threads that make an order's calls to the account and fund services at
// the same time as its own try (each joins the activity from its thread's
// Activity::Run). A task never waits for another, so a full pool only
// queues.
class GatewayService::CallPool {
 public:
  explicit CallPool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~CallPool() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  void Submit(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(std::move(task));
  }

 private:
  void Loop() {
    while (true) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !tasks_.empty();
        };
        mu_.Await(absl::Condition(&ready));
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

GatewayService::GatewayService(formica::rpc::Client* rpc, dds::ShardedDataSource* ds,
                               formica::dms::Producer* producer)
    : rpc_(rpc), ds_(ds), producer_(producer), calls_(std::make_unique<CallPool>(32)) {}

GatewayService::~GatewayService() = default;

absl::StatusOr<std::unique_ptr<GatewayService>> GatewayService::Open(
    formica::rpc::Client* rpc, dds::ShardedDataSource* ds, formica::dms::Producer* producer,
    const std::string& participant) {
  for (const char* sql :
       {"CREATE TABLE IF NOT EXISTS orders (user_id bigint NOT NULL, client_order_id text NOT "
        "NULL, kind bigint NOT NULL, amount bigint NOT NULL, state text NOT NULL, refusal text "
        "NOT NULL, activity_id text NOT NULL, day bigint NOT NULL, PRIMARY KEY (user_id, "
        "client_order_id))",
        "CREATE TABLE IF NOT EXISTS business_day (id bigint PRIMARY KEY, day bigint NOT NULL)",
        "INSERT INTO business_day (id, day) VALUES (1, 1) ON CONFLICT DO NOTHING"}) {
    auto r = ds->Execute(sql);
    if (!r.ok()) return r.status();
  }
  std::unique_ptr<GatewayService> g(new GatewayService(rpc, ds, producer));
  auto p = formica::dts::ShardedParticipant::Open({participant}, rpc, ds);
  if (!p.ok()) return p.status();
  g->participant_ = std::move(*p);
  // Payload "<user> <client order id>", as Execute's try writes it.
  auto step = [ds](const char* sql) {
    return [ds, sql](dds::Transaction* tx, const formica::dts::ActionCall& a) -> absl::Status {
      size_t space = a.payload.find(' ');
      int64_t user = std::atoll(a.payload.substr(0, space).c_str());
      auto r = tx->Execute(sql, {user, a.payload.substr(space + 1)});
      return r.status();
    };
  };
  g->participant_->Declare("order",
                           step("UPDATE orders SET state = 'CONFIRMED' WHERE user_id = $1 AND "
                                "client_order_id = $2 AND state = 'PENDING'"),
                           step("DELETE FROM orders WHERE user_id = $1 AND client_order_id = $2 "
                                "AND state = 'PENDING'"));
  auto day = ds->Execute("SELECT day FROM business_day WHERE id = 1", {}, {.primary = true});
  if (!day.ok()) return day.status();
  absl::MutexLock lock(&g->mu_);
  if (!day->rows.empty()) g->day_ = AsInt(day->rows[0][0]);
  return g;
}

void GatewayService::Enter(int64_t* day) {
  absl::MutexLock lock(&mu_);
  *day = day_;
  ++in_flight_[day_];
}

void GatewayService::Done(int64_t day) {
  absl::MutexLock lock(&mu_);
  if (--in_flight_[day] == 0) in_flight_.erase(day);
}

grpc::Status GatewayService::Place(grpc::ServerContext* ctx, const v1::Order* order,
                                   v1::OrderResult* result) {
  return formica::rpc::Serve(ctx, [&] {
    auto user = ParseUserId(order->user_id());
    if (!user.ok()) return formica::ToGrpcStatus(user.status());
    bool id_ok = !order->client_order_id().empty() && order->client_order_id().size() <= 64;
    for (char c : order->client_order_id()) {
      id_ok = id_ok && (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                        c == '_' || c == '.');
    }
    if (!id_ok) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("client_order_id '", order->client_order_id(),
                                       "' must be 1 to 64 of A-Z a-z 0-9 - _ ."));
    }
    if (order->kind() != v1::PURCHASE && order->kind() != v1::REDEEM) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "kind must be PURCHASE or REDEEM");
    }
    if (order->amount() <= 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("amount must be positive, got ", order->amount()));
    }
    int64_t day = 0;
    Enter(&day);
    absl::Status st = Execute(*order, *user, day, result);
    Done(day);
    return formica::ToGrpcStatus(st);
  });
}

absl::Status GatewayService::Existing(const v1::Order& order, int64_t user,
                                      v1::OrderResult* result) {
  auto r = ds_->Execute(
      "SELECT kind, amount, state, refusal, activity_id, day FROM orders WHERE user_id = $1 AND "
      "client_order_id = $2",
      {user, order.client_order_id()}, {.primary = true});
  if (!r.ok()) return r.status();
  if (r->rows.empty()) {
    // Gone between the insert that found it and this read: its activity
    // rolled back. NOT_FOUND tells Execute to place it.
    return absl::NotFoundError(absl::StrCat("order ", order.client_order_id(), " is not known"));
  }
  const auto& row = r->rows[0];
  if (AsInt(row[0]) != order.kind() || AsInt(row[1]) != order.amount()) {
    return absl::AlreadyExistsError(absl::StrCat(
        "client order id ", order.client_order_id(), " of user ", user,
        " was used for another order (", v1::Kind_Name(AsInt(row[0])), " of ", AsInt(row[1]), ")"));
  }
  std::string state = AsText(row[2]);
  if (state == "PENDING") {
    return absl::AbortedError(absl::StrCat("order ", order.client_order_id(), " of user ", user,
                                           " is still being executed; repeat it later"));
  }
  ++counters_.repeated;
  result->set_client_order_id(order.client_order_id());
  result->set_confirmed(state == "CONFIRMED");
  result->set_refusal(AsText(row[3]));
  result->set_activity_id(AsText(row[4]));
  result->set_day(AsInt(row[5]));
  result->set_repeated(true);
  return absl::OkStatus();
}

absl::Status GatewayService::Try(const std::string& service, bool take, const v1::Order& order) {
  v1::Move m;
  m.set_user_id(order.user_id());
  m.set_amount(order.amount());
  m.set_order_id(order.client_order_id());
  v1::Moved out;
  formica::rpc::CallOptions call;
  call.context.user_id = order.user_id();
  call.hash_key = order.user_id();
  auto attempt = [&](auto& stub, grpc::ClientContext* ctx) {
    if constexpr (std::is_same_v<std::decay_t<decltype(stub)>, v1::Account::Stub>) {
      return take ? stub.Debit(ctx, m, &out) : stub.Credit(ctx, m, &out);
    } else {
      return take ? stub.Redeem(ctx, m, &out) : stub.Subscribe(ctx, m, &out);
    }
  };
  if (service == v1::Account::service_full_name()) {
    return rpc_->CallWithStub<v1::Account>(
        service, call,
        [&](v1::Account::Stub& stub, grpc::ClientContext* ctx) { return attempt(stub, ctx); });
  }
  return rpc_->CallWithStub<v1::Fund>(
      service, call,
      [&](v1::Fund::Stub& stub, grpc::ClientContext* ctx) { return attempt(stub, ctx); });
}

// rpc::Client names the provider before a callee's message ("fund.v1.Fund
// at 127.0.0.1:4000: insufficient shares: ..."); a refusal is the callee's words.
absl::Status Unprefixed(const absl::Status& st) {
  absl::string_view m = st.message();
  size_t at = m.find(" at ");
  size_t colon = at == absl::string_view::npos ? at : m.find(": ", m.find(':', at + 4) + 1);
  if (st.code() != absl::StatusCode::kFailedPrecondition &&
      st.code() != absl::StatusCode::kNotFound) {
    return st;
  }
  if (colon == absl::string_view::npos || m.substr(0, at).find(' ') != absl::string_view::npos) {
    return st;
  }
  return absl::Status(st.code(), m.substr(colon + 2));
}

absl::Status GatewayService::Execute(const v1::Order& order, int64_t user, int64_t day,
                                     v1::OrderResult* result) {
  const bool purchase = order.kind() == v1::PURCHASE;
  // A repeat of a known order is answered without an activity.
  absl::Status known = Existing(order, user, result);
  if (known.code() != absl::StatusCode::kNotFound) return known;
  formica::dts::ActivityOptions options;
  options.name = purchase ? "fund.Purchase" : "fund.Redeem";
  options.initiator = "fund-gateway";
  options.timeout = absl::Seconds(20);
  auto activity = formica::dts::Activity::Begin(rpc_, options);
  if (!activity.ok()) return activity.status();
  const std::string& id = (*activity)->id();
  // The order's row is itself an action of the activity: written by this
  // try, kept by the confirm, removed by the cancel (unless a refusal was
  // recorded in it), so an order whose outcome this process never learnt
  // (dtsd killed, the gateway killed) is settled by dtsd's phase two. Tried
  // inside Run, in this process: the try joins the activity directly (its
  // report goes to the activity, and the commit takes it to dtsd).
  // Meanwhile the money and the shares are tried on the account and fund
  // services (purchase: money out, shares in; redeem: the reverse), each
  // call from a thread of its own; whatever fails, the rollback cancels
  // what the others froze.
  const std::string account = v1::Account::service_full_name();
  const std::string fund = v1::Fund::service_full_name();
  absl::Status moved[2];
  absl::BlockingCounter calls(2);
  for (int k = 0; k < 2; ++k) {
    calls_->Submit([&, k] {
      const bool take = k == 0;
      const std::string& service = (take == purchase) ? account : fund;
      moved[k] = (*activity)->Run([&] { return Try(service, take, order); });
      calls.DecrementCount();
    });
  }
  absl::Status taken = (*activity)->Run([&] {
    return participant_->Try(
        id, user, "order", absl::StrCat(user, " ", order.client_order_id()),
        [&](dds::Transaction* tx) -> absl::Status {
          auto r = tx->Execute(
              "INSERT INTO orders (user_id, client_order_id, kind, amount, state, refusal, "
              "activity_id, day) VALUES ($1, $2, $3, $4, 'PENDING', '', $5, $6) ON CONFLICT DO "
              "NOTHING",
              {user, order.client_order_id(), int64_t{order.kind()}, order.amount(), id, day});
          if (!r.ok()) return r.status();
          if (r->rows_affected == 0) return absl::AlreadyExistsError("a repeated order");
          return absl::OkStatus();
        });
  });
  calls.Wait();
  if (!taken.ok()) {
    (*activity)->Rollback(taken.ToString()).IgnoreError();
    if (taken.code() == absl::StatusCode::kAlreadyExists) {
      absl::Status again = Existing(order, user, result);
      if (again.code() == absl::StatusCode::kNotFound) {
        return absl::AbortedError(absl::StrCat("order ", order.client_order_id(),
                                               " was being placed concurrently; repeat it"));
      }
      return again;
    }
    return taken;
  }
  absl::Status st = (*activity)->Run([&]() -> absl::Status {
    for (const absl::Status& s : moved) {
      if (!s.ok()) return Unprefixed(s);  // the taking side's refusal first
    }
    v1::OrderConfirmed body;
    body.set_order_id(absl::StrCat(user, "/", order.client_order_id()));
    body.set_user_id(order.user_id());
    body.set_kind(order.kind());
    body.set_amount(order.amount());
    body.set_day(day);
    formica::dms::OutgoingMessage m;
    m.key = order.user_id();
    m.tags = {purchase ? "purchase" : "redeem"};
    m.dedup_key = absl::StrCat(body.order_id(), "@", id);  // a repeat after a rollback is new
    m.properties[formica::ldc::kUserProperty] = order.user_id();  // its zone, with LDC
    m.body = body.SerializeAsString();
    if (send_) return send_(kOrdersTopic, std::move(m)).status();
    return producer_->SendInActivity(kOrdersTopic, std::move(m)).status();
  });
  result->set_client_order_id(order.client_order_id());
  result->set_activity_id(id);
  result->set_day(day);
  const bool refusal = st.code() == absl::StatusCode::kFailedPrecondition ||
                       st.code() == absl::StatusCode::kNotFound;
  if (!st.ok() && refusal) {
    // Recorded before the rollback, so that the cancel keeps the row: a
    // repeat gets this refusal back.
    auto r = ds_->Execute(
        "UPDATE orders SET state = 'REFUSED', refusal = $3 WHERE user_id = $1 AND "
        "client_order_id = $2 AND state = 'PENDING'",
        {user, order.client_order_id(), std::string(st.message())});
    (*activity)->Rollback(st.ToString()).IgnoreError();
    if (!r.ok()) return r.status();
    ++counters_.refused;
    result->set_confirmed(false);
    result->set_refusal(std::string(st.message()));
    return absl::OkStatus();
  }
  if (!st.ok()) {
    // Rolled back: the cancel removes the order's row; it may be repeated.
    (*activity)->Rollback(st.ToString()).IgnoreError();
    ++counters_.failed;
    return absl::Status(
        st.code() == absl::StatusCode::kAlreadyExists ? absl::StatusCode::kAborted : st.code(),
        absl::StrCat("order ", order.client_order_id(),
                     " was not executed and may be repeated: ", st.message()));
  }
  st = (*activity)->Commit();
  if (st.code() == absl::StatusCode::kFailedPrecondition) {
    ++counters_.failed;
    return absl::AbortedError(absl::StrCat("order ", order.client_order_id(),
                                           " was rolled back and may be repeated: ", st.message()));
  }
  if (!st.ok()) {
    // dtsd will settle it (the order's own action included); a repeat
    // meanwhile hears that it is still being executed.
    ++counters_.failed;
    return absl::UnavailableError(absl::StrCat("order ", order.client_order_id(),
                                               ": commit outcome not known yet (activity ", id,
                                               "): ", st.message()));
  }
  // The order row's confirm, run here now rather than when dtsd's comes
  // (which then finds it done): a repeat sees the order confirmed at once.
  // Should it fail, dtsd's confirm does it: the commit is durable.
  participant_->ConfirmCommitted(id, user, "order").IgnoreError();
  ++counters_.confirmed;
  result->set_confirmed(true);
  return absl::OkStatus();
}

grpc::Status GatewayService::CutOff(grpc::ServerContext* ctx, const v1::CutOffRequest*,
                                    v1::CutOffReply* reply) {
  return formica::rpc::Serve(ctx, [&] {
    int64_t closed = 0;
    {
      absl::MutexLock lock(&mu_);
      closed = day_;
      day_ = closed + 1;
      auto none = [this, closed]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_.count(closed) == 0; };
      if (!mu_.AwaitWithTimeout(absl::Condition(&none), absl::Seconds(60))) {
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                            absl::StrCat("orders of day ", closed, " still running after 60s"));
      }
    }
    auto r = ds_->Execute("UPDATE business_day SET day = $1 WHERE id = 1", {closed + 1});
    if (!r.ok()) return formica::ToGrpcStatus(r.status());
    reply->set_closed_day(closed);
    return grpc::Status::OK;
  });
}

grpc::Status GatewayService::Trades(grpc::ServerContext* ctx, const v1::TradesRequest* req,
                                    grpc::ServerWriter<v1::Trade>* writer) {
  return formica::rpc::Serve(ctx, [&] {
    auto r = ds_->Execute(
        "SELECT user_id, client_order_id, kind, amount FROM orders WHERE day = $1 AND state = "
        "'CONFIRMED' ORDER BY user_id, client_order_id",
        {req->day()}, {.primary = true});
    if (!r.ok()) return formica::ToGrpcStatus(r.status());
    for (const auto& row : r->rows) {
      v1::Trade t;
      t.set_user_id(std::to_string(AsInt(row[0])));
      t.set_order_id(absl::StrCat(AsInt(row[0]), "/", AsText(row[1])));
      t.set_kind(static_cast<v1::Kind>(AsInt(row[2])));
      t.set_amount(AsInt(row[3]));
      if (!writer->Write(t)) break;
    }
    return grpc::Status::OK;
  });
}

}  // namespace fund
