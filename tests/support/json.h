// Reads what `formicactl --output json` printed back into the proto it
// prints, strictly: the text must be one JSON document of that message with
// no field the proto does not have, so a renamed field or stray output fails.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace formica::testing {

template <typename Message>
absl::StatusOr<Message> ParseJson(const std::string& json) {
  Message message;
  auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not one JSON ", Message::descriptor()->full_name(), ": ", status.ToString(), "\n", json));
  }
  return message;
}

}  // namespace formica::testing
