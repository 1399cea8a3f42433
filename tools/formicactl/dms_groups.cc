// formicactl: the dms commands that span broker groups (docs/dms.md,
// "Several broker groups"): `dms topics` with each queue's group and
// leader, and `dms move-queue`.
#include <grpcpp/grpcpp.h>

#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/internal/credentials.h"
#include "formica/internal/dms_placement.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "formicactl.h"

namespace formica::ctl {
namespace {
namespace v1 = formica::dms::v1;
namespace reg = formica::registry::v1;
using formica::dms::Placement;

std::string GroupLabel(const std::string& group) {
  return group.empty() ? formica::dms::kDefaultGroupWord : group;
}

// What the registry says of the broker groups and placements.
struct Groups {
  std::map<std::string, std::string> leaders;  // group -> published address
  std::map<std::string, std::pair<Placement, uint64_t>>
      placements;  // topic -> (placement, version)
};

class RegistryView {
 public:
  explicit RegistryView(const Flags& f)
      : f_(f),
        stub_(reg::Registry::NewStub(
            grpc::CreateChannel(f.registry, formica::ChannelCredentials()))) {}

  grpc::Status Read(Groups* out) {
    reg::ListServicesResponse services;
    grpc::Status st =
        stub_->ListServices(CallContext(f_).get(), reg::ListServicesRequest(), &services);
    if (!st.ok()) return st;
    const std::string base = formica::dms::kBrokerService;
    for (const reg::ServiceSummary& s : services.services()) {
      std::string group;
      if (s.service() == base) {
        group = "";
      } else if (absl::StartsWith(s.service(), base + ".")) {
        group = s.service().substr(base.size() + 1);
      } else {
        continue;
      }
      out->leaders[group] = Leader(group);
    }
    reg::ListConfigRequest req;
    req.set_prefix("dms.placement.");
    reg::ListConfigResponse config;
    st = stub_->ListConfig(CallContext(f_).get(), req, &config);
    if (!st.ok()) return st;
    for (const reg::ConfigEntry& e : config.entries()) {
      if (!e.exists()) continue;
      absl::StatusOr<Placement> p = formica::dms::ParsePlacement(e.value());
      if (!p.ok()) {
        std::fprintf(stderr, "formicactl: ignoring %s: %s\n", e.key().c_str(),
                     std::string(p.status().message()).c_str());
        continue;
      }
      out->placements[e.key().substr(std::string("dms.placement.").size())] = {*p, e.version()};
    }
    return grpc::Status::OK;
  }

  // The address a group publishes that answers ("" : none). A replicated
  // group publishes its ready leader alone, but a dead leader's entry stays
  // until its registry session lapses.
  std::string Leader(const std::string& group) {
    reg::GetServiceRequest req;
    req.set_service(formica::dms::BrokerServiceOf(group));
    reg::ServiceSnapshot snap;
    if (!stub_->GetService(CallContext(f_).get(), req, &snap).ok()) return "";
    for (const reg::Instance& i : snap.instances()) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      v1::ListTopicsReply reply;
      auto stub =
          v1::Broker::NewStub(grpc::CreateChannel(i.address(), formica::ChannelCredentials()));
      if (stub->ListTopics(&ctx, v1::ListTopicsRequest(), &reply).ok()) return i.address();
    }
    return "";
  }

  grpc::Status GetPlacement(const std::string& topic, std::optional<Placement>* out,
                            uint64_t* version) {
    reg::GetConfigRequest req;
    req.set_key(formica::dms::PlacementKey(topic));
    reg::ConfigEntry e;
    grpc::Status st = stub_->GetConfig(CallContext(f_).get(), req, &e);
    if (st.error_code() == grpc::StatusCode::NOT_FOUND) {
      e.set_exists(false);  // no entry
    } else if (!st.ok()) {
      return st;
    }
    out->reset();
    *version = e.exists() ? e.version() : 0;
    if (!e.exists()) return grpc::Status::OK;
    absl::StatusOr<Placement> p = formica::dms::ParsePlacement(e.value());
    if (!p.ok()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat(req.key(), ": ", p.status().message()));
    }
    *out = *p;
    return grpc::Status::OK;
  }

