#include "services.h"

#include "absl/strings/str_cat.h"
#include "formica/common/grpc_status.h"
#include "formica/rpc/server.h"
#include "store.h"

namespace fund {

bool TryFrontEnd::Inject() {
  if (fail_rate_ <= 0) return false;
  absl::MutexLock lock(&mu_);
  return std::uniform_real_distribution<double>(0, 1)(rng_) < fail_rate_;
}

grpc::Status TryFrontEnd::Run(grpc::ServerContext* ctx, const v1::Move& m, bool take) {
  return formica::rpc::Serve(ctx, [&] {
    auto user = ParseUserId(m.user_id());
    if (!user.ok()) return formica::ToGrpcStatus(user.status());
    if (m.amount() <= 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("amount must be positive, got ", m.amount()));
    }
    absl::Status st = take ? book_->Take(*user, m.amount()) : book_->Give(*user, m.amount());
    if (st.ok() && Inject()) {
      ++injected_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected failure after the try");
    }
    return formica::ToGrpcStatus(st);
  });
}

grpc::Status TryFrontEnd::Totals(grpc::ServerContext* ctx, const v1::TotalsRequest& req,
                                 v1::Totals* out) {
  return formica::rpc::Serve(ctx, [&] {
    absl::StatusOr<BookTotals> t;
    if (req.user_id().empty()) {
      t = book_->Totals();
    } else {
      auto user = ParseUserId(req.user_id());
      if (!user.ok()) return formica::ToGrpcStatus(user.status());
      t = book_->Of(*user);
    }
    if (!t.ok()) return formica::ToGrpcStatus(t.status());
    out->set_users(t->rows);
    out->set_available(t->available);
    out->set_frozen(t->frozen);
    out->set_incoming(t->incoming);
    return grpc::Status::OK;
  });
}

}  // namespace fund
