// PostgreSQL behind DDS, through libpq: text parameters, text results
// turned into values by the column's type.
#include <libpq-fe.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "backend.h"

namespace formica::dds {
namespace {

// Type oids from PostgreSQL's pg_type.
constexpr Oid kBool = 16, kInt8 = 20, kInt2 = 21, kInt4 = 23, kOid = 26, kFloat4 = 700,
              kFloat8 = 701, kNumeric = 1700;

Value Convert(Oid type, const char* text, int len) {
  std::string s(text, len);
  switch (type) {
    case kBool:
      return int64_t{s == "t" ? 1 : 0};
    case kInt2:
    case kInt4:
    case kInt8:
    case kOid: {
      int64_t v;
      if (absl::SimpleAtoi(s, &v)) return v;
      return s;
    }
    case kNumeric:
      return NumericValue(s);
    case kFloat4:
    case kFloat8: {
      double d;
      if (absl::SimpleAtod(s, &d)) return d;
      return s;
    }
    default:
      return s;
  }
}

}  // namespace

Value NumericValue(const std::string& s) {
  int64_t v;
  if (s.find_first_of(".eEN") == std::string::npos && absl::SimpleAtoi(s, &v)) return v;
  double d;
  if (absl::SimpleAtod(s, &d)) return d;
  return s;
}

namespace {

constexpr Oid kText = 25, kName = 19, kBpchar = 1042, kVarchar = 1043;

// Which of $1..$n the statement uses. A statement rewritten for a shard may
// no longer use some (a LIMIT $1 made a constant); PostgreSQL is told those
// are text so that it need not infer a type for them.
std::vector<bool> UsedParams(const std::string& sql, size_t n) {
  std::vector<bool> used(n, false);
  bool quoted = false;
  for (size_t i = 0; i < sql.size(); ++i) {
    char c = sql[i];
    if (c == '\'') quoted = !quoted;
    if (quoted || c != '$') continue;
    size_t k = 0, j = i + 1;
    while (j < sql.size() && sql[j] >= '0' && sql[j] <= '9') k = k * 10 + (sql[j++] - '0');
    if (j > i + 1 && k >= 1 && k <= n) used[k - 1] = true;
  }
  return used;
}

class PostgresConnection : public Connection {
 public:
  PostgresConnection(std::string name, PGconn* conn) : name_(std::move(name)), conn_(conn) {}
  ~PostgresConnection() override { PQfinish(conn_); }

  absl::StatusOr<ResultSet> Execute(const std::string& sql, absl::Span<const Value> params,
                                    uint64_t /*id*/,
                                    std::vector<std::string>* collations) override {
    std::vector<std::string> text(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    for (size_t i = 0; i < params.size(); ++i) {
      const Value& v = params[i];
      if (v.index() == 0) continue;
      if (v.index() == 2) {
        text[i] = absl::StrFormat("%.17g", std::get<double>(v));
      } else {
        text[i] = ToString(v);
      }
      values[i] = text[i].c_str();
    }
    std::vector<bool> used = UsedParams(sql, params.size());
    std::vector<Oid> types(params.size(), 0);
    for (size_t i = 0; i < params.size(); ++i) {
      if (!used[i]) types[i] = kText;
    }
    PGresult* r = PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), types.data(),
                               values.data(), nullptr, nullptr, 0);
    absl::StatusOr<ResultSet> out = Read(r);
    if (out.ok() && collations != nullptr) {
      collations->clear();
      for (int c = 0; c < PQnfields(r); ++c) collations->push_back(HowTypeCompares(PQftype(r, c)));
    }
    PQclear(r);
    return out;
  }

  absl::Status Begin() override { return Simple("BEGIN"); }
  absl::Status Commit() override {
    // After an error PostgreSQL answers COMMIT with ROLLBACK: not a success.
    PGresult* r = PQexec(conn_, "COMMIT");
    absl::Status st = Read(r).status();
    if (st.ok() && std::string(PQcmdStatus(r)) != "COMMIT") {
      st = absl::AbortedError(absl::StrCat("database ", name_,
                                           ": the transaction was rolled back after an error in "
                                           "it; nothing of it was kept"));
    }
    PQclear(r);
    return st;
  }
  absl::Status Rollback() override { return Simple("ROLLBACK"); }
  bool broken() const override {
    return PQstatus(conn_) != CONNECTION_OK || PQtransactionStatus(conn_) != PQTRANS_IDLE;
  }
  const std::string& default_collation() const override { return default_collation_; }