  // Compare-and-set (version 0: the key must not exist).
  grpc::Status PutPlacement(const std::string& topic, const Placement& p, uint64_t version,
                            uint64_t* now) {
    reg::PutConfigRequest req;
    req.set_key(formica::dms::PlacementKey(topic));
    req.set_value(formica::dms::FormatPlacement(p));
    req.set_expected_version(version);
    reg::PutConfigResponse r;
    grpc::Status st = stub_->PutConfig(CallContext(f_).get(), req, &r);
    if (st.ok()) *now = r.entry().version();
    return st;
  }

 private:
  const Flags& f_;
  std::unique_ptr<reg::Registry::Stub> stub_;
};

// A move reads records of up to the broker's largest message and more.
std::unique_ptr<v1::Broker::Stub> BrokerAt(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return v1::Broker::NewStub(
      grpc::CreateCustomChannel(address, formica::ChannelCredentials(), args));
}

grpc::Status Refuse(grpc::StatusCode code, const std::string& why) {
  return grpc::Status(code, why);
}

}  // namespace

int DmsTopics(const Flags& f) {
  // The broker at --dms answers first, as it always did (a follower's
  // refusal names its leader).
  v1::ListTopicsReply here;
  grpc::Status st =
      BrokerAt(f.dms)->ListTopics(CallContext(f).get(), v1::ListTopicsRequest(), &here);
  if (!st.ok()) return Fail(st);
  Groups groups;
  RegistryView registry(f);
  if (grpc::Status rs = registry.Read(&groups); !rs.ok() && f.output != Output::kJson) {
    std::fprintf(stderr, "formicactl: the registry at %s did not answer (%s): groups not shown\n",
                 f.registry.c_str(), rs.error_message().c_str());
  }
  // Every group's topics, from its leader (the group of the broker at
  // --dms: from it).
  std::map<std::string, std::map<std::string, v1::TopicInfo>> by_group;  // group -> topic -> info
  for (const v1::TopicInfo& t : here.topics()) by_group[here.broker_group()][t.name()] = t;
  for (const auto& [group, leader] : groups.leaders) {
    if (group == here.broker_group() || leader.empty()) continue;
    v1::ListTopicsReply there;
    grpc::Status gs =
        BrokerAt(leader)->ListTopics(CallContext(f).get(), v1::ListTopicsRequest(), &there);
    if (!gs.ok()) {
      std::fprintf(stderr, "formicactl: broker group %s at %s: %s\n", group.c_str(), leader.c_str(),
                   gs.error_message().c_str());
      continue;
    }
    for (const v1::TopicInfo& t : there.topics()) by_group[group][t.name()] = t;
  }
  std::set<std::string> names;
  for (const auto& [g, topics] : by_group) {
    for (const auto& [name, info] : topics) names.insert(name);
  }
  for (const auto& [name, p] : groups.placements) names.insert(name);
  v1::ListTopicsReply out;
  for (const std::string& name : names) {
    auto placed = groups.placements.find(name);
    int queues = placed != groups.placements.end() ? placed->second.first.queues() : 0;
    if (queues == 0) {
      auto it = by_group[""].find(name);
      if (it == by_group[""].end()) continue;
      queues = it->second.queues_size();
    }
    v1::TopicInfo* t = out.add_topics();
    t->set_name(name);
    for (int q = 0; q < queues; ++q) {
      std::string group = placed != groups.placements.end() ? placed->second.first.groups[q] : "";
      v1::QueueInfo* qi = t->add_queues();
      auto info = by_group[group].find(name);
      if (info != by_group[group].end() && q < info->second.queues_size()) {
        *qi = info->second.queues(q);
      }
      qi->set_queue(q);
      qi->set_group(group);
      auto leader = groups.leaders.find(group);
      qi->set_leader(leader != groups.leaders.end() ? leader->second : "");
    }
  }
  if (f.output == Output::kJson) return PrintJson(out);
  std::printf("%-32s %5s %-16s %-22s %14s %14s %12s\n", "TOPIC", "QUEUE", "GROUP", "LEADER",
              "FIRST", "END", "BYTES");
  for (const v1::TopicInfo& t : out.topics()) {
    for (const v1::QueueInfo& q : t.queues()) {
      std::printf("%-32s %5d %-16s %-22s %14llu %14llu %12llu\n", t.name().c_str(), q.queue(),
                  GroupLabel(q.group()).c_str(),
                  q.leader().empty() ? "no-leader" : q.leader().c_str(),
                  static_cast<unsigned long long>(q.first_offset()),
                  static_cast<unsigned long long>(q.end_offset()),
                  static_cast<unsigned long long>(q.bytes()));
    }
  }
  return 0;
}

