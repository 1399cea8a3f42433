// A participant process for DTS tests and benchmarks: one bank's accounts in
// its own SQLite database, served as formica.test.Account (each call a try
// step) and formica.dts.v1.Participant (confirm and cancel), published to
// dsrd under NAME and NAME.dts. Prints "serving on HOST:PORT".
//   account_server --registry H:P --name NAME --db FILE [--accounts N]
//                  [--initial AMOUNT] [--listen H:P] [--metrics-listen H:P] [--fast-sync]
// The accounts table is seeded (ids "0".."N-1", AMOUNT each) when empty.
#include <grpcpp/grpcpp.h>
#include <sqlite3.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "formica/common/grpc_status.h"
#include "formica/common/tls.h"
#include "formica/dts/participant.h"
#include "formica/internal/daemon.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "formica/test/account.grpc.pb.h"

namespace {

using formica::dts::ActionCall;
using formica::dts::Participant;

// Runs one UPDATE with (amount, account) bound; FAILED_PRECONDITION when
// it changed no row.
absl::Status Update(sqlite3* db, const char* sql, int64_t amount, const std::string& account) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) != SQLITE_OK) {
    return absl::InternalError(sqlite3_errmsg(db));
  }
  sqlite3_bind_int64(stmt, 1, amount);
  sqlite3_bind_text(stmt, 2, account.c_str(), -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(stmt);
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return absl::InternalError(sqlite3_errmsg(db));
  if (sqlite3_changes(db) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("account ", account, " is unknown or short of ", amount));
  }
  return absl::OkStatus();
}

formica::test::Move Parse(const ActionCall& call) {
  formica::test::Move m;
  m.ParseFromString(call.payload);
  return m;
}

// On gRPC's callback API: a try joins the participant's next group commit
// and the answer leaves from the thread that ran it.
class AccountImpl final : public formica::test::Account::CallbackService {
 public:
  explicit AccountImpl(Participant* p) : p_(p) {}

  grpc::ServerUnaryReactor* Debit(grpc::CallbackServerContext* ctx, const formica::test::Move* m,
                                  formica::test::Moved*) override {
    return Try(ctx, "debit", m,
               "UPDATE accounts SET frozen = frozen + ?1 WHERE id = ?2 AND balance - frozen >= ?1");
  }
  grpc::ServerUnaryReactor* Credit(grpc::CallbackServerContext* ctx, const formica::test::Move* m,
                                   formica::test::Moved*) override {
    return Try(ctx, "credit", m, "UPDATE accounts SET incoming = incoming + ?1 WHERE id = ?2");
  }

 private:
  grpc::ServerUnaryReactor* Try(grpc::CallbackServerContext* ctx, const char* action,
                                const formica::test::Move* m, const char* sql) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    if (m->amount() <= 0) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "amount must be positive"));
      return reactor;
    }
    // The request lives until Finish: the body may read it.
    p_->TryAsync(
        ctx, action, m->SerializeAsString(),
        [m, sql](sqlite3* db) { return Update(db, sql, m->amount(), m->account()); },
        [reactor](absl::Status st) { reactor->Finish(formica::ToGrpcStatus(st)); });
    return reactor;
  }
  Participant* p_;
};

}  // namespace

