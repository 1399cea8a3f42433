// formicactl: the operator's tool. See docs/formicactl.md.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "formica/common/grpc_status.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "google/protobuf/util/json_util.h"

namespace v1 = formica::registry::v1;
namespace dts = formica::dts::v1;
namespace dms = formica::dms::v1;

namespace {

constexpr char kUsage[] =
    R"(usage: formicactl [--registry HOST:PORT] [--dts HOST:PORT] [--dms HOST:PORT]
                  [--timeout SECONDS] [--output text|json] COMMAND

registry commands:
  registry ls                      services: version, instances, subscribers
  registry get SERVICE             each provider: address, zone, weight, tags, metadata
  registry sessions                client sessions: id, client, peer, lease, publications
  registry kill-session ID         end a session as if its lease lapsed
  registry stop-push on|off|status hold pushes (e.g. during an upgrade) and release them
  cluster members                  the registry's nodes and (cluster mode) etcd's members

health:
  health [SERVICE]                 the daemon's gRPC health status (grpc.health.v1)

config commands:
  config get KEY
  config put KEY VALUE [--expect-version N]    N=0: only if KEY does not exist
  config delete KEY [--expect-version N]
  config ls [PREFIX]

dts commands (business activities at dtsd):
  dts ls [--state S,...] [--limit N]   newest first; default: unfinished ones
                                       S: ACTIVE COMMITTING ROLLING_BACK COMMITTED ROLLED_BACK
  dts show ID                          the activity and each action: state, attempts, last error
  dts stats                            counters since dtsd started
  dts retry ID [--yes]                 retry phase two of a decided activity now
  dts settle ID --reason TEXT [--yes]  mark its unfinished actions done by hand and finish it

dms commands (messages at dmsd):
  dms topics                           each topic's queues: first and end offset, bytes
  dms create-topic NAME [--queues N]   N: the broker's default when left out
  dms lag GROUP [--topic T]            per queue: committed offset, end, messages not acked
  dms dlq GROUP [--topic T] [--limit N] [--replay [--yes]]
                                       dead letters; --replay delivers them to GROUP again
  dms half [--parked] [--limit N]      undecided transactional messages and their checks
  dms resume [ID] [--yes]              check parked half messages again (all, or ID)

--registry defaults to $FORMICA_REGISTRY or 127.0.0.1:7370;
--dts to $FORMICA_DTS or 127.0.0.1:7380; --dms to $FORMICA_DMS or
127.0.0.1:7390. retry, settle, replay and resume ask for confirmation
unless --yes is given. --output json (or -o json) prints each answer as
one JSON document on stdout (proto3's JSON mapping, field names as in the
.proto); errors stay text on stderr.
)";

enum class Output { kText, kJson };

// Every flag, whichever command it is for.
struct Flags {
  std::string registry;
  std::string dts;
  std::string dms;
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
};

int Usage(const std::string& why) {
  if (!why.empty()) {
    std::fprintf(stderr, "formicactl: %s\n", why.c_str());
  }
  std::fputs(kUsage, stderr);
  return 2;
}

int Fail(const grpc::Status& status) {
  absl::Status s = formica::FromGrpcStatus(status);
  std::fprintf(stderr, "formicactl: %s\n", s.ToString().c_str());
  return 1;
}

// The deadline every call gets.
std::unique_ptr<grpc::ClientContext> CallContext(const Flags& flags) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(flags.timeout_s));
  return ctx;
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

std::string JoinMap(const google::protobuf::Map<std::string, std::string>& map) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : map) {
    parts.push_back(absl::StrCat(k, "=", v));
  }
  std::sort(parts.begin(), parts.end());
  return parts.empty() ? "-" : absl::StrJoin(parts, ",");
}