  // Asks the database for its default collation: the libc locale, or the
  // provider's name when another provider (ICU, builtin) is the default.
  // Left "" when it cannot be told: text is then merged by no default.
  void LearnDefaultCollation() {
    PGresult* r = PQexec(conn_,
                         "SELECT datlocprovider::text, datcollate::text FROM pg_database "
                         "WHERE datname = current_database()");
    const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state != nullptr && std::string(state) == "42703") {  // before PostgreSQL 15: libc only
      PQclear(r);
      r = PQexec(conn_,
                 "SELECT 'c', datcollate::text FROM pg_database WHERE datname = "
                 "current_database()");
    }
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
      std::string provider = PQgetvalue(r, 0, 0);
      if (provider == "c") {
        default_collation_ = PQgetvalue(r, 0, 1);
      } else if (provider == "i") {
        default_collation_ = "icu";
      } else if (provider == "b") {
        default_collation_ = "builtin";
      } else {
        default_collation_ = absl::StrCat("provider ", provider);
      }
    }
    PQclear(r);
  }

 private:
  absl::Status Simple(const char* sql) {  // BEGIN, COMMIT, ROLLBACK
    PGresult* r = PQexec(conn_, sql);
    absl::Status st = Read(r).status();
    PQclear(r);
    return st;
  }

  absl::StatusOr<ResultSet> Read(PGresult* r) {
    ExecStatusType status = r != nullptr ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (status == PGRES_COMMAND_OK) {
      ResultSet out;
      absl::SimpleAtoi(PQcmdTuples(r), &out.rows_affected);
      return out;
    }
    if (status == PGRES_TUPLES_OK) {
      ResultSet out;
      int n = PQnfields(r), rows = PQntuples(r);
      for (int c = 0; c < n; ++c) out.columns.emplace_back(PQfname(r, c));
      out.rows.reserve(rows);
      for (int i = 0; i < rows; ++i) {
        std::vector<Value>& row = out.rows.emplace_back();
        row.reserve(n);
        for (int c = 0; c < n; ++c) {
          if (PQgetisnull(r, i, c)) {
            row.emplace_back();
          } else {
            row.push_back(Convert(PQftype(r, c), PQgetvalue(r, i, c), PQgetlength(r, i, c)));
          }
        }
      }
      absl::SimpleAtoi(PQcmdTuples(r), &out.rows_affected);  // INSERT ... RETURNING
      return out;
    }
    std::string msg(absl::StripTrailingAsciiWhitespace(r != nullptr ? PQresultErrorMessage(r)
                                                                    : PQerrorMessage(conn_)));
    const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    std::string sqlstate = state != nullptr ? state : "";
    std::string text = absl::StrCat("database ", name_, ": ", msg);
    if (PQstatus(conn_) != CONNECTION_OK || sqlstate.rfind("08", 0) == 0) {
      return absl::UnavailableError(text);
    }
    if (sqlstate.rfind("23", 0) == 0) return absl::FailedPreconditionError(text);
    if (sqlstate == "40001" || sqlstate == "40P01") return absl::AbortedError(text);
    if (sqlstate.rfind("42", 0) == 0 || sqlstate.rfind("22", 0) == 0) {
      return absl::InvalidArgumentError(text);
    }
    return absl::InternalError(text);
  }

  // See Connection::Execute; asked of the catalog once per type.
  const std::string& HowTypeCompares(Oid type) {
    auto it = type_compares_.find(type);
    if (it != type_compares_.end()) return it->second;
    std::string how;
    if (type == kText || type == kVarchar || type == kBpchar || type == kName) {
      how = "text";
    } else {
      std::string query = absl::StrCat(
          "SELECT typcollation <> 0, format_type(oid, NULL) FROM pg_type WHERE oid = ", type);
      PGresult* r = PQexec(conn_, query.c_str());
      if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        how = absl::StrCat("type ", type, " (unknown)");
      } else if (std::string(PQgetvalue(r, 0, 0)) == "t") {
        how = absl::StrCat("type ", PQgetvalue(r, 0, 1));
      }
      PQclear(r);
    }
    return type_compares_.emplace(type, std::move(how)).first->second;
  }

  const std::string name_;
  PGconn* const conn_;
  std::string default_collation_;
  absl::flat_hash_map<Oid, std::string> type_compares_;
};

class PostgresBackend : public Backend {
 public:
  absl::StatusOr<std::unique_ptr<Connection>> Connect(const std::string& name,
                                                      const std::string& target,
                                                      bool read_only) override {
    PGconn* conn = PQconnectdb(target.c_str());
    if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
      std::string msg(absl::StripTrailingAsciiWhitespace(conn != nullptr ? PQerrorMessage(conn)
                                                                         : "out of memory"));
      PQfinish(conn);
      return absl::UnavailableError(
          absl::StrCat("database ", name, ": cannot connect to PostgreSQL: ", msg));
    }
    auto c = std::make_unique<PostgresConnection>(name, conn);
    c->LearnDefaultCollation();
    if (read_only) {
      PGresult* r = PQexec(conn, "SET default_transaction_read_only = on");
      bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
      PQclear(r);
      if (!ok) {
        return absl::UnavailableError(
            absl::StrCat("database ", name, ": cannot make a read-only session"));
      }
    }
    return std::unique_ptr<Connection>(std::move(c));
  }
  bool nulls_largest() const override { return true; }
};

}  // namespace

std::unique_ptr<Backend> NewPostgresBackend() { return std::make_unique<PostgresBackend>(); }

}  // namespace formica::dds
