// fund-clear: the fund's daily clearing (docs/fund.md).
//   fund-clear worker --registry H:P [--fund-data DIR[,DIR...] [--databases N] |
//                     --fund-dds FILE[,FILE...]] [--host H] [--nice N] [--delay-ms N]
//       serves fund.v1.ClearingWorker until SIGINT/SIGTERM; --fund-data (the
//       fund-server's --data and --databases; with LDC zones each zone's)
//       lets it reconcile against the fund's holdings; --nice N lowers its
//       CPU priority and puts its disk I/O last among best-effort (online first).
//   fund-clear run --registry H:P --trades FILE --work DIR --out DIR
//                  [--opening FILE] [--income CENTS | --yield-bp BP]
//                  [--check-online [--zones Z1,Z2]] [--parallel N] [--nice N] [--quiet]
//       clears one day on the workers found through DSR and writes
//       DIR/clearing-<day>.csv; exit 0 reconciled, 3 not (the differences
//       are named), 2 bad input, 1 other failure. --zones: the fund runs in
//       these LDC zones; its total shares come from the GZone's fund.v1.FundTotals.
//   fund-clear export --registry H:P --out FILE [--day D] [--cut-off] [--zones Z1,Z2]
//       writes a day's confirmed orders from the gateway as a trade file;
//       --cut-off first closes the gateway's current day and exports it.
//       --zones: every zone's gateway is cut off (they must close the same
//       day) and their orders go into one file.
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "clearing_master.h"
#include "clearing_worker.h"
#include "formica/common/tls.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "store.h"
#include "totals.h"
#include "trade_file.h"

