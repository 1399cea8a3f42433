#include <gtest/gtest.h>

#include "formica/common/grpc_status.h"
#include "formica/common/status.h"

namespace formica {
namespace {

TEST(GrpcStatus, CodesAndMessagesRoundTrip) {
  for (absl::Status st : {absl::InvalidArgumentError("bad weight"), absl::NotFoundError("gone"),
                          absl::FailedPreconditionError("state"), absl::UnavailableError("down"),
                          absl::ResourceExhaustedError("full"), absl::OkStatus()}) {
    grpc::Status g = ToGrpcStatus(st);
    EXPECT_EQ(static_cast<int>(g.error_code()), static_cast<int>(st.code()));
    EXPECT_EQ(g.error_message(), std::string(st.message()));
    EXPECT_EQ(FromGrpcStatus(g), st);
  }
}

TEST(GrpcStatus, UnknownCodeNumberBecomesUnknown) {
  EXPECT_EQ(StatusFromCode(99, "x").code(), absl::StatusCode::kUnknown);
  EXPECT_TRUE(StatusFromCode(0, "").ok());
}

absl::StatusOr<int> Half(int n) {
  if (n % 2 != 0) {
    return absl::InvalidArgumentError("odd");
  }
  return n / 2;
}

absl::StatusOr<int> Quarter(int n) {
  FORMICA_ASSIGN_OR_RETURN(int half, Half(n));
  FORMICA_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

TEST(StatusMacros, ReturnEarlyOnError) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace formica
