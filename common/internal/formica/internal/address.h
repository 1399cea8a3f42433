// The one rule for a network address anywhere in Formica: what providers
// publish, what daemons listen on and advertise, what clients dial.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace formica {

// OK for "host:port" (host a name or IPv4) or "[IPv6]:port", port 1..65535;
// otherwise INVALID_ARGUMENT naming the address and what is wrong with it.
absl::Status ValidateAddress(absl::string_view address);

}  // namespace formica