namespace {

// The steps of a move, each safe to run again after a crash at any point.
class Move {
 public:
  Move(const Flags& f, std::string topic, int queue, std::string to)
      : f_(f), registry_(f), topic_(std::move(topic)), queue_(queue), to_(std::move(to)) {}

  int Run() {
    grpc::Status st = Plan();
    if (st.ok() && done_) return 0;
    bool opened = false;
    if (st.ok()) st = Opened(&opened);
    if (st.ok() && !opened) st = Seal();
    if (st.ok() && !opened) st = Copy();
    if (st.ok() && !opened) st = Open();
    if (st.ok()) st = Switch();
    if (!st.ok()) return Fail(st);
    std::printf("queue %d of topic %s moved from broker group %s to %s\n", queue_, topic_.c_str(),
                GroupLabel(from_).c_str(), GroupLabel(to_).c_str());
    return 0;
  }

 private:
  // Checks everything before changing anything.
  grpc::Status Plan() {
    if (!to_.empty()) {
      if (absl::Status st = formica::dms::ValidBrokerGroup("--to", to_); !st.ok()) {
        return Refuse(grpc::StatusCode::INVALID_ARGUMENT, std::string(st.message()));
      }
    }
    to_leader_ = registry_.Leader(to_);
    if (to_leader_.empty()) {
      return Refuse(
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("--to: broker group '", GroupLabel(to_),
                       "' has no broker published in the registry (",
                       formica::dms::BrokerServiceOf(to_), "); start it, or check the name"));
    }
    std::optional<Placement> placed;
    if (grpc::Status st = registry_.GetPlacement(topic_, &placed, &version_); !st.ok()) return st;
    if (placed.has_value()) {
      placement_ = *placed;
    } else {
      // No placement yet: every queue is on the default group, which knows
      // the topic's queue count.
      std::string leader = registry_.Leader("");
      if (leader.empty()) {
        return Refuse(grpc::StatusCode::UNAVAILABLE,
                      "the default broker group has no broker published in the registry");
      }
      v1::ListTopicsReply topics;
      grpc::Status st =
          BrokerAt(leader)->ListTopics(CallContext(f_).get(), v1::ListTopicsRequest(), &topics);
      if (!st.ok()) return st;
      for (const v1::TopicInfo& t : topics.topics()) {
        if (t.name() == topic_) placement_.groups.assign(t.queues_size(), "");
      }
      if (placement_.groups.empty()) {
        return Refuse(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("topic '", topic_, "' does not exist"));
      }
    }
    if (queue_ < 0 || queue_ >= placement_.queues()) {
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    absl::StrCat("QUEUE: topic '", topic_, "' has queues 0 to ",
                                 placement_.queues() - 1, ", not ", queue_));
    }
    from_ = placement_.groups[queue_];
    if (from_ == to_) {
      std::printf("queue %d of topic %s is on broker group %s already: nothing to do\n", queue_,
                  topic_.c_str(), GroupLabel(to_).c_str());
      done_ = true;
      return grpc::Status::OK;
    }
    from_leader_ = registry_.Leader(from_);
    if (from_leader_.empty()) {
      return Refuse(grpc::StatusCode::UNAVAILABLE,
                    absl::StrCat("broker group '", GroupLabel(from_), "', which holds queue ",
                                 queue_, " now, has no broker published in the registry"));
    }
    from_stub_ = BrokerAt(from_leader_);
    to_stub_ = BrokerAt(to_leader_);
    return grpc::Status::OK;
  }

