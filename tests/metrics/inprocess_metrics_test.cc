// The metrics of libraries that run inside a user's process (dds), served
// on an rpc::Server's metrics page: a sharded data source on SQLite files
// routes, refuses and waits for connections, and the page an rpc::Server in
// the same process serves counts each, and passes promtool.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "fake_discovery.h"
#include "formica/dds/data_source.h"
#include "formica/rpc/server.h"
#include "formica/test/echo.grpc.pb.h"
#include "process.h"

namespace {

using formica::testing::TempDir;

// The value of `series` in `page`; -1 when absent.
double Sample(const std::string& page, const std::string& series) {
  size_t at = page.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  size_t start = at + series.size() + 2;
  double v = -1;
  if (!absl::SimpleAtod(page.substr(start, page.find('\n', start) - start), &v)) return -1;
  return v;
}

TEST(InProcessMetrics, AnRpcServersPageCountsTheDataSourcesStatementsRefusalsAndWaits) {
  TempDir dir;
  formica::dds::DataSourceConfig c;
  for (int i = 0; i < 2; ++i) {
    formica::dds::DatabaseConfig d;
    d.name = absl::StrCat("db", i);
    d.kind = formica::dds::DatabaseKind::kSqlite;
    d.target = dir.File(absl::StrCat("s", i, ".db"));
    d.pool = 1;
    c.databases.push_back(d);
  }
  c.sharded_tables = {{"accounts", "user_id"}};
  c.broadcast_tables = {"funds"};
  // Long enough that only the wait behind the transaction below times out,
  // however busy the machine.
  c.pool_wait = absl::Seconds(2);
  auto ds = formica::dds::ShardedDataSource::Open(std::move(c));
  ASSERT_TRUE(ds.ok()) << ds.status();
  auto run = [&](const std::string& sql) { return (*ds)->Execute(sql); };
  ASSERT_TRUE(run("CREATE TABLE accounts (user_id BIGINT PRIMARY KEY, balance BIGINT)").ok());
  ASSERT_TRUE(run("CREATE TABLE funds (id BIGINT PRIMARY KEY)").ok());
  ASSERT_TRUE(run("INSERT INTO accounts (user_id, balance) VALUES (101, 5)").ok());
  ASSERT_TRUE(run("SELECT balance FROM accounts WHERE user_id = 101").ok());
  ASSERT_TRUE(run("SELECT balance FROM accounts WHERE user_id = 101").ok());
  ASSERT_TRUE(run("SELECT count(*) FROM accounts").ok());
  ASSERT_TRUE(run("SELECT id FROM funds").ok());
  EXPECT_EQ(run("UPDATE accounts SET balance = 1").status().code(),
            absl::StatusCode::kInvalidArgument);
  {
    // The transaction holds the only connection of user 101's database (db0).
    auto tx = (*ds)->Begin(int64_t{101});
    ASSERT_TRUE(tx.ok()) << tx.status();
    EXPECT_EQ(run("SELECT balance FROM accounts WHERE user_id = 101").status().code(),
              absl::StatusCode::kResourceExhausted);
  }

  formica::rpc::testing::FakeDiscovery discovery;
  formica::test::Echo::Service echo;
  formica::rpc::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "127.0.0.1:0";
  auto server = formica::rpc::Server::Start(options, {{"formica.test.Echo", &echo}}, &discovery);
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client http("127.0.0.1", (*server)->metrics_port());
  httplib::Result res = http.Get("/metrics");
  ASSERT_TRUE(res && res->status == 200);
  const std::string& page = res->body;
  auto statements = [&](const char* kind, const char* route) {
    return Sample(page, absl::StrCat("formica_dds_statements_total{kind=\"", kind, "\",route=\"",
                                     route, "\"}"));
  };
  // accounts: a table per shard; funds: the broadcast table in each database.
  EXPECT_EQ(statements("ddl", "scatter"), 2) << page;
  EXPECT_EQ(statements("write", "single"), 1) << page;
  EXPECT_EQ(statements("read", "single"), 3) << page;  // the third one waited in vain
  EXPECT_EQ(statements("read", "scatter"), 1) << page;
  EXPECT_EQ(statements("read", "any"), 1) << page;
  EXPECT_EQ(Sample(page, "formica_dds_refused_total{code=\"INVALID_ARGUMENT\"}"), 1) << page;
  // Scatters wait for the one connection too, as the threads that run them
  // happen to meet.
  EXPECT_GE(Sample(page, "formica_dds_pool_waits_total{database=\"db0\"}"), 1) << page;
  EXPECT_EQ(Sample(page, "formica_dds_pool_wait_timeouts_total{database=\"db0\"}"), 1) << page;
  std::string path = dir.File("page.prom");
  std::ofstream(path) << page;
  FILE* p = popen(absl::StrCat("promtool check metrics < ", path, " 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string said;
  char buf[512];
  while (fgets(buf, sizeof buf, p) != nullptr) said += buf;
  EXPECT_EQ(pclose(p), 0) << said << page;
  (*server)->Shutdown();
}

}  // namespace
