// formicactl, the operator's tool (docs/formicactl.md): what its files share.
// One file per command group, each a function taking the parsed flags and
// the command's words (args[0] is the group) and returning the exit code:
//   main.cc      dispatch to a group
//   flags.cc     the usage text, the command line, the deadline of a call
//   output.cc    errors, JSON answers, times ago, questions on the terminal
//   health.cc    health [SERVICE]
//   registry.cc  registry ..., cluster members
//   config.cc    config ...
//   dts.cc       dts ... (business activities at dtsd)
//   dms.cc       dms ... (messages at dmsd)
//   dms_groups.cc dms topics, dms move-queue (across broker groups)
//   traffic*.cc  traffic ... (routes, shares and shifts of a service's calls)
//   release*.cc  release ... (a new version rolled out by groups)
//   release*.cc  release ... (a new version rolled out by groups)
//   ldc.cc       ldc ... (zones, shard owners, switches)
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace grpc {
class Channel;
}
#include "absl/time/time.h"

namespace google::protobuf {
class Message;
}

namespace formica::ctl {

enum class Output { kText, kJson };

// Every flag, whichever command it is for.
struct Flags {
  std::string registry;
  std::string dts;
  std::string dms;
  std::string tls_ca, tls_cert, tls_key;  // --tls-ca, --tls-cert, --tls-key (formica/common/tls.h)
  std::string tls_crl;                    // --tls-crl
  int timeout_s = 5;
  Output output = Output::kText;
  std::optional<uint64_t> expect_version;
  std::string states;
  std::string reason;
  std::string topic;
  int queues = 0;
  int limit = 0;
  bool replay = false;
  bool parked = false;
  bool yes = false;
  // traffic
  std::string to;            // --to key=value
  int step_percent = 10;     // --step
  int64_t every_ms = 30000;  // --every (a duration: 30s, 500ms)
  bool every_given = false;
  double max_failure_increase = 1.0;  // --max-failure-increase (percentage points)
  double max_p99_ratio = 1.5;         // --max-p99-ratio
  double p99_slack_ms = 5;            // --p99-slack-ms
  int64_t min_calls = 20;             // --min-calls
  std::string by;                     // --by key,key
  bool watch = false;                 // --watch
  // release
  std::string plan;                         // --plan FILE
  std::string version;                      // --version
  std::string deploy;                       // --deploy 'CMD {group} {instances}'
  std::string groups;                       // --groups beta:1,1:1,2:2
  int64_t bake_ms = -1;                     // --bake (-1: the plan's, or 30s)
  int64_t ready_timeout_ms = -1;            // --ready-timeout
  bool auto_continue = false;               // --auto
  bool thresholds_given = false;            // any of the analysis flags
  std::vector<std::string> group_settings;  // --group NAME:KEY=VALUE,... (repeated)
  std::string analysis;                     // --analysis stats|prometheus=URL ("": stats)
  std::string per_room;  // --per-room KEY: judged within each value of the tag KEY
  std::string shards;    // ldc switch
  std::string zone;
  absl::Duration fence_timeout = absl::Seconds(10);
  bool force = false;
};

// Parses the command line into `flags` and the words of the command.
// Returns an exit code when formicactl should stop here (help, a bad flag).
std::optional<int> ParseFlags(int argc, char** argv, Flags* flags, std::vector<std::string>* args);
// Prints `why` (if any) and the usage text on stderr; returns 2.
int Usage(const std::string& why);
// The deadline every call gets.
std::unique_ptr<grpc::ClientContext> CallContext(const Flags& flags);

// Prints a failed call on stderr; returns 1.
int Fail(const grpc::Status& status);
// Prints `message` as one JSON document: proto3's JSON mapping with the
// .proto's field names, every field present even when zero or empty.
int PrintJson(const google::protobuf::Message& message);
// Where previews and questions go: stdout, except when stdout carries JSON.
// (With --output json and --yes there is neither.)
FILE* PromptStream(const Flags& flags);
// How long ago `unix_ms` was, to a tenth of a second; "-" for 0.
std::string Ago(int64_t unix_ms);
// Asks on the terminal; true only for "y" or "yes".
bool Confirm(FILE* out, const std::string& question);

// grpc.health.v1.Health/Check of `service` ("" for the server) on `channel`;
// `code` gets the answer's status (1: SERVING).
grpc::Status CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         grpc::ClientContext* ctx, int* code);

// The command groups. Each returns formicactl's exit code.
int Health(const Flags& flags, const std::string& service);
int Registry(const Flags& flags, const std::vector<std::string>& args);
int Cluster(const Flags& flags, const std::vector<std::string>& args);
int Config(const Flags& flags, const std::vector<std::string>& args);
int Dts(const Flags& flags, const std::vector<std::string>& args);
int Dms(const Flags& flags, const std::vector<std::string>& args);
// dms_groups.cc: `dms topics` and `dms move-queue` (broker groups).
int DmsTopics(const Flags& flags);
int DmsMoveQueue(const Flags& flags, const std::vector<std::string>& args);
int Audit(const Flags& flags, const std::vector<std::string>& args);
int Traffic(const Flags& flags, const std::vector<std::string>& args);
int Release(const Flags& flags, const std::vector<std::string>& args);
int Release(const Flags& flags, const std::vector<std::string>& args);
int Ldc(const Flags& flags, const std::vector<std::string>& args);

}  // namespace formica::ctl
