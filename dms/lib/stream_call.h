// For the client library's long-lived streams to dmsd (Consume, CheckBack).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "formica/dms/producer.h"
#include "formica/rpc/client.h"

namespace formica::dms {

// Runs `attempt` (which keeps a stream open until it ends) on a broker of
// `service` (a broker group's, BrokerServiceOf) found through the registry. A short call goes
// first: with no broker registered it fails within a second, where the stream's long deadline would
// make the caller wait for one; callers retry in their own loop and can stop between.
absl::Status CallBrokerStream(rpc::Client* rpc, const rpc::Client::Attempt& attempt,
                              const std::string& service = kBrokerService);

}  // namespace formica::dms