// grpc.health.v1.Health/Check without its generated stubs: the request is
// {1: service}, the response {1: status}, both tiny protobuf messages.
int Health(const Flags& flags, const std::string& service) {
  auto channel = grpc::CreateChannel(flags.registry, grpc::InsecureChannelCredentials());
  auto ctx = CallContext(flags);
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::GenericStub stub(channel);
  std::promise<grpc::Status> done;
  stub.UnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response_buffer, [&done](grpc::Status st) { done.set_value(st); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return Fail(status);
  std::vector<grpc::Slice> slices;
  (void)response_buffer.Dump(&slices);
  std::string response;
  for (const auto& s : slices) response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  int code = response.size() >= 2 && response[0] == 0x08 ? response[1] : 0;
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  const char* name = kNames[code >= 0 && code <= 3 ? code : 0];
  if (flags.output == Output::kJson) {
    std::printf("{\n \"status\": \"%s\"\n}\n", name);
  } else {
    std::printf("%s\n", name);
  }
  return code == 1 ? 0 : 1;
}

std::string Ago(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  return absl::FormatDuration(
      absl::Trunc(absl::Now() - absl::FromUnixMillis(unix_ms), absl::Milliseconds(100)));
}

void PrintActivity(FILE* out, const dts::Activity& a) {
  std::fprintf(out, "activity   %s\nname       %s\ninitiator  %s\nstate      %s\n", a.id().c_str(),
               a.name().c_str(), a.initiator().empty() ? "-" : a.initiator().c_str(),
               dts::ActivityState_Name(a.state()).c_str());
  if (!a.reason().empty()) std::fprintf(out, "reason     %s\n", a.reason().c_str());
  std::fprintf(out, "begun      %s ago\n", Ago(a.begun_unix_ms()).c_str());
  std::fprintf(
      out, "deadline   %s\n",
      absl::FormatTime(absl::FromUnixMillis(a.deadline_unix_ms()), absl::UTCTimeZone()).c_str());
  if (a.decided_unix_ms() != 0)
    std::fprintf(out, "decided    %s ago\n", Ago(a.decided_unix_ms()).c_str());
  if (a.finished_unix_ms() != 0) {
    std::fprintf(out, "finished   %s ago\n", Ago(a.finished_unix_ms()).c_str());
  }
  std::fprintf(out, "\n%-3s %-32s %-20s %-10s %8s  %s\n", "#", "PARTICIPANT", "ACTION", "STATE",
               "ATTEMPTS", "LAST ERROR");
  for (int i = 0; i < a.actions_size(); ++i) {
    const dts::Action& x = a.actions(i);
    std::fprintf(out, "%-3d %-32s %-20s %-10s %8u  %s\n", i, x.participant().c_str(),
                 x.name().c_str(), dts::ActionState_Name(x.state()).c_str(), x.attempts(),
                 x.last_error().empty() ? "-" : x.last_error().c_str());
  }
}

// Asks on the terminal; true only for "y" or "yes".
bool Confirm(FILE* out, const std::string& question) {
  std::fprintf(out, "%s [y/N] ", question.c_str());
  std::fflush(out);
  std::string answer;
  if (!std::getline(std::cin, answer)) return false;
  return answer == "y" || answer == "Y" || answer == "yes";
}

int Dts(const Flags& flags, const std::vector<std::string>& args) {
  auto stub =
      dts::Coordinator::NewStub(grpc::CreateChannel(flags.dts, grpc::InsecureChannelCredentials()));
  auto context = [&flags] { return CallContext(flags); };
  const std::string& cmd = args[1];
  if (cmd == "ls" && args.size() == 2) {
    dts::ListRequest req;
    for (absl::string_view name : absl::StrSplit(flags.states, ',', absl::SkipEmpty())) {
      dts::ActivityState state;
      if (!dts::ActivityState_Parse(std::string(name), &state) ||
          state == dts::ACTIVITY_STATE_UNSPECIFIED) {
        return Usage(absl::StrCat("unknown state '", name, "'"));
      }
      req.add_states(state);
    }
    req.set_limit(flags.limit);
    dts::ListResponse resp;
    grpc::Status st = stub->List(context().get(), req, &resp);
    if (!st.ok()) return Fail(st);
    if (flags.output == Output::kJson) return PrintJson(resp);
    std::printf("%-21s %-24s %-12s %7s %10s  %s\n", "ID", "NAME", "STATE", "ACTIONS", "AGE",
                "REASON");
    for (const dts::Activity& a : resp.activities()) {
      int done = 0;
      for (const dts::Action& x : a.actions()) done += x.state() != dts::ENLISTED;
      std::printf("%-21s %-24s %-12s %7s %10s  %s\n", a.id().c_str(), a.name().c_str(),
                  dts::ActivityState_Name(a.state()).c_str(),
                  absl::StrCat(done, "/", a.actions_size()).c_str(), Ago(a.begun_unix_ms()).c_str(),
                  a.reason().empty() ? "-" : a.reason().c_str());
    }
    return 0;
  }
  if (cmd == "stats" && args.size() == 2) {
    dts::Stats s;
    grpc::Status st = stub->GetStats(context().get(), dts::StatsRequest(), &s);
    if (!st.ok()) return Fail(st);
    if (flags.output == Output::kJson) return PrintJson(s);
    std::printf(
        "begun %llu\ncommitted %llu\nrolled_back %llu\ntimed_out %llu\nunfinished %llu\n"
        "phase_two_calls %llu\nphase_two_failures %llu\nsynced_writes %llu\nwal_syncs %llu\n"
        "stored_bytes %llu\n",
        static_cast<unsigned long long>(s.begun()), static_cast<unsigned long long>(s.committed()),
        static_cast<unsigned long long>(s.rolled_back()),
        static_cast<unsigned long long>(s.timed_out()),
        static_cast<unsigned long long>(s.unfinished()),
        static_cast<unsigned long long>(s.phase_two_calls()),
        static_cast<unsigned long long>(s.phase_two_failures()),
        static_cast<unsigned long long>(s.synced_writes()),
        static_cast<unsigned long long>(s.wal_syncs()),
        static_cast<unsigned long long>(s.stored_bytes()));
    return 0;
  }
  if ((cmd == "show" || cmd == "retry" || cmd == "settle") && args.size() == 3) {
    dts::ActivityRef ref;
    ref.set_activity_id(args[2]);
    dts::Activity a;
    grpc::Status st = stub->Get(context().get(), ref, &a);
    if (!st.ok()) return Fail(st);
    if (cmd == "show") {
      if (flags.output == Output::kJson) return PrintJson(a);
      PrintActivity(stdout, a);
      return 0;
    }
    if (cmd == "settle" && flags.reason.empty()) {
      return Usage("settle needs --reason TEXT: what was done by hand, for the record");
    }
    FILE* prompt = PromptStream(flags);
    if (flags.output == Output::kText || !flags.yes) {  // a script's JSON answer comes alone
      PrintActivity(prompt, a);
      std::fprintf(prompt, "\n");
    }
    std::string question =
        cmd == "retry"
            ? absl::StrCat("Retry phase two of ", a.id(), " now?")
            : absl::StrCat("Mark every unfinished action of ", a.id(),
                           " SETTLED without calling its participant, and finish the activity?");
    if (!flags.yes && !Confirm(prompt, question)) {
      std::fprintf(stderr, "formicactl: nothing done\n");
      return 1;
    }
    ref.set_reason(flags.reason);
    dts::DecisionResponse resp;
    st = cmd == "retry" ? stub->Retry(context().get(), ref, &resp)
                        : stub->Settle(context().get(), ref, &resp);
    if (!st.ok()) return Fail(st);
    if (flags.output == Output::kJson) return PrintJson(resp);
    std::printf("%s: %s\n", a.id().c_str(), dts::ActivityState_Name(resp.state()).c_str());
    return 0;
  }
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

int Dms(const Flags& f, const std::vector<std::string>& args) {
  auto stub = dms::Broker::NewStub(grpc::CreateChannel(f.dms, grpc::InsecureChannelCredentials()));
  auto context = [&f] { return CallContext(f); };
  const std::string& cmd = args[1];
  if (cmd == "topics" && args.size() == 2) {
    dms::ListTopicsReply reply;
    grpc::Status st = stub->ListTopics(context().get(), dms::ListTopicsRequest(), &reply);
    if (!st.ok()) return Fail(st);
    if (f.output == Output::kJson) return PrintJson(reply);
    std::printf("%-32s %5s %14s %14s %12s\n", "TOPIC", "QUEUE", "FIRST", "END", "BYTES");
    for (const dms::TopicInfo& t : reply.topics()) {
      for (const dms::QueueInfo& q : t.queues()) {
        std::printf("%-32s %5d %14llu %14llu %12llu\n", t.name().c_str(), q.queue(),
                    static_cast<unsigned long long>(q.first_offset()),
                    static_cast<unsigned long long>(q.end_offset()),
                    static_cast<unsigned long long>(q.bytes()));
      }
    }
    return 0;
  }
  if (cmd == "create-topic" && args.size() == 3) {
    dms::CreateTopicRequest req;
    req.set_name(args[2]);
    req.set_queues(f.queues);
    dms::TopicInfo info;
    grpc::Status st = stub->CreateTopic(context().get(), req, &info);
    if (!st.ok()) return Fail(st);
    if (f.output == Output::kJson) return PrintJson(info);
    std::printf("topic %s: %d queues\n", info.name().c_str(), info.queues_size());
    return 0;
  }
  if (cmd == "lag" && args.size() == 3) {
    dms::GetLagRequest req;
    req.set_group(args[2]);
    req.set_topic(f.topic);
    dms::GetLagReply reply;
    grpc::Status st = stub->GetLag(context().get(), req, &reply);
    if (!st.ok()) return Fail(st);
    if (f.output == Output::kJson) return PrintJson(reply);
    std::printf("%-32s %5s %-16s %14s %14s %10s\n", "TOPIC", "QUEUE", "MEMBER", "COMMITTED", "END",
                "LAG");
    for (const dms::QueueLag& l : reply.queues()) {
      std::printf("%-32s %5d %-16s %14llu %14llu %10llu\n", l.topic().c_str(), l.queue(),
                  l.member().empty() ? "-" : l.member().c_str(),
                  static_cast<unsigned long long>(l.committed()),
                  static_cast<unsigned long long>(l.end_offset()),
                  static_cast<unsigned long long>(l.lag()));
    }
    std::printf("total lag %llu, dead letters %llu\n",
                static_cast<unsigned long long>(reply.total()),
                static_cast<unsigned long long>(reply.dead_letters()));
    return 0;
  }
  if (cmd == "dlq" && args.size() == 3) {
    if (f.replay) {
      if (!f.yes &&
          !Confirm(PromptStream(f), absl::StrCat("Deliver the dead letters of group ", args[2],
                                                 f.topic.empty() ? "" : " in topic " + f.topic,
                                                 " to the group again?"))) {
        std::fprintf(stderr, "formicactl: nothing replayed\n");
        return 1;
      }
      dms::ReplayDeadLettersRequest req;
      req.set_group(args[2]);
      req.set_topic(f.topic);
      dms::ReplayDeadLettersReply reply;
      grpc::Status st = stub->ReplayDeadLetters(context().get(), req, &reply);
      if (!st.ok()) return Fail(st);
      if (f.output == Output::kJson) return PrintJson(reply);
      std::printf("%llu dead letters replayed to group %s\n",
                  static_cast<unsigned long long>(reply.replayed()), args[2].c_str());
      return 0;
    }
    dms::ListDeadLettersRequest req;
    req.set_group(args[2]);
    req.set_topic(f.topic);
    req.set_limit(f.limit);
    dms::ListDeadLettersReply reply;
    grpc::Status st = stub->ListDeadLetters(context().get(), req, &reply);
    if (!st.ok()) return Fail(st);
    if (f.output == Output::kJson) return PrintJson(reply);
    std::printf("%-24s %5s %12s %8s %-10s %-12s %s\n", "TOPIC", "QUEUE", "OFFSET", "ATTEMPTS",
                "STATE", "DEAD", "REASON / KEY / BODY");
    for (const dms::DeadLetter& d : reply.letters()) {
      std::string body = d.message().body().substr(0, 40);
      for (char& c : body) {
        if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '.';
      }
      std::printf("%-24s %5d %12llu %8d %-10s %-12s %s / %s / %s\n", d.topic().c_str(),
                  d.ref().queue(), static_cast<unsigned long long>(d.ref().offset()), d.attempts(),
                  d.replaying() ? "replaying" : "dead", (Ago(d.dead_unix_ms()) + " ago").c_str(),
                  d.reason().c_str(), d.message().key().empty() ? "-" : d.message().key().c_str(),
                  body.c_str());
    }
    return 0;
  }
  if (cmd == "half" && args.size() == 2) {
    dms::ListHalfMessagesRequest req;
    req.set_parked_only(f.parked);
    req.set_limit(f.limit);
    dms::ListHalfMessagesReply reply;
    grpc::Status st = stub->ListHalfMessages(context().get(), req, &reply);
    if (!st.ok()) return Fail(st);
    if (f.output == Output::kJson) return PrintJson(reply);
    std::printf("%-24s %-20s %-20s %-10s %6s %-12s %s\n", "TRANSACTION", "TOPIC", "GROUP", "STATE",
                "CHECKS", "PREPARED", "ACTIVITY / LAST CHECK");
    for (const dms::HalfMessage& h : reply.messages()) {
      std::printf("%-24s %-20s %-20s %-10s %6d %-12s %s / %s\n", h.transaction_id().c_str(),
                  h.topic().c_str(), h.message().producer_group().c_str(),
                  h.parked() ? "parked" : "checking", h.checks(),
                  (Ago(h.prepared_unix_ms()) + " ago").c_str(),
                  h.activity_id().empty() ? "-" : h.activity_id().c_str(),
                  h.last_check().empty() ? "-" : h.last_check().c_str());
    }
    return 0;
  }
  if (cmd == "resume" && args.size() <= 3) {
    std::string id = args.size() == 3 ? args[2] : "";
    if (!f.yes && !Confirm(PromptStream(f), id.empty() ? "Check every parked half message again?"
                                                       : "Check half message " + id + " again?")) {
      std::fprintf(stderr, "formicactl: nothing resumed\n");
      return 1;
    }
    dms::ResumeHalfMessagesRequest req;
    req.set_transaction_id(id);
    dms::ResumeHalfMessagesReply reply;
    grpc::Status st = stub->ResumeHalfMessages(context().get(), req, &reply);
    if (!st.ok()) return Fail(st);
    if (f.output == Output::kJson) return PrintJson(reply);
    std::printf("%llu half messages resumed\n", static_cast<unsigned long long>(reply.resumed()));
    return 0;
  }
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

void PrintEntry(const v1::ConfigEntry& e) {
  std::printf("%s\tversion=%llu\n%s\n", e.key().c_str(),
              static_cast<unsigned long long>(e.version()), e.value().c_str());
}

int Registry(const Flags& flags, v1::Registry::Stub* stub, const std::vector<std::string>& args) {
  const std::string& cmd = args[1];
  auto ctx = CallContext(flags);
  const bool json = flags.output == Output::kJson;
  if (cmd == "ls" && args.size() == 2) {
    v1::ListServicesResponse r;
    grpc::Status s = stub->ListServices(ctx.get(), {}, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("%-40s %20s %9s %11s\n", "SERVICE", "VERSION", "INSTANCES", "SUBSCRIBERS");
    for (const auto& svc : r.services()) {
      std::printf("%-40s %20llu %9u %11u\n", svc.service().c_str(),
                  static_cast<unsigned long long>(svc.version()), svc.instances(),
                  svc.subscribers());
    }
    return 0;
  }
  if (cmd == "get" && args.size() == 3) {
    v1::GetServiceRequest req;
    req.set_service(args[2]);
    v1::ServiceSnapshot r;
    grpc::Status s = stub->GetService(ctx.get(), req, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("service %s version %llu, %d instance(s)\n", r.service().c_str(),
                static_cast<unsigned long long>(r.version()), r.instances_size());
    std::printf("%-28s %-12s %6s  %-30s %s\n", "ADDRESS", "ZONE", "WEIGHT", "TAGS", "METADATA");
    for (const auto& i : r.instances()) {
      std::printf("%-28s %-12s %6d  %-30s %s\n", i.address().c_str(),
                  i.zone().empty() ? "-" : i.zone().c_str(), i.weight(), JoinMap(i.tags()).c_str(),
                  JoinMap(i.metadata()).c_str());
    }
    return 0;
  }
  if (cmd == "sessions" && args.size() == 2) {
    v1::ListSessionsResponse r;
    grpc::Status s = stub->ListSessions(ctx.get(), {}, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("%-20s %-24s %-24s %8s %8s %5s %5s\n", "SESSION", "CLIENT", "PEER", "LEASE_MS",
                "ATTACHED", "PUBS", "SUBS");
    for (const auto& x : r.sessions()) {
      std::printf("%-20llu %-24s %-24s %8u %8s %5u %5u\n",
                  static_cast<unsigned long long>(x.session_id()), x.client_name().c_str(),
                  x.peer().c_str(), x.lease_ms(), x.attached() ? "yes" : "no", x.publications(),
                  x.subscriptions());
    }
    return 0;
  }
  if (cmd == "kill-session" && args.size() == 3) {
    v1::KillSessionRequest req;
    uint64_t id = 0;
    if (!absl::SimpleAtoi(args[2], &id)) return Usage("kill-session wants a session id");
    req.set_session_id(id);
    v1::KillSessionResponse r;
    grpc::Status s = stub->KillSession(ctx.get(), req, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("session %llu ended\n", static_cast<unsigned long long>(id));
    return 0;
  }
  if (cmd == "stop-push" && args.size() == 3) {
    v1::PushSwitchState r;
    grpc::Status s;
    if (args[2] == "status") {
      s = stub->GetPushSwitch(ctx.get(), {}, &r);
    } else if (args[2] == "on" || args[2] == "off") {
      v1::SetPushSwitchRequest req;
      req.set_stop_push(args[2] == "on");
      s = stub->SetPushSwitch(ctx.get(), req, &r);
    } else {
      return Usage("stop-push wants on, off or status");
    }
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("stop-push: %s%s\n", r.stop_push() ? "on (pushes held)" : "off",
                r.warming_up() ? "; warming up after start (pushes held)" : "");
    return 0;
  }
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

int Cluster(const Flags& flags, v1::Registry::Stub* stub, const std::vector<std::string>& args) {
  if (args[1] != "members" || args.size() != 2) {
    return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
  }
  v1::ClusterInfo r;
  grpc::Status s = stub->GetCluster(CallContext(flags).get(), {}, &r);
  if (!s.ok()) return Fail(s);
  if (flags.output == Output::kJson) return PrintJson(r);
  if (r.mode() == "cluster") {
    std::printf("cluster %s (etcd revision %lld)\n", r.cluster().c_str(),
                static_cast<long long>(r.etcd_revision()));
  } else {
    std::printf("embedded registry (one node, RocksDB)\n");
  }
  std::printf("%-24s %-28s %-26s %s\n", "DSRD NODE", "ADDRESS", "STARTED", "");
  for (const auto& n : r.nodes()) {
    std::string started =
        n.started_unix_ms() == 0
            ? "-"
            : absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(n.started_unix_ms()),
                               absl::UTCTimeZone());
    std::printf("%-24s %-28s %-26s %s\n", n.id().c_str(), n.address().c_str(), started.c_str(),
                n.self() ? "(answered)" : "");
  }
  if (r.etcd_members_size() > 0) {
    std::printf("%-24s %-18s %-40s %s\n", "ETCD MEMBER", "ID", "CLIENT URLS", "");
    for (const auto& m : r.etcd_members()) {
      std::printf("%-24s %-18llx %-40s %s\n", m.name().c_str(),
                  static_cast<unsigned long long>(m.id()),
                  absl::StrJoin(m.client_urls(), ",").c_str(), m.leader() ? "leader" : "");
    }
  }
  return 0;
}

int Config(const Flags& flags, v1::Registry::Stub* stub, const std::vector<std::string>& args) {
  const std::string& cmd = args[1];
  auto ctx = CallContext(flags);
  const bool json = flags.output == Output::kJson;
  if (cmd == "get" && args.size() == 3) {
    v1::GetConfigRequest req;
    req.set_key(args[2]);
    v1::ConfigEntry r;
    grpc::Status s = stub->GetConfig(ctx.get(), req, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    PrintEntry(r);
    return 0;
  }
  if (cmd == "put" && args.size() == 4) {
    v1::PutConfigRequest req;
    req.set_key(args[2]);
    req.set_value(args[3]);
    if (flags.expect_version) req.set_expected_version(*flags.expect_version);
    v1::PutConfigResponse r;
    grpc::Status s = stub->PutConfig(ctx.get(), req, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("%s\tversion=%llu\n", r.entry().key().c_str(),
                static_cast<unsigned long long>(r.entry().version()));
    return 0;
  }
  if (cmd == "delete" && args.size() == 3) {
    v1::DeleteConfigRequest req;
    req.set_key(args[2]);
    if (flags.expect_version) req.set_expected_version(*flags.expect_version);
    v1::DeleteConfigResponse r;
    grpc::Status s = stub->DeleteConfig(ctx.get(), req, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("%s\tdeleted at version=%llu\n", r.entry().key().c_str(),
                static_cast<unsigned long long>(r.entry().version()));
    return 0;
  }
  if (cmd == "ls" && args.size() <= 3) {
    v1::ListConfigRequest req;
    if (args.size() == 3) req.set_prefix(args[2]);
    v1::ListConfigResponse r;
    grpc::Status s = stub->ListConfig(ctx.get(), req, &r);
    if (!s.ok()) return Fail(s);
    if (json) return PrintJson(r);
    std::printf("%-50s %20s %10s\n", "KEY", "VERSION", "BYTES");
    for (const auto& e : r.entries()) {
      std::printf("%-50s %20llu %10zu\n", e.key().c_str(),
                  static_cast<unsigned long long>(e.version()), e.value().size());
    }
    return 0;
  }
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}

// Parses the command line into `flags` and the words of the command.
// Returns an exit code when formicactl should stop here (help, a bad flag).
std::optional<int> ParseFlags(int argc, char** argv, Flags* flags, std::vector<std::string>* args) {
  auto env = [](const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return std::string(v != nullptr ? v : fallback);
  };
  flags->registry = env("FORMICA_REGISTRY", "127.0.0.1:7370");
  flags->dts = env("FORMICA_DTS", "127.0.0.1:7380");
  flags->dms = env("FORMICA_DMS", "127.0.0.1:7390");
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> std::optional<std::string> {
      if (i + 1 >= argc) {
        Usage(absl::StrCat(flag, " needs a value"));
        return std::nullopt;
      }
      return std::string(argv[++i]);
    };
    // Flags whose value is taken as given.
    std::string* text = a == "--registry" ? &flags->registry
                        : a == "--dts"    ? &flags->dts
                        : a == "--dms"    ? &flags->dms
                        : a == "--topic"  ? &flags->topic
                        : a == "--state"  ? &flags->states
                        : a == "--reason" ? &flags->reason
                                          : nullptr;
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (text != nullptr) {
      auto v = value(a.c_str());
      if (!v) return 2;
      *text = *v;
    } else if (a == "--output" || a == "-o") {
      auto v = value(a.c_str());
      if (!v) return 2;
      if (*v == "json") {
        flags->output = Output::kJson;
      } else if (*v == "text") {
        flags->output = Output::kText;
      } else {
        return Usage(absl::StrCat("--output wants text or json, not '", *v, "'"));
      }
    } else if (a == "--timeout") {
      auto v = value("--timeout");
      if (!v || !absl::SimpleAtoi(*v, &flags->timeout_s) || flags->timeout_s <= 0) {
        return Usage("--timeout wants a positive number of seconds");
      }
    } else if (a == "--queues") {
      auto v = value("--queues");
      if (!v || !absl::SimpleAtoi(*v, &flags->queues) || flags->queues <= 0) {
        return Usage("--queues wants a positive number");
      }
    } else if (a == "--limit") {
      auto v = value("--limit");
      if (!v || !absl::SimpleAtoi(*v, &flags->limit) || flags->limit <= 0) {
        return Usage("--limit wants a positive number");
      }
    } else if (a == "--expect-version") {
      auto v = value("--expect-version");
      uint64_t n = 0;
      if (!v || !absl::SimpleAtoi(*v, &n)) {
        return Usage("--expect-version wants a version number");
      }
      flags->expect_version = n;
    } else if (a == "--replay") {
      flags->replay = true;
    } else if (a == "--parked") {
      flags->parked = true;
    } else if (a == "--yes") {
      flags->yes = true;
    } else {
      args->push_back(a);
    }
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  std::vector<std::string> args;
  if (std::optional<int> exit_code = ParseFlags(argc, argv, &flags, &args)) return *exit_code;
  if (args.empty() || (args.size() < 2 && args[0] != "health")) {
    return Usage("");
  }
  const std::string& group = args[0];
  if (group == "health" && args.size() <= 2) return Health(flags, args.size() == 2 ? args[1] : "");
  if (group == "dts") return Dts(flags, args);
  if (group == "dms") return Dms(flags, args);
  auto stub = v1::Registry::NewStub(
      grpc::CreateChannel(flags.registry, grpc::InsecureChannelCredentials()));
  if (group == "registry") return Registry(flags, stub.get(), args);
  if (group == "cluster") return Cluster(flags, stub.get(), args);
  if (group == "config") return Config(flags, stub.get(), args);
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}