int main(int argc, char** argv) {
  formica::InstallTerminationHandler();
  if (absl::Status st = formica::UseTlsFromEnvironment(); !st.ok()) {
    std::fprintf(stderr, "account_server: %s\n", st.ToString().c_str());
    return 2;
  }
  formica::registry::ClientOptions registry_options;
  registry_options.client_name = "account_server";
  registry_options.lease = absl::Seconds(2);
  formica::rpc::ServerOptions server_options;
  server_options.unpublish_grace = absl::Milliseconds(300);
  formica::dts::ParticipantOptions participant_options;
  std::string name;
  int accounts = 10;
  int64_t initial = 1000;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--fast-sync") {
      participant_options.durable = false;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "account_server: %s needs a value\n", flag.c_str());
      return 2;
    }
    std::string value = argv[++i];
    if (flag == "--registry") {
      registry_options.registries.push_back(value);
    } else if (flag == "--name") {
      name = value;
    } else if (flag == "--db") {
      participant_options.database = value;
    } else if (flag == "--accounts") {
      accounts = std::atoi(value.c_str());
    } else if (flag == "--initial") {
      initial = std::atoll(value.c_str());
    } else if (flag == "--listen") {
      server_options.listen = value;
    } else if (flag == "--metrics-listen") {
      server_options.metrics_listen = value;
    } else {
      std::fprintf(stderr, "account_server: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (name.empty() || participant_options.database.empty()) {
    std::fprintf(stderr, "account_server: --name and --db are required\n");
    return 2;
  }
  participant_options.name = name + ".dts";
  auto registry = formica::registry::Client::Create(registry_options);
  if (!registry.ok()) {
    std::fprintf(stderr, "account_server: %s\n", registry.status().ToString().c_str());
    return 2;
  }
  formica::rpc::ClientOptions client_options;
  client_options.app_name = name;
  auto rpc = formica::rpc::Client::Create(client_options, registry->get());
  auto participant = Participant::Open(participant_options, rpc->get());
  if (!participant.ok()) {
    std::fprintf(stderr, "account_server: %s\n", participant.status().ToString().c_str());
    return 1;
  }
  Participant* p = participant->get();
  absl::Status schema = p->Transaction([&](sqlite3* db) -> absl::Status {
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER "
                     "NOT NULL, frozen INTEGER NOT NULL DEFAULT 0, incoming INTEGER NOT NULL "
                     "DEFAULT 0)",
                     nullptr, nullptr, nullptr) != SQLITE_OK) {
      return absl::InternalError(sqlite3_errmsg(db));
    }
    for (int a = 0; a < accounts; ++a) {
      std::string sql = absl::StrCat("INSERT OR IGNORE INTO accounts (id, balance) VALUES ('", a,
                                     "', ", initial, ")");
      if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
        return absl::InternalError(sqlite3_errmsg(db));
      }
    }
    return absl::OkStatus();
  });
  if (!schema.ok()) {
    std::fprintf(stderr, "account_server: %s\n", schema.ToString().c_str());
    return 1;
  }
  p->Declare(
      "debit",
      [](sqlite3* db, const ActionCall& c) {
        auto m = Parse(c);
        return Update(
            db, "UPDATE accounts SET balance = balance - ?1, frozen = frozen - ?1 WHERE id = ?2",
            m.amount(), m.account());
      },
      [](sqlite3* db, const ActionCall& c) {
        auto m = Parse(c);
        return Update(db, "UPDATE accounts SET frozen = frozen - ?1 WHERE id = ?2", m.amount(),
                      m.account());
      });
  p->Declare(
      "credit",
      [](sqlite3* db, const ActionCall& c) {
        auto m = Parse(c);
        return Update(db,
                      "UPDATE accounts SET balance = balance + ?1, incoming = incoming - ?1 WHERE "
                      "id = ?2",
                      m.amount(), m.account());
      },
      [](sqlite3* db, const ActionCall& c) {
        auto m = Parse(c);
        return Update(db, "UPDATE accounts SET incoming = incoming - ?1 WHERE id = ?2", m.amount(),
                      m.account());
      });
  AccountImpl account(p);
  auto server = formica::rpc::Server::Start(
      server_options, {{name, &account}, {p->name(), p->service()}}, registry->get());
  if (!server.ok()) {
    std::fprintf(stderr, "account_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("serving on %s\n", (*server)->address().c_str());
  std::fflush(stdout);
  formica::WaitForTerminationSignal();
  (*server)->Shutdown();
  std::printf("stopped\n");
  return 0;
}
