// The broker's one reading of the time in milliseconds since the epoch (the
// unit its records keep), from the clock it was given.
#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "formica/common/clock.h"

namespace formica::dms {

inline int64_t NowMs(const Clock& clock) { return absl::ToUnixMillis(clock.Now()); }

}  // namespace formica::dms