  // A run cut short after the open and before the switch: the source is
  // sealed for this move, and the destination holds the queue, open, up to
  // the source's sealed end at least. What remains is the switch (the
  // destination's import would refuse the records its open queue holds).
  grpc::Status Opened(bool* opened) {
    v1::ReadQueueRequest read;
    read.set_topic(topic_);
    read.set_queue(queue_);
    read.set_max(1);
    v1::ReadQueueReply source;
    grpc::Status st = from_stub_->ReadQueue(CallContext(f_).get(), read, &source);
    if (!st.ok()) return st;
    if (source.hold() != v1::ReadQueueReply::SEALED || source.hold_group() != to_) {
      return grpc::Status::OK;
    }
    v1::ReadQueueReply there;
    st = to_stub_->ReadQueue(CallContext(f_).get(), read, &there);
    if (st.error_code() == grpc::StatusCode::NOT_FOUND) return grpc::Status::OK;  // not copied
    if (!st.ok()) return st;
    if (there.hold() != v1::ReadQueueReply::OPEN || there.end_offset() < source.end_offset()) {
      return grpc::Status::OK;
    }
    std::printf(
        "1-3. queue %d of %s is sealed on broker group %s (offsets %llu..%llu) and open on %s "
        "(%s) up to %llu already\n",
        queue_, topic_.c_str(), GroupLabel(from_).c_str(),
        static_cast<unsigned long long>(source.first_offset()),
        static_cast<unsigned long long>(source.end_offset()), GroupLabel(to_).c_str(),
        to_leader_.c_str(), static_cast<unsigned long long>(there.end_offset()));
    *opened = true;
    return grpc::Status::OK;
  }

  grpc::Status Seal() {
    v1::SealQueueRequest req;
    req.set_topic(topic_);
    req.set_queue(queue_);
    req.set_to_group(to_);
    v1::SealQueueReply reply;
    grpc::Status st = from_stub_->SealQueue(CallContext(f_).get(), req, &reply);
    if (!st.ok()) return st;
    std::printf("1. sealed queue %d of %s on broker group %s (%s): offsets %llu..%llu\n", queue_,
                topic_.c_str(), GroupLabel(from_).c_str(), from_leader_.c_str(),
                static_cast<unsigned long long>(reply.first_offset()),
                static_cast<unsigned long long>(reply.end_offset()));
    return grpc::Status::OK;
  }

  grpc::Status Import(v1::ImportQueueRequest& req, v1::ImportQueueReply* reply) {
    req.set_topic(topic_);
    req.set_queues(placement_.queues());
    req.set_queue(queue_);
    req.set_from_group(from_);
    return to_stub_->ImportQueue(CallContext(f_).get(), req, reply);
  }

