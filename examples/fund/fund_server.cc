// fund-server: runs the fund's online services (docs/fund.md) in one
// process, each hosted by an rpc::Server published to DSR:
//   account  fund.v1.Account (+ its dts participant fund.account.dts)
//   fund     fund.v1.Fund    (+ fund.fund.dts)
//   gateway  fund.v1.Gateway (+ fund.gateway.dts; activities through dtsd, messages to dmsd)
//   ledger   fund.v1.Ledger  (consumes fund.orders into statements)
//   totals   fund.v1.FundTotals  (GZone only: the fund-wide totals, summed over the RZones)
//
//   fund-server --registry H:P [--services account,fund,gateway,ledger]
//               [--data DIR] [--databases N] [--dds FILE] [--users N] [--initial CENTS]
//               [--host H] [--zone Z [--ldc]] [--metrics-listen H:P] [--fail-rate P]
//
// --ldc (with --zone): run as zone Z of the LDC rules at dsrd (docs/fund.md,
// "Two zones"): calls routed to the user's zone, writes gated to the zone's
// shards, participants named per zone, the order-confirmed messages on the
// user's zone's dmsd (ldc::ZoneProducer::SendInActivity), a ledger reading
// its zone's dmsd in its own group and forwarding messages of users another
// zone owns now (ldc::ZoneHandler). `--services totals` runs only in the
// GZone (--zone naming the rules' gzone).
//
// Data: each service's DDS data source, by default N (--databases, default
// 2) SQLite files DIR/<service>-0.db, -1.db, ...; --dds FILE (a `dds:` YAML, "{service}" in the
// path replaced by the service's name) for anything else. --users N gives
// users 1..N an account with --initial cents (default 1000000) and an empty
// holding, keeping existing ones. Each service gets its own rpc::Server on
// a free port of --host; prints "<service> serving on H:P" for each and
// "fund-server ready" when all are up, and the counters on SIGINT/SIGTERM, then stops cleanly.
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "book.h"
#include "formica/common/tls.h"
#include "formica/ldc/messaging.h"
#include "formica/ldc/router.h"
#include "formica/ldc/rpc_routing.h"
#include "formica/ldc/zone_gate.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "gateway.h"
#include "ledger.h"
#include "services.h"
#include "store.h"
#include "totals.h"

