// formicactl: how answers, errors and questions are printed.
#include "formicactl.h"

#include <iostream>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "formica/common/grpc_status.h"
#include "google/protobuf/util/json_util.h"

namespace formica::ctl {

int Fail(const grpc::Status& status) {
  absl::Status s = formica::FromGrpcStatus(status);
  std::fprintf(stderr, "formicactl: %s\n", s.ToString().c_str());
  return 1;
}

// Prints `message` as one JSON document: proto3's JSON mapping with the
// .proto's field names, every field present even when zero or empty.
int PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (auto st = google::protobuf::util::MessageToJsonString(message, &json, options); !st.ok()) {
    std::fprintf(stderr, "formicactl: cannot print the answer as JSON: %s\n",
                 std::string(st.message()).c_str());
    return 1;
  }
  if (json.empty() || json.back() != '\n') json.push_back('\n');
  std::fputs(json.c_str(), stdout);
  return 0;
}

// Where previews and questions go: stdout, except when stdout carries JSON.
// (With --output json and --yes there is neither.)
FILE* PromptStream(const Flags& flags) { return flags.output == Output::kJson ? stderr : stdout; }

std::string Ago(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  return absl::FormatDuration(
      absl::Trunc(absl::Now() - absl::FromUnixMillis(unix_ms), absl::Milliseconds(100)));
}

// Asks on the terminal; true only for "y" or "yes".
bool Confirm(FILE* out, const std::string& question) {
  std::fprintf(out, "%s [y/N] ", question.c_str());
  std::fflush(out);
  std::string answer;
  if (!std::getline(std::cin, answer)) return false;
  return answer == "y" || answer == "Y" || answer == "yes";
}

}  // namespace formica::ctl
