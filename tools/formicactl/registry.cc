// formicactl: the registry commands (services, sessions, stop-push) and cluster members.
#include "formicactl.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "formica/internal/credentials.h"
#include "formica/registry/v1/registry.grpc.pb.h"

namespace formica::ctl {
namespace v1 = formica::registry::v1;

namespace {

std::string JoinMap(const google::protobuf::Map<std::string, std::string>& map) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : map) {
    parts.push_back(absl::StrCat(k, "=", v));
  }
  std::sort(parts.begin(), parts.end());
  return parts.empty() ? "-" : absl::StrJoin(parts, ",");
}

}  // namespace

int Registry(const Flags& flags, const std::vector<std::string>& args) {
  auto stub =
      v1::Registry::NewStub(grpc::CreateChannel(flags.registry, formica::ChannelCredentials()));
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
    std::printf("%-20s %-24s %-24s %8s %8s %5s %5s %s\n", "SESSION", "CLIENT", "PEER", "LEASE_MS",
                "ATTACHED", "PUBS", "SUBS", "IDENTITY");
    for (const auto& x : r.sessions()) {
      std::printf("%-20llu %-24s %-24s %8u %8s %5u %5u %s\n",
                  static_cast<unsigned long long>(x.session_id()), x.client_name().c_str(),
                  x.peer().c_str(), x.lease_ms(), x.attached() ? "yes" : "no", x.publications(),
                  x.subscriptions(), x.identity().empty() ? "-" : x.identity().c_str());
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

int Cluster(const Flags& flags, const std::vector<std::string>& args) {
  auto stub =
      v1::Registry::NewStub(grpc::CreateChannel(flags.registry, formica::ChannelCredentials()));
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

}  // namespace formica::ctl