namespace {

int Usage() {
  std::fprintf(stderr,
               "usage: fund-clear worker|run|export --registry H:P ... (see docs/fund.md)\n");
  return 2;
}

std::unique_ptr<formica::registry::Client> Registry(const std::string& addresses,
                                                    const std::string& name) {
  formica::registry::ClientOptions ro;
  ro.client_name = name;
  ro.lease = absl::Seconds(3);
  for (absl::string_view r : absl::StrSplit(addresses, ',')) ro.registries.emplace_back(r);
  auto registry = formica::registry::Client::Create(ro);
  if (!registry.ok()) {
    std::fprintf(stderr, "fund-clear: %s\n", registry.status().ToString().c_str());
    return nullptr;
  }
  return std::move(*registry);
}

int Worker(std::map<std::string, std::string>& f) {
  auto registry = Registry(f["registry"], "fund-clear-worker");
  if (registry == nullptr) return 2;
  // One data source per zone's data (--fund-data a,b or --fund-dds a.yaml,b.yaml).
  std::vector<std::unique_ptr<formica::dds::ShardedDataSource>> holdings;
  std::vector<formica::dds::ShardedDataSource*> sources;
  const bool dds = !f["fund-dds"].empty();
  for (absl::string_view where :
       absl::StrSplit(dds ? f["fund-dds"] : f["fund-data"], ',', absl::SkipEmpty())) {
    int databases = f["databases"].empty() ? 2 : std::atoi(f["databases"].c_str());
    auto ds = fund::OpenStore("fund", dds ? "" : std::string(where), dds ? std::string(where) : "",
                              {{"holdings", "user_id"}}, {}, databases);
    if (!ds.ok()) {
      std::fprintf(stderr, "fund-clear: %s: %s\n", std::string(where).c_str(),
                   ds.status().ToString().c_str());
      return 1;
    }
    sources.push_back(ds->get());
    holdings.push_back(std::move(*ds));
  }
  fund::ClearingWorker worker(sources, absl::Milliseconds(std::atoi(f["delay-ms"].c_str())));
  formica::rpc::ServerOptions so;
  so.listen = (f["host"].empty() ? std::string("127.0.0.1") : f["host"]) + ":0";
  so.unpublish_grace = absl::Milliseconds(300);
  auto server = formica::rpc::Server::Start(
      so, {{fund::v1::ClearingWorker::service_full_name(), &worker}}, registry.get());
  if (!server.ok()) {
    std::fprintf(stderr, "fund-clear: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("clearing worker serving on %s\n", (*server)->address().c_str());
  std::fflush(stdout);
  fund::WaitForTerminationSignal();
  (*server)->Shutdown();
  return 0;
}

int Run(std::map<std::string, std::string>& f) {
  if (f["trades"].empty() || f["work"].empty() || f["out"].empty()) return Usage();
  auto registry = Registry(f["registry"], "fund-clear");
  if (registry == nullptr) return 2;
  formica::rpc::ClientOptions co;
  co.app_name = "fund-clear";
  co.policies[fund::v1::ClearingWorker::service_full_name()] = "round_robin";
  co.eject_after_failures = 1;
  auto rpc = formica::rpc::Client::Create(co, registry.get());
  if (!rpc.ok()) return 1;
  fund::ClearingOptions o;
  o.trades_file = f["trades"];
  o.opening_file = f["opening"];
  o.work_dir = f["work"];
  o.out_dir = f["out"];
  if (!f["income"].empty()) o.income = std::atoll(f["income"].c_str());
  if (!f["yield-bp"].empty()) o.yield_bp = std::atoll(f["yield-bp"].c_str());
  if (!f["parallel"].empty()) o.parallel = std::max(1, std::atoi(f["parallel"].c_str()));
  o.check_online = f.count("check-online") > 0;
  o.zones = absl::StrSplit(f["zones"], ',', absl::SkipEmpty());
  o.progress = f.count("quiet") == 0;
  fund::ClearingMaster master(rpc->get());
  auto r = master.Run(o);
  if (!r.ok()) {
    std::fprintf(stderr, "fund-clear: %s\n", r.status().ToString().c_str());
    std::printf("not reconciled: %s\n", std::string(r.status().message()).c_str());
    std::fflush(stdout);
    return r.status().code() == absl::StatusCode::kInvalidArgument      ? 2
           : r.status().code() == absl::StatusCode::kFailedPrecondition ? 3
                                                                        : 1;
  }
  std::printf(
      "day %lld cleared in %.2fs: %lld users, %lld trades, opening %lld + purchased %lld - "
      "redeemed %lld + income %lld = closing %lld; reconciled; %s%s (%lld shard calls "
      "repeated)\n",
      static_cast<long long>(r->day), r->seconds, static_cast<long long>(r->users),
      static_cast<long long>(r->trades), static_cast<long long>(r->opening),
      static_cast<long long>(r->purchased), static_cast<long long>(r->redeemed),
      static_cast<long long>(r->income), static_cast<long long>(r->closing), r->output.c_str(),
      r->unchanged ? " unchanged (cleared before with the same result)" : " written",
      static_cast<long long>(r->retries));
  return 0;
}

int Export(std::map<std::string, std::string>& f) {
  if (f["out"].empty()) return Usage();
  auto registry = Registry(f["registry"], "fund-clear-export");
  if (registry == nullptr) return 2;
  formica::rpc::ClientOptions co;
  co.app_name = "fund-clear";
  auto rpc = formica::rpc::Client::Create(co, registry.get());
  if (!rpc.ok()) return 1;
  // One gateway, or with LDC zones each zone's (a client held to the zone).
  std::vector<std::string> zones = absl::StrSplit(f["zones"], ',', absl::SkipEmpty());
  fund::ZoneClients zone_clients(registry.get(), "fund-clear");
  std::vector<std::pair<std::string, formica::rpc::Client*>> gateways;
  if (zones.empty()) gateways.emplace_back("", rpc->get());
  for (const std::string& zone : zones) {
    auto c = zone_clients.For(zone);
    if (!c.ok()) return 1;
    gateways.emplace_back(" in zone " + zone, *c);
  }
  int64_t day = std::atoll(f["day"].c_str());
  formica::rpc::CallOptions call;
  call.timeout = absl::Seconds(120);
  if (f.count("cut-off") > 0) {
    std::string days;
    for (const auto& [where, gateway] : gateways) {
      fund::v1::CutOffReply reply;
      absl::Status st = gateway->CallWithStub<fund::v1::Gateway>(
          fund::v1::Gateway::service_full_name(), call,
          [&](fund::v1::Gateway::Stub& s, grpc::ClientContext* c) {
            return s.CutOff(c, fund::v1::CutOffRequest(), &reply);
          });
      if (!st.ok()) {
        std::fprintf(stderr, "fund-clear: cut-off%s: %s\n", where.c_str(), st.ToString().c_str());
        return 1;
      }
      absl::StrAppend(&days, days.empty() ? "" : ", ", "day ", reply.closed_day(), where);
      if (day > 0 && reply.closed_day() != day) {
        std::fprintf(stderr,
                     "fund-clear: cut-off: the zones' gateways closed different days (%s)\n",
                     days.c_str());
        return 1;
      }
      day = reply.closed_day();
    }
    std::printf("cut-off: day %lld closed, orders now go to day %lld\n",
                static_cast<long long>(day), static_cast<long long>(day + 1));
  }
  if (day <= 0) return Usage();
  fund::TradeFile file;
  file.day = day;
  fund::v1::TradesRequest req;
  req.set_day(day);
  call.idempotent = true;
  absl::Status st;
  for (const auto& [where, gateway] : gateways) {
    const size_t before = file.trades.size();
    st = gateway->CallWithStub<fund::v1::Gateway>(
        fund::v1::Gateway::service_full_name(), call,
        [&](fund::v1::Gateway::Stub& s, grpc::ClientContext* c) {
          file.trades.resize(before);
          auto reader = s.Trades(c, req);
          fund::v1::Trade t;
          while (reader->Read(&t)) {
            file.trades.push_back({absl::StrReplaceAll(t.order_id(), {{",", "_"}}),
                                   std::atoll(t.user_id().c_str()), t.kind() == fund::v1::PURCHASE,
                                   t.amount()});
          }
          return reader->Finish();
        });
    if (!st.ok()) {
      std::fprintf(stderr, "fund-clear: trades%s: %s\n", where.c_str(), st.ToString().c_str());
      return 1;
    }
  }
  // By user, then order id, as one gateway lists them.
  std::sort(file.trades.begin(), file.trades.end(),
            [](const fund::TradeRecord& a, const fund::TradeRecord& b) {
              return std::tie(a.user, a.order_id) < std::tie(b.user, b.order_id);
            });
  st = fund::WriteTradeFile(f["out"], file);
  if (!st.ok()) {
    std::fprintf(stderr, "fund-clear: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("exported %zu trades of day %lld to %s\n", file.trades.size(),
              static_cast<long long>(day), f["out"].c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fund::BlockTerminationSignals();
  // Mutual TLS when FORMICA_TLS_CA, FORMICA_TLS_CERT and FORMICA_TLS_KEY are set.
  if (absl::Status st = formica::UseTlsFromEnvironment(); !st.ok()) {
    std::fprintf(stderr, "fund-clear: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (argc < 2) return Usage();
  std::string command = argv[1];
  std::map<std::string, std::string> f;
  if (!fund::ParseFlags(
          argc, argv, 2,
          {"registry", "fund-data", "fund-dds", "databases", "nice", "host", "delay-ms", "trades",
           "opening", "work", "out", "income", "yield-bp", "parallel", "day", "zones"},
          {"check-online", "quiet", "cut-off"}, &f) ||
      f["registry"].empty()) {
    return Usage();
  }
  // Clearing must not take the CPU from online users: --nice lowers its priority.
  // --nice also puts its disk I/O in the lowest best-effort class.
  if (!f["nice"].empty()) {
    constexpr int kWhoProcess = 1, kClassBestEffort = 2, kClassShift = 13;
    if (::setpriority(PRIO_PROCESS, 0, std::atoi(f["nice"].c_str())) != 0 ||
        ::syscall(SYS_ioprio_set, kWhoProcess, 0, (kClassBestEffort << kClassShift) | 7) != 0) {
      std::fprintf(stderr, "fund-clear: --nice: %s\n", std::strerror(errno));
      return 2;
    }
  }
  if (command == "worker") return Worker(f);
  if (command == "run") return Run(f);
  if (command == "export") return Export(f);
  return Usage();
}
