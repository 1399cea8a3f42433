// formicactl: the config commands: config entries at the registry.
#include "formicactl.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "formica/internal/credentials.h"
#include "formica/registry/v1/registry.grpc.pb.h"

namespace formica::ctl {
namespace v1 = formica::registry::v1;

namespace {

void PrintEntry(const v1::ConfigEntry& e) {
  std::printf("%s\tversion=%llu\n%s\n", e.key().c_str(),
              static_cast<unsigned long long>(e.version()), e.value().c_str());
}

}  // namespace

int Config(const Flags& flags, const std::vector<std::string>& args) {
  auto stub =
      v1::Registry::NewStub(grpc::CreateChannel(flags.registry, formica::ChannelCredentials()));
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

}  // namespace formica::ctl