namespace {

int Fail(const std::string& what, const absl::Status& st) {
  std::fprintf(stderr, "fund-server: %s: %s\n", what.c_str(), st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  fund::BlockTerminationSignals();
  // Mutual TLS when FORMICA_TLS_CA, FORMICA_TLS_CERT and FORMICA_TLS_KEY are set.
  if (absl::Status st = formica::UseTlsFromEnvironment(); !st.ok()) {
    std::fprintf(stderr, "fund-server: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  std::map<std::string, std::string> f = {{"services", "account,fund,gateway,ledger"},
                                          {"data", "."},
                                          {"users", "0"},
                                          {"initial", "1000000"},
                                          {"host", "127.0.0.1"},
                                          {"fail-rate", "0"},
                                          {"databases", "2"}};
  if (!fund::ParseFlags(argc, argv, 1,
                        {"registry", "services", "data", "dds", "users", "initial", "host", "zone",
                         "metrics-listen", "fail-rate", "databases"},
                        {"ldc"}, &f) ||
      f["registry"].empty()) {
    std::fprintf(stderr, "usage: fund-server --registry H:P [--services ...] (see docs/fund.md)\n");
    return 2;
  }
  std::set<std::string> wanted = absl::StrSplit(f["services"], ',');
  for (const std::string& s : wanted) {
    if (s != "account" && s != "fund" && s != "gateway" && s != "ledger" && s != "totals") {
      std::fprintf(stderr,
                   "fund-server: unknown service '%s' (account, fund, gateway, ledger, totals)\n",
                   s.c_str());
      return 2;
    }
  }
  const bool zoned = f.count("ldc") > 0;
  if (zoned && f["zone"].empty()) {
    std::fprintf(stderr, "fund-server: --ldc needs --zone (this process's LDC zone)\n");
    return 2;
  }
  if (wanted.count("totals") > 0 && !zoned) {
    std::fprintf(stderr,
                 "fund-server: the totals service runs in the GZone: --services totals needs "
                 "--zone <the gzone> --ldc\n");
    return 2;
  }
  // With zones, each zone's participants have their own names (dtsd calls
  // back the zone that holds the action).
  const std::string suffix = zoned ? "." + f["zone"] : "";
  const int64_t users = std::atoll(f["users"].c_str());
  const int64_t initial = std::atoll(f["initial"].c_str());
  const double fail_rate = std::atof(f["fail-rate"].c_str());
  const int databases = std::atoi(f["databases"].c_str());
  if (databases < 1 || databases > 100) {
    std::fprintf(stderr, "fund-server: --databases must be 1 to 100\n");
    return 2;
  }

  formica::registry::ClientOptions ro;
  ro.client_name = "fund-server";
  ro.lease = absl::Seconds(3);
  for (absl::string_view r : absl::StrSplit(f["registry"], ',')) ro.registries.emplace_back(r);
  auto registry = formica::registry::Client::Create(ro);
  if (!registry.ok()) return Fail("registry", registry.status());
  // LDC (docs/ldc.md): calls go to the user's zone and are checked again
  // on arrival, writes only touch this zone's shards.
  std::unique_ptr<formica::ldc::Router> router;
  std::unique_ptr<formica::ldc::RpcZoneRouting> routing;
  std::shared_ptr<formica::dds::WriteGate> gate;
  if (zoned) {
    formica::ldc::RouterOptions lo;
    lo.zone = f["zone"];
    lo.client_name = "fund-server-" + f["zone"];
    auto r = formica::ldc::Router::Start(registry->get(), lo);
    if (!r.ok()) return Fail("ldc", r.status());
    router = std::move(*r);
    if (absl::Status st = router->AwaitRules(absl::Seconds(30)); !st.ok()) return Fail("ldc", st);
    std::shared_ptr<const formica::ldc::RuleSet> rules = router->rules();
    const formica::ldc::Zone* here = rules->FindZone(f["zone"]);
    if (here == nullptr) {
      std::fprintf(stderr, "fund-server: zone '%s' is not in the LDC rules (version %llu)\n",
                   f["zone"].c_str(), static_cast<unsigned long long>(router->version()));
      return 2;
    }
    const bool global = here->kind == formica::ldc::ZoneKind::kGZone;
    for (const std::string& s : wanted) {
      if ((s == "totals") != global) {
        std::fprintf(stderr,
                     "fund-server: zone '%s' is %s: it hosts %s, not '%s' (docs/fund.md, \"Two "
                     "zones\")\n",
                     f["zone"].c_str(), global ? "the gzone" : "not the gzone",
                     global ? "the totals service only" : "the users' services", s.c_str());
        return 2;
      }
    }
    routing = std::make_unique<formica::ldc::RpcZoneRouting>(router.get());
    gate = std::make_shared<formica::ldc::ZoneWriteGate>(
        router.get(), formica::ldc::ZoneWriteGate::Options{absl::Seconds(5), true});
  }
  auto owns_shard = [&](int shard) {
    if (!zoned) return true;
    auto route = router->RouteUser(std::to_string(100 + shard));  // a user of that shard
    return route.ok() && route->local;
  };
  formica::rpc::ClientOptions co;
  co.app_name = "fund-server";
  co.zone = f["zone"];
  co.zone_routing = routing.get();
  co.default_timeout = absl::Seconds(5);
  auto rpc = formica::rpc::Client::Create(co, registry->get());
  if (!rpc.ok()) return Fail("rpc client", rpc.status());
  // With zones: clients held to one zone (the ledger's broker, the totals'
  // RZones) and producers sending to the user's zone's dmsd.
  std::unique_ptr<fund::ZoneClients> zone_clients;
  std::unique_ptr<formica::ldc::ZoneProducer> zone_producer, ledger_forward;
  if (zoned) zone_clients = std::make_unique<fund::ZoneClients>(registry->get(), "fund-server");

  std::map<std::string, std::unique_ptr<formica::dds::ShardedDataSource>> stores;
  auto store = [&](const std::string& service) -> absl::StatusOr<formica::dds::ShardedDataSource*> {
    std::string dds = absl::StrReplaceAll(f["dds"], {{"{service}", service}});
    std::map<std::string, std::string> sharded = {{"accounts", "user_id"},
                                                  {"holdings", "user_id"},
                                                  {"orders", "user_id"},
                                                  {"statements", "user_id"}};
    // The ledger writes inside ldc::ZoneHandler's write permit: a shard
    // fenced meanwhile fails its write at once (the message is retried after
    // the switch) rather than wait for a fence that waits for the permit.
    std::shared_ptr<formica::dds::WriteGate> g = gate;
    if (zoned && service == "ledger") {
      g = std::make_shared<formica::ldc::ZoneWriteGate>(
          router.get(), formica::ldc::ZoneWriteGate::Options{absl::ZeroDuration(), true});
    }
    auto ds = fund::OpenStore(service, f["data"], dds, sharded, {}, databases, g);
    if (!ds.ok()) return ds.status();
    return (stores[service] = std::move(*ds)).get();
  };

  // One rpc::Server per service (two dts participants cannot share one gRPC server).
  std::map<std::string, std::vector<formica::rpc::HostedService>> hosted;
  std::unique_ptr<fund::Book> balances, shares;
  std::unique_ptr<fund::AccountService> account;
  std::unique_ptr<fund::FundService> fund_service;
  std::unique_ptr<fund::GatewayService> gateway;
  std::unique_ptr<fund::LedgerService> ledger;
  std::unique_ptr<formica::dms::Producer> producer;
  auto open_book = [&](const std::string& service, fund::BookOptions o,
                       std::unique_ptr<fund::Book>* out) -> absl::Status {
    auto ds = store(service);
    if (!ds.ok()) return ds.status();
    auto book = fund::Book::Open(o, rpc->get(), *ds);
    if (!book.ok()) return book.status();
    *out = std::move(*book);
    if (users > 0) {
      absl::Time start = absl::Now();
      auto added = (*out)->Populate(users, service == "account" ? initial : 0, owns_shard);
      if (!added.ok()) return added.status();
      std::printf("%s: %lld users added (of %lld) in %.1fs\n", service.c_str(),
                  static_cast<long long>(*added), static_cast<long long>(users),
                  absl::ToDoubleSeconds(absl::Now() - start));
    }
    hosted[service].push_back({(*out)->participant()->name(), (*out)->participant()->service()});
    return absl::OkStatus();
  };
  if (wanted.count("account") > 0) {
    absl::Status st = open_book(
        "account",
        {"accounts", "balance", "balance", "fund.account.dts" + suffix, "debit", "credit"},
        &balances);
    if (!st.ok()) return Fail("account", st);
    account = std::make_unique<fund::AccountService>(balances.get(), fail_rate);
    hosted["account"].push_back({fund::v1::Account::service_full_name(), account.get()});
  }
  if (wanted.count("fund") > 0) {
    absl::Status st = open_book(
        "fund", {"holdings", "shares", "shares", "fund.fund.dts" + suffix, "redeem", "subscribe"},
        &shares);
    if (!st.ok()) return Fail("fund", st);
    fund_service = std::make_unique<fund::FundService>(shares.get(), fail_rate);
    hosted["fund"].push_back({fund::v1::Fund::service_full_name(), fund_service.get()});
  }
  if (wanted.count("gateway") > 0) {
    auto ds = store("gateway");
    if (!ds.ok()) return Fail("gateway", ds.status());
    formica::dms::ProducerOptions po;
    po.producer_group = "fund-gateway";
    auto p = formica::dms::Producer::Create(po, rpc->get());
    if (!p.ok()) return Fail("producer", p.status());
    producer = std::move(*p);
    auto g =
        fund::GatewayService::Open(rpc->get(), *ds, producer.get(), "fund.gateway.dts" + suffix);
    if (!g.ok()) return Fail("gateway", g.status());
    gateway = std::move(*g);
    if (zoned) {
      auto zp = formica::ldc::ZoneProducer::Create(router.get(), registry->get(), po);
      if (!zp.ok()) return Fail("producer", zp.status());
      zone_producer = std::move(*zp);
      gateway->set_message_sender(
          [zp = zone_producer.get()](const std::string& topic, formica::dms::OutgoingMessage m) {
            return zp->SendInActivity(topic, std::move(m));
          });
    }
    hosted["gateway"].push_back({fund::v1::Gateway::service_full_name(), gateway.get()});
    hosted["gateway"].push_back(
        {gateway->participant()->name(), gateway->participant()->service()});
  }
  if (wanted.count("ledger") > 0) {
    auto ds = store("ledger");
    if (!ds.ok()) return Fail("ledger", ds.status());
    // dmsd may not be known yet (a registry just started pushes after its warm-up).
    std::string group = "fund-ledger" + std::string(zoned ? "-" + f["zone"] : "");
    formica::rpc::Client* brokers = rpc->get();
    fund::LedgerService::HandlerWrap wrap;
    if (zoned) {
      auto here = zone_clients->For(f["zone"]);  // this zone's dmsd, no other
      if (!here.ok()) return Fail("ledger", here.status());
      brokers = *here;
      formica::dms::ProducerOptions po;
      po.producer_group = group + "-forward";
      auto forward = formica::ldc::ZoneProducer::Create(router.get(), registry->get(), po);
      if (!forward.ok()) return Fail("ledger", forward.status());
      ledger_forward = std::move(*forward);
      wrap = [r = router.get(), fw = ledger_forward.get()](formica::dms::MessageHandler h) {
        return formica::ldc::ZoneHandler(r, fw, std::move(h));
      };
    }
    auto start_ledger = [&] { return fund::LedgerService::Start(brokers, *ds, group, wrap); };
    auto l = start_ledger();
    for (absl::Time until = absl::Now() + absl::Seconds(60);
         !l.ok() && l.status().code() == absl::StatusCode::kUnavailable && absl::Now() < until;) {
      absl::SleepFor(absl::Milliseconds(500));
      l = start_ledger();
    }
    if (!l.ok()) return Fail("ledger", l.status());
    ledger = std::move(*l);
    hosted["ledger"].push_back({fund::v1::Ledger::service_full_name(), ledger.get()});
  }
  std::unique_ptr<fund::TotalsService> totals;
  if (wanted.count("totals") > 0) {
    totals = std::make_unique<fund::TotalsService>(router.get(), zone_clients.get());
    hosted["totals"].push_back({fund::v1::FundTotals::service_full_name(), totals.get()});
  }
  formica::rpc::ServerOptions so;
  so.listen = f["host"] + ":0";
  so.zone = f["zone"];
  so.zone_routing = routing.get();
  so.metrics_listen = f["metrics-listen"];
  so.unpublish_grace = absl::Milliseconds(300);
  so.drain_timeout = absl::Seconds(5);
  so.max_idle_threads = 64;
  std::vector<std::unique_ptr<formica::rpc::Server>> servers;
  for (const auto& [service, services] : hosted) {
    auto server = formica::rpc::Server::Start(so, services, registry->get());
    if (!server.ok()) return Fail(service + " server", server.status());
    std::printf("%s serving on %s\n", service.c_str(), (*server)->address().c_str());
    servers.push_back(std::move(*server));
    so.metrics_listen.clear();  // one metrics page per process
  }
  std::printf("fund-server ready (%s)\n", f["services"].c_str());
  std::fflush(stdout);

  fund::WaitForTerminationSignal();
  for (auto& server : servers) server->Shutdown();
  if (ledger != nullptr) ledger->Stop();
  if (gateway != nullptr) {
    const auto& c = gateway->counters();
    std::printf("gateway: %lld confirmed, %lld refused, %lld failed, %lld repeats answered\n",
                static_cast<long long>(c.confirmed.load()),
                static_cast<long long>(c.refused.load()), static_cast<long long>(c.failed.load()),
                static_cast<long long>(c.repeated.load()));
  }
  if (ledger != nullptr) {
    std::printf("ledger: %lld entries applied, %lld redeliveries ignored\n",
                static_cast<long long>(ledger->applied()),
                static_cast<long long>(ledger->duplicates()));
  }
  std::printf("stopped\n");
  std::fflush(stdout);
  return 0;
}
