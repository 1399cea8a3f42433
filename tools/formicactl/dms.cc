// formicactl: the dms commands: topics, lag, dead letters and half messages at dmsd.
#include "formicactl.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/internal/credentials.h"

namespace formica::ctl {
namespace dms = formica::dms::v1;

int Dms(const Flags& f, const std::vector<std::string>& args) {
  auto stub = dms::Broker::NewStub(grpc::CreateChannel(f.dms, formica::ChannelCredentials()));
  auto context = [&f] { return CallContext(f); };
  const std::string& cmd = args[1];
  if (cmd == "topics" && args.size() == 2) return DmsTopics(f);
  if (cmd == "move-queue" && args.size() == 4) return DmsMoveQueue(f, args);
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

}  // namespace formica::ctl
