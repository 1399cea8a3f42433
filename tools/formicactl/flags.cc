// formicactl: the usage text, the command line and the deadline every call gets.
#include "formica/common/tls.h"
#include "formicactl.h"
#include "traffic.h"

#include <chrono>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace formica::ctl {

namespace {

constexpr char kUsage[] =
    R"(usage: formicactl [--registry HOST:PORT] [--dts HOST:PORT] [--dms HOST:PORT]
                  [--tls-ca CA.pem --tls-cert CERT.pem --tls-key KEY.pem [--tls-crl CRL.pem]]
                  [--timeout SECONDS] [--output text|json] COMMAND

registry commands:
  registry ls                      services: version, instances, subscribers
  registry get SERVICE             each provider: address, zone, weight, tags, metadata
  registry sessions                client sessions: id, client, peer, lease, publications, identity
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

ldc commands (zones and who owns each user shard):
  ldc status                           zones, shard owners as ranges, the rules version,
                                       every client and the version it applied (laggards marked)
  ldc apply FILE [--expect-version N]  validate a rules file and publish it (N=0: first rules)
  ldc route USER                       the user's shard and owner zone
  ldc switch --shards 00-49 --to ZONE [--fence-timeout 10s] [--force] [--yes]
  ldc switch --zone ZONE --to ZONE ...
                                       fence the shards, wait until every client applied the
                                       fence (or roll back), then move them; --force moves even
                                       with clients lagging

dts commands (business activities at dtsd):
  dts ls [--state S,...] [--limit N]   newest first; default: unfinished ones
                                       S: ACTIVE COMMITTING ROLLING_BACK COMMITTED ROLLED_BACK
  dts show ID                          the activity and each action: state, attempts, last error
  dts stats [--watch [--limit N]]      counters since dtsd started; --watch: rates each
                                       second (N lines; default: until interrupted)
  dts retry ID [--yes]                 retry phase two of a decided activity now
  dts settle ID --reason TEXT [--yes]  mark its unfinished actions done by hand and finish it

dms commands (messages at dmsd):
  dms topics                           each topic's queues: broker group, its leader, first
                                       and end offset, bytes
  dms move-queue TOPIC QUEUE --to GROUP
                                       move a queue to another broker group (GROUP "default":
                                       the default group); run it again to finish one cut short
  dms create-topic NAME [--queues N]   N: the broker's default when left out
  dms lag GROUP [--topic T]            per queue: committed offset, end, messages not acked
  dms dlq GROUP [--topic T] [--limit N] [--replay [--yes]]
                                       dead letters; --replay delivers them to GROUP again
  dms half [--parked] [--limit N]      undecided transactional messages and their checks
  dms resume [ID] [--yes]              check parked half messages again (all, or ID)

traffic commands (a service's calls among its providers, through the registry):
  traffic view [SERVICE] [--by KEY,...] [--watch [--every 2s]]
                                       per group of providers (by --by, or the route's tag
                                       keys, or color): share, instances, healthy, calls,
                                       failed %, p99
  traffic set SERVICE ROUTE [--expect-version N]
                                       ROUTE: key=value:percent,... adding up to 100, each
                                       tag carried by a provider; compare-and-set
  traffic clear SERVICE [--expect-version N]   remove the route (calls go by weight)
  traffic stats SERVICE                each provider's served calls, failures, p50, p99
  traffic shift SERVICE --to KEY=VALUE [--step 10] [--every 30s] [--min-calls 20]
                [--max-failure-increase 1] [--max-p99-ratio 1.5] [--p99-slack-ms 5]
                [--analysis stats|prometheus=http://HOST:PORT] [--per-room KEY]
                                       move the calls to the target in steps, judging each
                                       (on the providers' Stats, or a Prometheus scraping
                                       them; --per-room room: within each room); restores
                                       the route when the target does worse
  traffic shift SERVICE                take over the shift recorded in the registry
  traffic pause|resume|abort SERVICE   control a shift from any terminal
  traffic status SERVICE               the shift's record

release commands (a new version rolled out group by group, see docs/release.md):
  release start [SERVICE] [--plan FILE] [--version V] [--deploy CMD] [--groups G,...]
                [--bake 30s] [--ready-timeout 2m] [--auto] [analysis flags as for shift]
                [--group NAME:bake=5m,min-calls=50,max-failure-increase=0,...]
                                       G: NAME:COUNT or NAME:KEY=VALUE; CMD gets {service}
                                       {group} {version} {instances} filled in; --group
                                       sets one group's own bake time and thresholds
  release status SERVICE               each group: instances, state, start and end
  release continue SERVICE             go on to the next group
  release rollback SERVICE             the previous version's traffic at once, then its deploy
  release resume SERVICE               take over a release whose controller died

audit [dsrd|dtsd|dmsd] [--limit N]   operator acts the daemons recorded (config writes,
                                     stop-push, session kills, retry, settle, topics,
                                     replay, resume): time, identity, arguments, result

--registry defaults to $FORMICA_REGISTRY or 127.0.0.1:7370;
--dts to $FORMICA_DTS or 127.0.0.1:7380; --dms to $FORMICA_DMS or
127.0.0.1:7390. --tls-ca, --tls-cert and --tls-key (given together; default
$FORMICA_TLS_CA, $FORMICA_TLS_CERT, $FORMICA_TLS_KEY) make every call over
mutual TLS with those files (docs/security.md); --tls-crl (default
$FORMICA_TLS_CRL) refuses servers whose certificates it revokes. retry, settle, replay and resume ask for confirmation
unless --yes is given. --output json (or -o json) prints each answer as
one JSON document on stdout (proto3's JSON mapping, field names as in the
.proto); errors stay text on stderr.
)";

}  // namespace

int Usage(const std::string& why) {
  if (!why.empty()) {
    std::fprintf(stderr, "formicactl: %s\n", why.c_str());
  }
  std::fputs(kUsage, stderr);
  return 2;
}

// The deadline every call gets.
std::unique_ptr<grpc::ClientContext> CallContext(const Flags& flags) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(flags.timeout_s));
  return ctx;
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
  flags->tls_ca = env("FORMICA_TLS_CA", "");
  flags->tls_cert = env("FORMICA_TLS_CERT", "");
  flags->tls_key = env("FORMICA_TLS_KEY", "");
  flags->tls_crl = env("FORMICA_TLS_CRL", "");
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
    std::string* text = a == "--registry"   ? &flags->registry
                        : a == "--dts"      ? &flags->dts
                        : a == "--dms"      ? &flags->dms
                        : a == "--topic"    ? &flags->topic
                        : a == "--state"    ? &flags->states
                        : a == "--reason"   ? &flags->reason
                        : a == "--shards"   ? &flags->shards
                        : a == "--to"       ? &flags->to
                        : a == "--zone"     ? &flags->zone
                        : a == "--tls-ca"   ? &flags->tls_ca
                        : a == "--tls-cert" ? &flags->tls_cert
                        : a == "--tls-key"  ? &flags->tls_key
                        : a == "--tls-crl"  ? &flags->tls_crl
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
    } else if (a == "--to" || a == "--by" || a == "--plan" || a == "--version" || a == "--deploy" ||
               a == "--groups") {
      auto v = value(a.c_str());
      if (!v) return 2;
      (a == "--to"        ? flags->to
       : a == "--by"      ? flags->by
       : a == "--plan"    ? flags->plan
       : a == "--version" ? flags->version
       : a == "--deploy"  ? flags->deploy
                          : flags->groups) = *v;
    } else if (a == "--bake" || a == "--ready-timeout") {
      auto v = value(a.c_str());
      absl::Duration d;
      if (!v || !absl::ParseDuration(*v, &d) || d < absl::ZeroDuration()) {
        return Usage(absl::StrCat(a, " wants a duration (e.g. 30s)"));
      }
      (a == "--bake" ? flags->bake_ms : flags->ready_timeout_ms) = absl::ToInt64Milliseconds(d);
    } else if (a == "--per-room") {
      auto v = value("--per-room");
      if (!v) return 2;
      if (v->empty() || v->find_first_of("=,: ") != std::string::npos) {
        return Usage(
            absl::StrCat("--per-room wants a tag key (e.g. room, or zone), not '", *v, "'"));
      }
      flags->per_room = *v;
    } else if (a == "--group") {
      auto v = value("--group");
      if (!v) return 2;
      flags->group_settings.push_back(*v);
    } else if (a == "--analysis") {
      auto v = value("--analysis");
      if (!v) return 2;
      flags->analysis = *v == "stats" ? "" : *v;
      if (!CheckAnalysisSource(flags->analysis).ok()) {
        return Usage(
            absl::StrCat("--analysis wants stats or prometheus=http://HOST:PORT, not '", *v, "'"));
      }
    } else if (a == "--auto") {
      flags->auto_continue = true;
    } else if (a == "--step") {
      auto v = value("--step");
      if (!v || !absl::SimpleAtoi(*v, &flags->step_percent) || flags->step_percent <= 0 ||
          flags->step_percent > 100) {
        return Usage("--step wants a percent from 1 to 100");
      }
    } else if (a == "--every") {
      auto v = value("--every");
      absl::Duration d;
      if (!v || !absl::ParseDuration(*v, &d) || d < absl::Milliseconds(100)) {
        return Usage("--every wants a duration of at least 100ms (e.g. 30s)");
      }
      flags->every_ms = absl::ToInt64Milliseconds(d);
      flags->every_given = true;
    } else if (a == "--max-failure-increase" || a == "--max-p99-ratio" || a == "--p99-slack-ms") {
      auto v = value(a.c_str());
      double x = 0;
      if (!v || !absl::SimpleAtod(*v, &x) || x < 0) {
        return Usage(absl::StrCat(a, " wants a number of at least 0"));
      }
      flags->thresholds_given = true;
      (a == "--max-failure-increase" ? flags->max_failure_increase
       : a == "--max-p99-ratio"      ? flags->max_p99_ratio
                                     : flags->p99_slack_ms) = x;
    } else if (a == "--min-calls") {
      auto v = value("--min-calls");
      if (!v || !absl::SimpleAtoi(*v, &flags->min_calls) || flags->min_calls < 1) {
        return Usage("--min-calls wants a positive number");
      }
      flags->thresholds_given = true;
    } else if (a == "--watch") {
      flags->watch = true;
    } else if (a == "--fence-timeout") {
      auto v = value("--fence-timeout");
      if (!v || !absl::ParseDuration(*v, &flags->fence_timeout) ||
          flags->fence_timeout <= absl::ZeroDuration()) {
        return Usage("--fence-timeout wants a duration such as 10s or 500ms");
      }
    } else if (a == "--force") {
      flags->force = true;
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
  if (!flags->tls_ca.empty() || !flags->tls_cert.empty() || !flags->tls_key.empty()) {
    if (flags->tls_ca.empty() || flags->tls_cert.empty() || flags->tls_key.empty()) {
      return Usage("--tls-ca, --tls-cert and --tls-key are given together");
    }
    TlsOptions tls{flags->tls_ca, flags->tls_cert, flags->tls_key};
    tls.crl_file = flags->tls_crl;
    absl::Status st = UseTls(tls);
    if (!st.ok()) {
      std::fprintf(stderr, "formicactl: %s\n", std::string(st.message()).c_str());
      return 2;
    }
  }
  return std::nullopt;
}

}  // namespace formica::ctl
