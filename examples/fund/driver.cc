#include "driver.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "formica/rpc/client.h"
#include "fund/v1/fund.grpc.pb.h"

namespace fund {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

absl::StatusOr<v1::OrderResult> OrderDriver::Place(const v1::Order& order, absl::Duration timeout) {
  formica::rpc::CallOptions call;
  call.timeout = timeout;
  call.context.user_id = order.user_id();
  call.inherit_current = false;
  v1::OrderResult result;
  absl::Status st =
      rpc_->CallWithStub<v1::Gateway>(v1::Gateway::service_full_name(), call,
                                      [&](v1::Gateway::Stub& stub, grpc::ClientContext* ctx) {
                                        result.Clear();
                                        return stub.Place(ctx, order, &result);
                                      });
  if (!st.ok()) return st;
  return result;
}

DriverReport OrderDriver::Run(const DriverOptions& o) {
  DriverReport report;
  absl::Mutex mu;
  std::atomic<int64_t> sent{0};
  std::atomic<int64_t> answered{0};
  std::atomic<bool> stop{false};
  const absl::Time start = absl::Now();
  const absl::Time end = start + o.duration;
  std::thread progress;
  if (o.progress) {
    progress = std::thread([&] {
      int64_t last = 0;
      absl::Time last_at = start;
      while (!stop.load()) {
        absl::SleepFor(absl::Milliseconds(250));
        absl::Time now = absl::Now();
        if (now - last_at < absl::Seconds(1) && !stop.load()) continue;
        if (stop.load()) break;
        int64_t n = answered.load();
        double rate = (n - last) / absl::ToDoubleSeconds(now - last_at);
        absl::MutexLock lock(&mu);
        std::fprintf(stderr,
                     "\r  orders %lld  %.0f/s  confirmed %lld  refused %lld  p99 %.1f ms  "
                     "%.0fs left   ",
                     static_cast<long long>(n), rate, static_cast<long long>(report.confirmed),
                     static_cast<long long>(report.refused), Percentile(report.latency_ms, 99),
                     std::max(0.0, absl::ToDoubleSeconds(end - now)));
        last = n;
        last_at = now;
      }
      std::fprintf(stderr, "\n");
    });
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < o.concurrency; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(o.seed * 7919 + t);
      std::vector<std::pair<v1::Order, v1::OrderResult>> done;
      for (int64_t n = 0;; ++n) {
        if (absl::Now() >= end) break;
        int64_t k = sent.fetch_add(1);
        if (o.max_orders > 0 && k >= o.max_orders) break;
        if (o.before_order) o.before_order(k);
        std::uniform_real_distribution<double> unit(0, 1);
        v1::Order order;
        bool repeat = !done.empty() && unit(rng) < o.repeat_ratio;
        if (repeat) {
          const auto& first = done[rng() % done.size()];
          auto again = Place(first.first, o.call_timeout);
          absl::MutexLock lock(&mu);
          ++report.repeats;
          if (again.ok() && again->repeated() && again->confirmed() == first.second.confirmed() &&
              again->activity_id() == first.second.activity_id()) {
            ++report.repeats_matching;
          } else {
            report.repeat_mismatches.push_back(
                absl::StrCat("order ", first.first.client_order_id(), ": first ",
                             first.second.ShortDebugString(), ", repeat ",
                             again.ok() ? again->ShortDebugString() : again.status().ToString()));
          }
          continue;
        }
        order.set_client_order_id(absl::StrCat(o.prefix, "-", t, "-", n));
        order.set_user_id(std::to_string(
            o.first_user + static_cast<int64_t>(rng() % (o.users - o.first_user + 1))));
        order.set_kind(unit(rng) < o.redeem_ratio ? v1::REDEEM : v1::PURCHASE);
        order.set_amount(1 + static_cast<int64_t>(rng() % o.max_amount));
        absl::Time began = absl::Now();
        absl::StatusOr<v1::OrderResult> r;
        double first_ms = -1;
        int errors = 0;
        // Repeat a failed call with the same id until it is answered.
        for (int attempt = 0; attempt < 200; ++attempt) {
          r = Place(order, o.call_timeout);
          if (first_ms < 0) first_ms = absl::ToDoubleMilliseconds(absl::Now() - began);
          if (r.ok() || r.status().code() == absl::StatusCode::kInvalidArgument ||
              r.status().code() == absl::StatusCode::kAlreadyExists) {
            break;
          }
          ++errors;
          if (stop.load() && attempt > 50) break;
          absl::SleepFor(absl::Milliseconds(std::min(50 * (attempt + 1), 500)));
        }
        absl::MutexLock lock(&mu);
        report.call_errors += errors;
        if (!r.ok()) {
          ++report.unanswered;
          report.last_error = r.status().ToString();
          continue;
        }
        ++report.orders;
        answered.fetch_add(1);
        report.latency_ms.push_back(errors == 0 ? first_ms
                                                : absl::ToDoubleMilliseconds(absl::Now() - began));
        int64_t user = std::stoll(order.user_id());
        if (r->confirmed()) {
          ++report.confirmed;
          int64_t signed_amount = order.kind() == v1::PURCHASE ? order.amount() : -order.amount();
          report.net_shares[user] += signed_amount;
          (order.kind() == v1::PURCHASE ? report.purchased : report.redeemed) += order.amount();
        } else {
          ++report.refused;
          ++report.refusals[r->refusal().substr(0, r->refusal().find(':'))];
        }
        done.emplace_back(order, *r);
      }
    });
  }
  for (auto& th : threads) th.join();
  stop = true;
  if (progress.joinable()) progress.join();
  report.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return report;
}

absl::StatusOr<FundTotals> ReadTotals(formica::rpc::Client* rpc) {
  FundTotals t;
  formica::rpc::CallOptions call;
  call.timeout = absl::Seconds(30);
  call.idempotent = true;
  v1::TotalsRequest all;
  absl::Status st = rpc->CallWithStub<v1::Account>(
      v1::Account::service_full_name(), call, [&](v1::Account::Stub& s, grpc::ClientContext* c) {
        return s.Balances(c, all, &t.balances);
      });
  if (!st.ok()) return st;
  st = rpc->CallWithStub<v1::Fund>(
      v1::Fund::service_full_name(), call,
      [&](v1::Fund::Stub& s, grpc::ClientContext* c) { return s.Shares(c, all, &t.shares); });
  if (!st.ok()) return st;
  v1::LedgerTotalsRequest lr;
  st = rpc->CallWithStub<v1::Ledger>(
      v1::Ledger::service_full_name(), call,
      [&](v1::Ledger::Stub& s, grpc::ClientContext* c) { return s.Totals(c, lr, &t.ledger); });
  if (!st.ok()) return st;
  return t;
}

absl::StatusOr<FundTotals> ReadTotals(const std::vector<formica::rpc::Client*>& zones) {
  FundTotals sum;
  for (formica::rpc::Client* zone : zones) {
    auto t = ReadTotals(zone);
    if (!t.ok()) return t.status();
    for (auto [to, from] : {std::pair{&sum.balances, &t->balances}, {&sum.shares, &t->shares}}) {
      to->set_users(to->users() + from->users());
      to->set_available(to->available() + from->available());
      to->set_frozen(to->frozen() + from->frozen());
      to->set_incoming(to->incoming() + from->incoming());
    }
    sum.ledger.set_entries(sum.ledger.entries() + t->ledger.entries());
    sum.ledger.set_purchased(sum.ledger.purchased() + t->ledger.purchased());
    sum.ledger.set_redeemed(sum.ledger.redeemed() + t->ledger.redeemed());
  }
  return sum;
}

}  // namespace fund
