// The account service (payment balances) and the fund service (shares):
// gRPC front ends over a Book each. Every call is a TCC try in the caller's
// business activity; confirm and cancel come from dtsd to the Book's
// participant service. `fail_rate` (tests, demos) makes that share of
// successful tries answer UNAVAILABLE afterwards, as a participant that did
// the work but whose answer was lost: the activity then rolls back and the
// cancel undoes the try.
#pragma once

#include <atomic>
#include <random>

#include "absl/synchronization/mutex.h"
#include "book.h"
#include "fund/v1/fund.grpc.pb.h"

namespace fund {

// Checks a Move and runs `step` with its user and amount inside rpc::Serve.
class TryFrontEnd {
 public:
  TryFrontEnd(Book* book, double fail_rate) : book_(book), fail_rate_(fail_rate) {}
  grpc::Status Run(grpc::ServerContext* ctx, const v1::Move& m, bool take);
  grpc::Status Totals(grpc::ServerContext* ctx, const v1::TotalsRequest& req, v1::Totals* out);
  int64_t injected() const { return injected_.load(); }

 private:
  bool Inject();
  Book* book_;
  double fail_rate_;
  absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_){42};
  std::atomic<int64_t> injected_{0};
};

class AccountService final : public v1::Account::Service {
 public:
  AccountService(Book* balances, double fail_rate) : front_(balances, fail_rate) {}
  grpc::Status Debit(grpc::ServerContext* ctx, const v1::Move* m, v1::Moved*) override {
    return front_.Run(ctx, *m, /*take=*/true);
  }
  grpc::Status Credit(grpc::ServerContext* ctx, const v1::Move* m, v1::Moved*) override {
    return front_.Run(ctx, *m, /*take=*/false);
  }
  grpc::Status Balances(grpc::ServerContext* ctx, const v1::TotalsRequest* req,
                        v1::Totals* out) override {
    return front_.Totals(ctx, *req, out);
  }

 private:
  TryFrontEnd front_;
};

class FundService final : public v1::Fund::Service {
 public:
  FundService(Book* shares, double fail_rate) : front_(shares, fail_rate) {}
  grpc::Status Subscribe(grpc::ServerContext* ctx, const v1::Move* m, v1::Moved*) override {
    return front_.Run(ctx, *m, /*take=*/false);
  }
  grpc::Status Redeem(grpc::ServerContext* ctx, const v1::Move* m, v1::Moved*) override {
    return front_.Run(ctx, *m, /*take=*/true);
  }
  grpc::Status Shares(grpc::ServerContext* ctx, const v1::TotalsRequest* req,
                      v1::Totals* out) override {
    return front_.Totals(ctx, *req, out);
  }

 private:
  TryFrontEnd front_;
};

}  // namespace fund
