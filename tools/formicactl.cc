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
#include "formica/common/grpc_status.h"
#include "formica/registry/v1/registry.grpc.pb.h"

namespace v1 = formica::registry::v1;

namespace {

constexpr char kUsage[] = R"(usage: formicactl [--registry HOST:PORT] [--timeout SECONDS] COMMAND

registry commands:
  registry ls                      services: version, instances, subscribers
  registry get SERVICE             each provider: address, zone, weight, tags, metadata
  registry sessions                client sessions: id, client, peer, lease, publications
  registry kill-session ID         end a session as if its lease lapsed
  registry stop-push on|off|status hold pushes (e.g. during an upgrade) and release them

health:
  health [SERVICE]                 the daemon's gRPC health status (grpc.health.v1)

config commands:
  config get KEY
  config put KEY VALUE [--expect-version N]    N=0: only if KEY does not exist
  config delete KEY [--expect-version N]
  config ls [PREFIX]

--registry defaults to $FORMICA_REGISTRY or 127.0.0.1:7370.
)";

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
int Health(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
           const std::string& service) {
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
  stub.UnaryCall(ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response_buffer, [&done](grpc::Status st) { done.set_value(st); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return Fail(status);
  std::vector<grpc::Slice> slices;
  (void)response_buffer.Dump(&slices);
  std::string response;
  for (const auto& s : slices) response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  int code = response.size() >= 2 && response[0] == 0x08 ? response[1] : 0;
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  std::printf("%s\n", kNames[code >= 0 && code <= 3 ? code : 0]);
  return code == 1 ? 0 : 1;
}

void PrintEntry(const v1::ConfigEntry& e) {
  std::printf("%s\tversion=%llu\n%s\n", e.key().c_str(),
              static_cast<unsigned long long>(e.version()), e.value().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string registry =
      std::getenv("FORMICA_REGISTRY") ? std::getenv("FORMICA_REGISTRY") : "127.0.0.1:7370";
  int timeout_s = 5;
  std::optional<uint64_t> expect_version;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> std::optional<std::string> {
      if (i + 1 >= argc) {
        Usage(absl::StrCat(flag, " needs a value"));
        return std::nullopt;
      }
      return std::string(argv[++i]);
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--registry") {
      auto v = value("--registry");
      if (!v) return 2;
      registry = *v;
    } else if (a == "--timeout") {
      auto v = value("--timeout");
      if (!v || !absl::SimpleAtoi(*v, &timeout_s) || timeout_s <= 0) {
        return Usage("--timeout wants a positive number of seconds");
      }
    } else if (a == "--expect-version") {
      auto v = value("--expect-version");
      uint64_t n = 0;
      if (!v || !absl::SimpleAtoi(*v, &n)) {
        return Usage("--expect-version wants a version number");
      }
      expect_version = n;
    } else {
      args.push_back(a);
    }
  }
  if (args.empty() || (args.size() < 2 && args[0] != "health")) {
    return Usage("");
  }
  auto channel = grpc::CreateChannel(registry, grpc::InsecureChannelCredentials());
  auto stub = v1::Registry::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  if (args[0] == "health" && args.size() <= 2) {
    return Health(channel, &ctx, args.size() == 2 ? args[1] : "");
  }
  const std::string& group = args[0];
  const std::string& cmd = args.size() > 1 ? args[1] : group;

  if (group == "registry" && cmd == "ls" && args.size() == 2) {
    v1::ListServicesResponse r;
    grpc::Status s = stub->ListServices(&ctx, {}, &r);
    if (!s.ok()) return Fail(s);
    std::printf("%-40s %20s %9s %11s\n", "SERVICE", "VERSION", "INSTANCES", "SUBSCRIBERS");
    for (const auto& svc : r.services()) {
      std::printf("%-40s %20llu %9u %11u\n", svc.service().c_str(),
                  static_cast<unsigned long long>(svc.version()), svc.instances(),
                  svc.subscribers());
    }
    return 0;
  }
  if (group == "registry" && cmd == "get" && args.size() == 3) {
    v1::GetServiceRequest req;
    req.set_service(args[2]);
    v1::ServiceSnapshot r;
    grpc::Status s = stub->GetService(&ctx, req, &r);
    if (!s.ok()) return Fail(s);
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
  if (group == "registry" && cmd == "sessions" && args.size() == 2) {
    v1::ListSessionsResponse r;
    grpc::Status s = stub->ListSessions(&ctx, {}, &r);
    if (!s.ok()) return Fail(s);
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
  if (group == "registry" && cmd == "kill-session" && args.size() == 3) {
    v1::KillSessionRequest req;
    uint64_t id = 0;
    if (!absl::SimpleAtoi(args[2], &id)) return Usage("kill-session wants a session id");
    req.set_session_id(id);
    v1::KillSessionResponse r;
    grpc::Status s = stub->KillSession(&ctx, req, &r);
    if (!s.ok()) return Fail(s);
    std::printf("session %llu ended\n", static_cast<unsigned long long>(id));
    return 0;
  }
  if (group == "registry" && cmd == "stop-push" && args.size() == 3) {
    v1::PushSwitchState r;
    grpc::Status s;
    if (args[2] == "status") {
      s = stub->GetPushSwitch(&ctx, {}, &r);
    } else if (args[2] == "on" || args[2] == "off") {
      v1::SetPushSwitchRequest req;
      req.set_stop_push(args[2] == "on");
      s = stub->SetPushSwitch(&ctx, req, &r);
    } else {
      return Usage("stop-push wants on, off or status");
    }
    if (!s.ok()) return Fail(s);
    std::printf("stop-push: %s%s\n", r.stop_push() ? "on (pushes held)" : "off",
                r.warming_up() ? "; warming up after start (pushes held)" : "");
    return 0;
  }
  if (group == "config" && cmd == "get" && args.size() == 3) {
    v1::GetConfigRequest req;
    req.set_key(args[2]);
    v1::ConfigEntry r;
    grpc::Status s = stub->GetConfig(&ctx, req, &r);
    if (!s.ok()) return Fail(s);
    PrintEntry(r);
    return 0;
  }
  if (group == "config" && cmd == "put" && args.size() == 4) {
    v1::PutConfigRequest req;
    req.set_key(args[2]);
    req.set_value(args[3]);
    if (expect_version) req.set_expected_version(*expect_version);
    v1::PutConfigResponse r;
    grpc::Status s = stub->PutConfig(&ctx, req, &r);
    if (!s.ok()) return Fail(s);
    std::printf("%s\tversion=%llu\n", r.entry().key().c_str(),
                static_cast<unsigned long long>(r.entry().version()));
    return 0;
  }
  if (group == "config" && cmd == "delete" && args.size() == 3) {
    v1::DeleteConfigRequest req;
    req.set_key(args[2]);
    if (expect_version) req.set_expected_version(*expect_version);
    v1::DeleteConfigResponse r;
    grpc::Status s = stub->DeleteConfig(&ctx, req, &r);
    if (!s.ok()) return Fail(s);
    std::printf("%s\tdeleted at version=%llu\n", r.entry().key().c_str(),
                static_cast<unsigned long long>(r.entry().version()));
    return 0;
  }
  if (group == "config" && cmd == "ls" && args.size() <= 3) {
    v1::ListConfigRequest req;
    if (args.size() == 3) req.set_prefix(args[2]);
    v1::ListConfigResponse r;
    grpc::Status s = stub->ListConfig(&ctx, req, &r);
    if (!s.ok()) return Fail(s);
    std::printf("%-50s %20s %10s\n", "KEY", "VERSION", "BYTES");
    for (const auto& e : r.entries()) {
      std::printf("%-50s %20llu %10zu\n", e.key().c_str(),
                  static_cast<unsigned long long>(e.version()), e.value().size());
    }
    return 0;
  }
  return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "), "'"));
}
