// The TCC barrier protocol (dts/lib/barrier.h) over rows in memory: what
// try, confirm and cancel of one action do in every order, without a
// database or a coordinator.
#include "barrier.h"

#include <gtest/gtest.h>

#include <map>

#include "absl/strings/match.h"

namespace formica::dts {
namespace {

// Rows as the DDS adapter keeps them: each with the phase that wrote it.
class MemoryRows : public BarrierRows {
 public:
  absl::StatusOr<bool> Mark(BarrierPhase phase) override { return Write(phase, phase); }
  absl::StatusOr<bool> Has(BarrierPhase phase) override { return rows_.count(phase) > 0; }
  absl::StatusOr<TryClaim> ClaimTry() override {
    if (Write(BarrierPhase::kTry, BarrierPhase::kTry)) return TryClaim::kFirst;
    return rows_[BarrierPhase::kTry] == BarrierPhase::kCancel ? TryClaim::kAfterCancel
                                                              : TryClaim::kRepeat;
  }
  absl::StatusOr<bool> BarLateTry() override {
    return Write(BarrierPhase::kTry, BarrierPhase::kCancel);
  }

 private:
  bool Write(BarrierPhase phase, BarrierPhase origin) {
    return rows_.emplace(phase, origin).second;
  }
  std::map<BarrierPhase, BarrierPhase> rows_;  // phase -> origin
};

class DtsBarrier : public ::testing::Test {
 protected:
  absl::Status Try() {
    bool keep = true;
    return TryUnderBarrier(rows_, kAction, &keep, [&] {
      ++bodies_;
      return absl::OkStatus();
    });
  }
  absl::Status PhaseTwo(bool confirm, bool* keep = nullptr) {
    bool kept = true;
    absl::Status st = PhaseTwoUnderBarrier(rows_, kAction, confirm, &kept, [&] {
      ++steps_;
      return absl::OkStatus();
    });
    if (keep != nullptr) *keep = kept;
    return st;
  }

  static constexpr BarrierAction kAction{"bank.a", "act-1", "debit"};
  MemoryRows rows_;
  int bodies_ = 0;
  int steps_ = 0;
};

TEST_F(DtsBarrier, ARepeatedTryRunsItsBodyOnce) {
  EXPECT_TRUE(Try().ok());
  EXPECT_TRUE(Try().ok());
  EXPECT_EQ(bodies_, 1);
}

TEST_F(DtsBarrier, ARepeatedConfirmRunsItsStepOnceAndKeepsNothingTheSecondTime) {
  ASSERT_TRUE(Try().ok());
  bool keep = false;
  EXPECT_TRUE(PhaseTwo(true, &keep).ok());
  EXPECT_TRUE(keep);
  EXPECT_TRUE(PhaseTwo(true, &keep).ok());
  EXPECT_FALSE(keep);
  EXPECT_EQ(steps_, 1);
}

TEST_F(DtsBarrier, ACancelWithoutATryIsAnEmptyRollbackAndTheLateTryIsRefused) {
  EXPECT_TRUE(PhaseTwo(false).ok());
  EXPECT_EQ(steps_, 0);
  absl::Status late = Try();
  EXPECT_TRUE(absl::IsAborted(late)) << late;
  EXPECT_EQ(bodies_, 0);
}

TEST_F(DtsBarrier, TheOppositeOutcomeIsRefused) {
  ASSERT_TRUE(Try().ok());
  ASSERT_TRUE(PhaseTwo(false).ok());
  absl::Status confirm = PhaseTwo(true);
  EXPECT_TRUE(absl::IsFailedPrecondition(confirm)) << confirm;
  EXPECT_EQ(steps_, 1);  // the cancel's only
}

TEST_F(DtsBarrier, AConfirmWithoutATryIsRefused) {
  absl::Status confirm = PhaseTwo(true);
  EXPECT_TRUE(absl::IsFailedPrecondition(confirm)) << confirm;
  EXPECT_TRUE(absl::StrContains(confirm.message(), "nothing to confirm")) << confirm;
  EXPECT_EQ(steps_, 0);
}

}  // namespace
}  // namespace formica::dts
