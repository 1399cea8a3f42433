#include "dds_metrics.h"

#include <atomic>
#include <map>

#include "absl/synchronization/mutex.h"
#include "formica/internal/process_metrics.h"

namespace formica::dds {
namespace {

// route: single (one physical table), scatter (several), any (a broadcast
// table's read: any one database).
constexpr const char* kRoutes[] = {"single", "scatter", "any"};
constexpr const char* kKinds[] = {"read", "write", "ddl"};

struct Counters {
  std::atomic<uint64_t> statements[3][3] = {};  // [kind][route]
  absl::Mutex mu;
  std::map<std::string, uint64_t> refused ABSL_GUARDED_BY(mu);        // by status code name
  std::map<std::string, uint64_t> waits ABSL_GUARDED_BY(mu);          // by database
  std::map<std::string, uint64_t> wait_timeouts ABSL_GUARDED_BY(mu);  // by database

  void Write(PrometheusText& out) {
    out.Family("formica_dds_statements_total", "counter",
               "Statements the data source routed, by kind (read, write, ddl) and route (single: "
               "one physical table; scatter: several; any: a broadcast table's read).");
    for (int k = 0; k < 3; ++k) {
      for (int r = 0; r < 3; ++r) {
        out.Sample("formica_dds_statements_total", {{"kind", kKinds[k]}, {"route", kRoutes[r]}},
                   static_cast<double>(statements[k][r].load(std::memory_order_relaxed)));
      }
    }
    absl::MutexLock lock(&mu);
    out.Family("formica_dds_refused_total", "counter",
               "Statements the data source refused before running them, by status code (e.g. "
               "INVALID_ARGUMENT: an UPDATE without the shard key).");
    for (const auto& [code, n] : refused) {
      out.Sample("formica_dds_refused_total", {{"code", code}}, static_cast<double>(n));
    }
    out.Family("formica_dds_pool_waits_total", "counter",
               "Times a statement waited for a pooled connection of a database (all busy).");
    for (const auto& [db, n] : waits) {
      out.Sample("formica_dds_pool_waits_total", {{"database", db}}, static_cast<double>(n));
    }
    out.Family("formica_dds_pool_wait_timeouts_total", "counter",
               "Waits that ended without a connection (dds.pool_wait passed).");
    for (const auto& [db, n] : wait_timeouts) {
      out.Sample("formica_dds_pool_wait_timeouts_total", {{"database", db}},
                 static_cast<double>(n));
    }
  }
};

Counters& Get() {
  static Counters* counters = [] {
    auto* c = new Counters();
    AddProcessMetricsSource([c](PrometheusText& out) { c->Write(out); });
    return c;
  }();
  return *counters;
}

}  // namespace

void CountStatement(const Routing* routing, const absl::Status& refusal) {
  Counters& c = Get();
  if (routing == nullptr) {
    std::string code = absl::StatusCodeToString(refusal.code());
    for (char& ch : code) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    absl::MutexLock lock(&c.mu);
    ++c.refused[code];
    return;
  }
  int kind = static_cast<int>(routing->kind);
  int route = routing->any_database ? 2 : routing->statements.size() == 1 ? 0 : 1;
  c.statements[kind][route].fetch_add(1, std::memory_order_relaxed);
}

void CountPoolWait(const std::string& database, bool timed_out) {
  Counters& c = Get();
  absl::MutexLock lock(&c.mu);
  ++c.waits[database];
  if (timed_out) ++c.wait_timeouts[database];
}

}  // namespace formica::dds