  grpc::Status Copy() {
    v1::ReadQueueRequest read;
    read.set_topic(topic_);
    read.set_queue(queue_);
    read.set_max(512);
    v1::ReadQueueReply got;
    // Where the source begins and the destination already is (a re-run
    // continues after what it holds).
    read.set_from(0);
    read.set_max(1);
    grpc::Status st = from_stub_->ReadQueue(CallContext(f_).get(), read, &got);
    if (!st.ok()) return st;
    v1::ImportQueueRequest start;
    start.set_first_offset(got.first_offset());
    v1::ImportQueueReply placed;
    if (st = Import(start, &placed); !st.ok()) return st;
    uint64_t first = got.first_offset();
    uint64_t from = std::max(first, placed.end_offset());
    uint64_t held = from - first, copied = 0;
    read.set_max(512);
    while (true) {
      read.set_from(from);
      got.Clear();
      if (st = from_stub_->ReadQueue(CallContext(f_).get(), read, &got); !st.ok()) return st;
      v1::ImportQueueRequest req;
      if (got.records().empty()) {
        // The end: the consumer groups' progress as the source has it now.
        req.set_first_offset(got.end_offset());
        *req.mutable_progress() = got.progress();
        if (st = Import(req, &placed); !st.ok()) return st;
        std::printf(
            "2. copied %llu records to broker group %s (%s) (%llu there already), "
            "offsets %llu..%llu; progress of %d consumer groups\n",
            static_cast<unsigned long long>(copied), GroupLabel(to_).c_str(), to_leader_.c_str(),
            static_cast<unsigned long long>(held), static_cast<unsigned long long>(first),
            static_cast<unsigned long long>(placed.end_offset()), got.progress_size());
        return grpc::Status::OK;
      }
      req.set_first_offset(got.records(0).offset());
      *req.mutable_records() = got.records();
      if (st = Import(req, &placed); !st.ok()) return st;
      copied += placed.appended();
      held += static_cast<uint64_t>(got.records_size()) - placed.appended();
      from = got.records(got.records_size() - 1).offset() + 1;
    }
  }

  grpc::Status Open() {
    v1::OpenQueueRequest req;
    req.set_topic(topic_);
    req.set_queue(queue_);
    v1::OpenQueueReply reply;
    grpc::Status st = to_stub_->OpenQueue(CallContext(f_).get(), req, &reply);
    if (!st.ok()) return st;
    std::printf("3. opened queue %d on broker group %s\n", queue_, GroupLabel(to_).c_str());
    return grpc::Status::OK;
  }

  // Compare-and-set; another change of the placement in between is read
  // and the queue's entry set again on top of it.
  grpc::Status Switch() {
    for (int attempt = 0; attempt < 10; ++attempt) {
      Placement next = placement_;
      next.groups[queue_] = to_;
      uint64_t now = 0;
      grpc::Status st = registry_.PutPlacement(topic_, next, version_, &now);
      if (st.ok()) {
        std::printf("4. placement of %s: queue %d on broker group %s (version %llu)\n",
                    topic_.c_str(), queue_, GroupLabel(to_).c_str(),
                    static_cast<unsigned long long>(now));
        return st;
      }
      if (st.error_code() != grpc::StatusCode::FAILED_PRECONDITION) return st;
      std::optional<Placement> placed;
      if (st = registry_.GetPlacement(topic_, &placed, &version_); !st.ok()) return st;
      if (placed.has_value()) placement_ = *placed;
      if (placement_.queues() <= queue_) {
        return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                      absl::StrCat("the placement of topic '", topic_, "' changed meanwhile to ",
                                   placement_.queues(), " queues"));
      }
    }
    return Refuse(grpc::StatusCode::ABORTED, absl::StrCat("the placement of topic '", topic_,
                                                          "' kept changing; run the move again"));
  }

  const Flags& f_;
  RegistryView registry_;
  std::string topic_;
  int queue_;
  std::string to_, from_;
  std::string to_leader_, from_leader_;
  std::unique_ptr<v1::Broker::Stub> from_stub_, to_stub_;
  Placement placement_;
  uint64_t version_ = 0;
  bool done_ = false;
};

}  // namespace

int DmsMoveQueue(const Flags& f, const std::vector<std::string>& args) {
  int queue = -1;
  if (!absl::SimpleAtoi(args[3], &queue)) {
    return Usage(absl::StrCat("QUEUE wants a queue number, not '", args[3], "'"));
  }
  if (f.to.empty()) return Usage("dms move-queue needs --to GROUP (default: the default group)");
  std::string to = f.to == formica::dms::kDefaultGroupWord ? "" : f.to;
  return Move(f, args[2], queue, to).Run();
}

}  // namespace formica::ctl
