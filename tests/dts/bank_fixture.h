// Test support for the DTS end-to-end tests: a real dsrd (RegistryTest),
// two bank participants (tests/dts/account_server.cc, each on its own
// SQLite database) and this process as the initiator, which finds them and
// dtsd through the registry.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bank_books.h"
#include "formica/dts/v1/dts.pb.h"
#include "formica/rpc/client.h"
#include "process.h"
#include "registry_fixture.h"

namespace formica::dts {

inline constexpr int kAccounts = 10;       // accounts per bank
inline constexpr int64_t kInitial = 1000;  // each account's opening balance

class BankTest : public registry::testing::RegistryTest {
 protected:
  // bank.a and bank.b, then the initiator's registry and rpc clients.
  void StartBanksAndInitiator() {
    a_ = StartBank("bank.a");
    b_ = StartBank("bank.b");
    registry_ = NewClient("initiator");
    rpc::ClientOptions options;
    options.app_name = "initiator";
    options.default_timeout = absl::Seconds(3);
    auto rpc = rpc::Client::Create(options, registry_.get());
    ASSERT_TRUE(rpc.ok()) << rpc.status();
    rpc_ = std::move(*rpc);
  }

  void TearDown() override {
    rpc_.reset();
    registry_.reset();
  }

  std::string BankDb(const std::string& name) { return dir_.File(name + ".db"); }

  std::unique_ptr<formica::testing::Subprocess> StartBank(const std::string& name) {
    auto p = formica::testing::Subprocess::Start(
        {formica::testing::BinaryPath("tests/dts/account_server"), "--registry", dsrd_->address(),
         "--name", name, "--db", BankDb(name), "--accounts", std::to_string(kAccounts), "--initial",
         std::to_string(kInitial)},
        dir_.File(absl::StrCat(name, ".", ++bank_runs_, ".log")));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("serving on", absl::Seconds(20))) << (*p)->Output();
    return std::move(*p);
  }

  // How a test reads dtsd (or a group's leader).
  using UnfinishedReader = std::function<absl::StatusOr<std::vector<v1::Activity>>()>;
  using ActivityReader = std::function<absl::StatusOr<v1::Activity>(const std::string& id)>;

  // Waits until dtsd has no unfinished activity and neither bank holds a
  // try waiting for its outcome (one whose report was lost is decided by
  // the bank's check-back, after its activity's deadline).
  void AwaitQuietAt(const UnfinishedReader& unfinished, absl::Duration timeout) {
    absl::Time until = absl::Now() + timeout;
    std::string last;
    while (absl::Now() < until) {
      auto u = unfinished();
      int64_t pending = ReadBooks(BankDb("bank.a")).pending + ReadBooks(BankDb("bank.b")).pending;
      if (u.ok() && u->empty() && pending == 0) return;
      last = !u.ok()       ? u.status().ToString()
             : !u->empty() ? absl::StrCat(u->size(), " unfinished, first: ", (*u)[0].DebugString())
                           : absl::StrCat(pending, " tries pending in the banks");
      absl::SleepFor(absl::Milliseconds(100));
    }
    FAIL() << "dtsd is still busy after " << timeout << ": " << last;
  }

  // Money adds up, nothing is left frozen or in transit, and every try in
  // either bank ended in exactly one of confirm or cancel, as dtsd decided.
  // Returns both banks' books.
  std::pair<Books, Books> ExpectBooksBalanceAt(const ActivityReader& get) {
    Books a = ReadBooks(BankDb("bank.a"));
    Books b = ReadBooks(BankDb("bank.b"));
    EXPECT_EQ(a.balance + b.balance, 2 * kAccounts * kInitial);
    EXPECT_EQ(a.frozen, 0);
    EXPECT_EQ(a.incoming, 0);
    EXPECT_EQ(b.frozen, 0);
    EXPECT_EQ(b.incoming, 0);
    for (const Books* books : {&a, &b}) {
      for (const auto& [id, phases] : books->barrier) {
        bool confirmed = phases.count("confirm") > 0;
        bool cancelled = phases.count("cancel") > 0;
        if (phases.count("try") > 0) {
          EXPECT_NE(confirmed, cancelled) << id << ": a try must end in one outcome";
        }
        auto act = get(id);
        EXPECT_TRUE(act.ok()) << id << ": " << act.status();
        if (!act.ok()) continue;
        if (confirmed) {
          EXPECT_EQ(act->state(), v1::COMMITTED) << id;
        }
        if (cancelled) {
          EXPECT_EQ(act->state(), v1::ROLLED_BACK) << id;
        }
      }
    }
    return {std::move(a), std::move(b)};
  }

  int bank_runs_ = 0;
  std::unique_ptr<formica::testing::Subprocess> a_;
  std::unique_ptr<formica::testing::Subprocess> b_;
  std::unique_ptr<registry::Client> registry_;
  std::unique_ptr<rpc::Client> rpc_;
};

}  // namespace formica::dts
