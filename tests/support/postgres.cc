#include "postgres.h"

#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace formica::testing {
namespace {

// The directory holding initdb and postgres (Debian: /usr/lib/postgresql/N/bin).
std::string BinDir() {
  std::error_code ec;
  std::string best;
  for (const auto& e : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    std::string bin = e.path().string() + "/bin";
    if (std::filesystem::exists(bin + "/postgres") && bin > best) best = bin;
  }
  return best;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() {
  std::string bin = BinDir();
  if (bin.empty()) {
    return absl::FailedPreconditionError(
        "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres); run ./formica setup, "
        "which installs the postgresql package");
  }
  std::unique_ptr<PostgresServer> pg(new PostgresServer());
  // PostgreSQL refuses to run as root: then it runs as the package's user.
  std::string user;
  if (geteuid() == 0) {
    user = "postgres";
    struct passwd* pw = getpwnam(user.c_str());
    if (pw == nullptr) return absl::FailedPreconditionError("no 'postgres' user to run PostgreSQL");
    if (chown(pg->dir_.path().c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return absl::InternalError("cannot hand the test directory to the postgres user");
    }
  }
  std::string data = pg->dir_.File("data");
  auto initdb = Subprocess::Start({bin + "/initdb", "-D", data, "-U", "formica", "--auth=trust",
                                   "--no-locale", "-E", "UTF8", "--no-sync"},
                                  pg->dir_.File("initdb.log"), user);
  if (!initdb.ok()) return initdb.status();
  if (int rc = (*initdb)->Wait(absl::Seconds(120)); rc != 0) {
    return absl::InternalError(absl::StrCat("initdb exited with ", rc, ": ", (*initdb)->Output()));
  }
  for (int attempt = 0; attempt < 5; ++attempt) {
    pg->port_ = PickFreePort();
    auto server = Subprocess::Start(
        {bin + "/postgres", "-D", data, "-p", std::to_string(pg->port_), "-k", pg->dir_.path(),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB"},
        pg->dir_.File("postgres.log"), user);
    if (!server.ok()) return server.status();
    if ((*server)->WaitForOutput("ready to accept connections", absl::Seconds(60))) {
      pg->server_ = *std::move(server);
      return pg;
    }
    if ((*server)->running()) {
      return absl::InternalError(absl::StrCat("PostgreSQL did not start: ", (*server)->Output()));
    }
  }
  return absl::InternalError("PostgreSQL did not start on any of 5 ports");
}

PostgresServer::~PostgresServer() {
  if (server_ != nullptr && server_->running()) {
    server_->Signal(SIGQUIT);  // immediate shutdown: the data is thrown away
    if (server_->Wait(absl::Seconds(10)) < 0) server_->Kill();
  }
}

std::string PostgresServer::Dsn(const std::string& name) const {
  return absl::StrCat("host=127.0.0.1 port=", port_, " user=formica dbname=", name);
}

absl::Status PostgresServer::CreateDatabase(const std::string& name) {
  PGconn* c = PQconnectdb(Dsn("postgres").c_str());
  absl::Status st;
  if (PQstatus(c) != CONNECTION_OK) {
    st = absl::UnavailableError(PQerrorMessage(c));
  } else {
    PGresult* r = PQexec(c, absl::StrCat("CREATE DATABASE ", name).c_str());
    if (PQresultStatus(r) != PGRES_COMMAND_OK) st = absl::InternalError(PQresultErrorMessage(r));
    PQclear(r);
  }
  PQfinish(c);
  return st;
}

}  // namespace formica::testing
