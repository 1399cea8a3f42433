// Status helpers shared by every Formica module. Errors are absl::Status and
// absl::StatusOr<T>; these macros keep the early-return plumbing short.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FORMICA_STATUS_CONCAT_INNER_(a, b) a##b
#define FORMICA_STATUS_CONCAT_(a, b) FORMICA_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not ok.
#define FORMICA_RETURN_IF_ERROR(expr)        \
  do {                                       \
    ::absl::Status formica_status_ = (expr); \
    if (!formica_status_.ok()) {             \
      return formica_status_;                \
    }                                        \
  } while (false)

// `lhs` = the value of `expr` (an absl::StatusOr<T>), or returns its error.
#define FORMICA_ASSIGN_OR_RETURN(lhs, expr) \
  FORMICA_ASSIGN_OR_RETURN_IMPL_(FORMICA_STATUS_CONCAT_(formica_statusor_, __LINE__), lhs, expr)

#define FORMICA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) {                                     \
    return tmp.status();                               \
  }                                                    \
  lhs = std::move(tmp).value()
