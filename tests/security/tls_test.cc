// Mutual TLS end to end (docs/security.md): real dsrd, dtsd and dmsd with a
// `tls` section, providers, participants and initiators as processes with
// FORMICA_TLS_*, formicactl with --tls-*, certificates made by
// deploy/certs.sh. Only a certificate of the trusted CA, valid and naming
// the host dialled, gets through; a refusal is logged naming it.
#include <grpcpp/grpcpp.h>
#include <sqlite3.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "etcd.h"
#include "formica/common/tls.h"
#include "formica/dms/consumer.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/internal/credentials.h"
#include "formica/registry/client.h"
#include "formica/registry/v1/registry.grpc.pb.h"
#include "formica/rpc/client.h"
#include "formica/test/echo.grpc.pb.h"
#include "gtest/gtest.h"
#include "process.h"
#include "tls_fixture.h"

namespace formica {
namespace {

using testing::BinaryPath;
using testing::DsrdProcess;
using testing::Subprocess;

int64_t SumBalances(const std::string& db_path) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* s = nullptr;
  int64_t total = -1;
  if (sqlite3_prepare_v2(db, "SELECT SUM(balance), SUM(frozen) FROM accounts", -1, &s, nullptr) ==
          SQLITE_OK &&
      sqlite3_step(s) == SQLITE_ROW) {
    total = sqlite3_column_int64(s, 0);
    EXPECT_EQ(sqlite3_column_int64(s, 1), 0) << db_path << " still holds frozen money";
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return total;
}

// Every kind of connection over mutual TLS: dsrd, dtsd and dmsd serving;
// participants, an initiator and this process as their clients; dtsd
// calling the participants back; formicactl. Money adds up and every
// message sent is consumed.
TEST_F(TlsTest, TheWholeSuiteRunsOverMutualTls) {
  StartDsrd();
  int dtsd_port = 0, dmsd_port = 0;
  auto dtsd = StartDaemon("dts/dtsd", "dtsd", {"--data-dir", dir_.File("dtsd")}, &dtsd_port);
  auto dmsd = StartDaemon("dms/dmsd", "dmsd", {"--data-dir", dir_.File("dmsd")}, &dmsd_port);
  ASSERT_TRUE(dtsd && dmsd);

  std::vector<std::unique_ptr<Subprocess>> banks;
  for (const auto& [bank, service] : std::vector<std::pair<std::string, std::string>>{
           {"bank-a", "bank.a"}, {"bank-b", "bank.b"}}) {
    auto p = Subprocess::Start(
        WithTls(bank, {BinaryPath("tests/dts/account_server"), "--registry", dsrd_->address(),
                       "--name", service, "--db", dir_.File(bank + ".db"), "--accounts", "10",
                       "--initial", "1000"}),
        dir_.File(bank + ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE((*p)->WaitForOutput("serving on", absl::Seconds(20))) << (*p)->Output();
    banks.push_back(std::move(*p));
  }
  auto transfer = Subprocess::Start(
      WithTls("transfer", {BinaryPath("tests/dts/transfer_client"), "--registry", dsrd_->address(),
                           "--threads", "4", "--accounts", "10"}),
      dir_.File("transfer.log"));
  ASSERT_TRUE(transfer.ok());
  for (int i = 0; i < 300 && (*transfer)->CountInOutput("committed ") < 50; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  (*transfer)->Terminate();
  size_t committed = (*transfer)->CountInOutput("committed ");
  ASSERT_GE(committed, 50u) << (*transfer)->Output() << banks[0]->Output() << dtsd->Output();

  // The operator sees who holds each session, by the identity in its certificate.
  auto [code, sessions] = Ctl("operator", {"registry", "sessions"});
  ASSERT_EQ(code, 0) << sessions;
  EXPECT_NE(sessions.find("spiffe://formica.local/bank-a"), std::string::npos) << sessions;
  EXPECT_NE(sessions.find("spiffe://formica.local/bank-b"), std::string::npos) << sessions;

  // dtsd finishes every activity over TLS: nothing unfinished, money adds up.
  std::string unfinished;
  for (int i = 0; i < 200; ++i) {
    auto [c, out] =
        RunToEnd({BinaryPath("tools/formicactl"), "--dts", absl::StrCat("127.0.0.1:", dtsd_port),
                  "--tls-ca", certs_ + "/ca.pem", "--tls-cert", certs_ + "/operator.pem",
                  "--tls-key", certs_ + "/operator.key", "dts", "ls"},
                 dir_.File(absl::StrCat("dts-ls", i, ".log")));
    ASSERT_EQ(c, 0) << out;
    unfinished = out;
    if (out.find("bank.Transfer") == std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(unfinished.find("bank.Transfer"), std::string::npos) << unfinished;
  for (auto& b : banks) b->Terminate();
  // Both daemons refuse a client without a certificate.
  for (const std::vector<std::string>& plain :
       {std::vector<std::string>{"--dts", absl::StrCat("127.0.0.1:", dtsd_port), "dts", "ls"},
        std::vector<std::string>{"--dms", absl::StrCat("127.0.0.1:", dmsd_port), "dms",
                                 "topics"}}) {
    std::vector<std::string> argv = {BinaryPath("tools/formicactl")};
    argv.insert(argv.end(), plain.begin(), plain.end());
    auto [c, out] = RunToEnd(argv, dir_.File(absl::StrCat("plain", ++runs_, ".log")));
    EXPECT_NE(c, 0) << plain[1] << " answered a client without a certificate: " << out;
  }
  EXPECT_EQ(SumBalances(dir_.File("bank-a.db")) + SumBalances(dir_.File("bank-b.db")), 20 * 1000);

  // Messages through dmsd, this process as producer and consumer.
  UseTlsAs("tester");
  auto reg = NewRegistry("tls-test");
  ASSERT_NE(reg, nullptr);
  rpc::ClientOptions co_rpc;
  co_rpc.app_name = "tls-test";
  auto rpc = rpc::Client::Create(co_rpc, reg.get());
  ASSERT_TRUE(rpc.ok()) << rpc.status();
  {
    auto broker = dms::v1::Broker::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", dmsd_port), ChannelCredentials()));
    grpc::ClientContext ctx;
    dms::v1::CreateTopicRequest req;
    req.set_name("payments");
    req.set_queues(2);
    dms::v1::TopicInfo info;
    grpc::Status st = broker->CreateTopic(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  dms::ProducerOptions po;
  po.producer_group = "tls-test";
  auto producer = dms::Producer::Create(po, rpc->get());
  ASSERT_TRUE(producer.ok()) << producer.status();
  constexpr int kMessages = 20;
  for (int i = 0; i < kMessages; ++i) {
    dms::OutgoingMessage m;
    m.body = absl::StrCat("payment ", i);
    m.key = absl::StrCat("user", i);
    ASSERT_TRUE((*producer)->Send("payments", m).ok());
  }
  absl::Mutex mu;
  std::set<std::string> got;
  dms::ConsumerOptions co;
  co.group = "ledger";
  co.topic = "payments";
  auto consumer = dms::Consumer::Start(
      co,
      [&](const dms::ReceivedMessage& m) {
        absl::MutexLock lock(&mu);
        got.insert(m.body);
        return dms::ConsumeResult::kSuccess;
      },
      rpc->get());
  ASSERT_TRUE(consumer.ok()) << consumer.status();
  for (int i = 0; i < 400; ++i) {
    {
      absl::MutexLock lock(&mu);
      if (got.size() == kMessages) break;
    }
    absl::SleepFor(absl::Milliseconds(25));
  }
  absl::MutexLock lock(&mu);
  EXPECT_EQ(got.size(), static_cast<size_t>(kMessages));
}

// A certificate of another CA, an expired one, and no certificate at all
// get nothing; the daemon logs the first two naming the certificate.
TEST_F(TlsTest, UntrustedExpiredAndMissingCertificatesAreRefusedByName) {
  StartDsrd();
  auto [ok_code, ok_out] = Ctl("tester", {"registry", "ls"});
  EXPECT_EQ(ok_code, 0) << ok_out;

  auto [other_code, other_out] = Ctl("tester", {"registry", "ls"}, other_);
  EXPECT_NE(other_code, 0) << other_out;
  // This side refuses the daemon: not issued by the CA it trusts.
  EXPECT_NE(other_out.find("refused the server certificate of 'spiffe://formica.local/dsrd'"),
            std::string::npos)
      << other_out;
  EXPECT_NE(other_out.find("not issued by a CA in " + other_ + "/ca.pem"), std::string::npos)
      << other_out;
  EXPECT_TRUE(dsrd_->process()->WaitForOutput(
      "refused the client certificate of 'spiffe://formica.local/tester'", absl::Seconds(5)))
      << dsrd_->process()->Output();

  auto [exp_code, exp_out] = Ctl("expired", {"registry", "ls"});
  EXPECT_NE(exp_code, 0) << exp_out;
  EXPECT_TRUE(dsrd_->process()->WaitForOutput(
      "refused the client certificate of 'spiffe://formica.local/expired'", absl::Seconds(5)))
      << dsrd_->process()->Output();
  EXPECT_NE(dsrd_->process()->Output().find("it has expired"), std::string::npos);

  auto [plain_code, plain_out] = Ctl("", {"registry", "ls"});
  EXPECT_NE(plain_code, 0) << plain_out;
  EXPECT_NE(plain_out.find("UNAVAILABLE"), std::string::npos) << plain_out;
}

// A daemon whose certificate does not name the address it is dialled at is
// refused by the client, naming that address.
TEST_F(TlsTest, AServerCertificateMustNameTheHostDialled) {
  StartDsrd("127.0.0.2");  // dsrd.pem names 127.0.0.1 and localhost only
  auto [code, out] =
      Ctl("tester", {"registry", "ls"}, "", absl::StrCat("127.0.0.2:", dsrd_->port()));
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("does not name the host dialled (127.0.0.2)"), std::string::npos) << out;
}

// The tls section: the three files together, the key matching the
// certificate; a daemon refuses to start otherwise, naming what is wrong.
TEST_F(TlsTest, ABadTlsSectionStopsTheDaemonNamingIt) {
  auto [half_code, half_out] =
      RunToEnd({BinaryPath("dts/dtsd"), "--listen", "127.0.0.1:0", "--data-dir", dir_.File("d1"),
                "--set", "tls.ca_file=" + certs_ + "/ca.pem"},
               dir_.File("half.log"));
  EXPECT_EQ(half_code, 2) << half_out;
  EXPECT_NE(half_out.find("tls.cert_file: not set"), std::string::npos) << half_out;

  auto [mix_code, mix_out] = RunToEnd(
      {BinaryPath("dms/dmsd"), "--listen", "127.0.0.1:0", "--data-dir", dir_.File("d2"), "--set",
       "tls.ca_file=" + certs_ + "/ca.pem", "--set", "tls.cert_file=" + certs_ + "/dmsd.pem",
       "--set", "tls.key_file=" + certs_ + "/dtsd.key"},
      dir_.File("mix.log"));
  EXPECT_EQ(mix_code, 2) << mix_out;
  EXPECT_NE(mix_out.find("does not match the certificate " + certs_ + "/dmsd.pem"),
            std::string::npos)
      << mix_out;

  // A service reading FORMICA_TLS_* refuses to run half configured.
  auto [env_code, env_out] =
      RunToEnd({"/usr/bin/env", "FORMICA_TLS_CA=" + certs_ + "/ca.pem",
                BinaryPath("tests/rpc/echo_server"), "--registry", "127.0.0.1:1"},
               dir_.File("env.log"));
  EXPECT_EQ(env_code, 2) << env_out;
  EXPECT_NE(env_out.find("TLS is half configured: FORMICA_TLS_CERT, FORMICA_TLS_KEY not set"),
            std::string::npos)
      << env_out;

  auto [typo_code, typo_out] = RunToEnd({BinaryPath("registry/dsrd"), "--listen", "127.0.0.1:0",
                                         "--data-dir", dir_.File("d3"), "--set", "tls.cafile=x"},
                                        dir_.File("typo.log"));
  EXPECT_EQ(typo_code, 2) << typo_out;
  EXPECT_NE(typo_out.find("tls.cafile: unknown key"), std::string::npos) << typo_out;
}

// Revocation: dsrd checks client certificates against tls.crl_file, read
// again when it changes. A certificate the CA revoked is refused on its
// next connection, with a log line naming it; the others go on; a list that
// turns unreadable keeps the one before; a bad list at start stops the
// daemon naming it.
TEST_F(TlsTest, ARevokedCertificateIsRefusedOnItsNextConnection) {
  MakeCerts(certs_, {"stolen"});
  MakeCerts(certs_, {"--revoke"});  // the CA's list, nothing revoked yet
  const std::string crl = certs_ + "/crl.pem";
  StartDsrd("127.0.0.1", {{"tls.crl_file", crl}});
  auto [before_code, before_out] = Ctl("stolen", {"registry", "sessions"});
  EXPECT_EQ(before_code, 0) << before_out;

  MakeCerts(certs_, {"--revoke", "stolen"});
  int code = 0;
  std::string out;
  for (int i = 0; i < 40; ++i) {  // the list is looked at every second
    std::tie(code, out) = Ctl("stolen", {"registry", "sessions"});
    if (code != 0) break;
    absl::SleepFor(absl::Milliseconds(250));
  }
  EXPECT_NE(code, 0) << "a revoked certificate still gets through: " << out;
  EXPECT_TRUE(dsrd_->process()->WaitForOutput(
      "tls: refused the client certificate of 'spiffe://formica.local/stolen'", absl::Seconds(5)))
      << dsrd_->process()->Output();
  EXPECT_NE(dsrd_->process()->Output().find("it is revoked (" + crl + ")"), std::string::npos)
      << dsrd_->process()->Output();
  auto [other_code, other_out] = Ctl("tester", {"registry", "sessions"});
  EXPECT_EQ(other_code, 0) << other_out;

  // A list replaced by something unreadable: the one before stays in force.
  {
    std::ofstream bad(crl + ".new");
    bad << "not a revocation list\n";
  }
  ASSERT_EQ(std::rename((crl + ".new").c_str(), crl.c_str()), 0);
  absl::SleepFor(absl::Milliseconds(1500));
  auto [kept_code, kept_out] = Ctl("stolen", {"registry", "sessions"});
  EXPECT_NE(kept_code, 0) << "an unreadable list lifted the revocation: " << kept_out;
  auto [still_code, still_out] = Ctl("tester", {"registry", "sessions"});
  EXPECT_EQ(still_code, 0) << still_out;

  // At start an unreadable list stops the daemon, naming it.
  auto [start_code, start_out] =
      RunToEnd({BinaryPath("registry/dsrd"), "--listen", "127.0.0.1:0", "--data-dir",
                dir_.File("d-crl"), "--set", "tls.ca_file=" + certs_ + "/ca.pem", "--set",
                "tls.cert_file=" + certs_ + "/dsrd.pem", "--set",
                "tls.key_file=" + certs_ + "/dsrd.key", "--set", "tls.crl_file=" + crl},
               dir_.File("crl-start.log"));
  EXPECT_EQ(start_code, 2) << start_out;
  EXPECT_NE(start_out.find("tls revocation list " + crl + ": holds no PEM CRL"), std::string::npos)
      << start_out;
}

// A registry session is resumed only by the identity that holds it: a
// caller with another valid certificate who learnt the session's id gets
// PERMISSION_DENIED, and the holder keeps its session.
TEST_F(TlsTest, ASessionIsResumedOnlyByTheIdentityHoldingIt) {
  StartDsrd();
  UseTlsAs("tester");
  auto holder = NewRegistry("holder");
  ASSERT_NE(holder, nullptr);
  for (int i = 0; i < 200 && !holder->connected(); ++i) absl::SleepFor(absl::Milliseconds(10));
  uint64_t session = holder->session_id();
  ASSERT_NE(session, 0u);

  UseTlsAs("operator");
  auto stub =
      registry::v1::Registry::NewStub(grpc::CreateChannel(dsrd_->address(), ChannelCredentials()));
  grpc::ClientContext ctx;
  auto stream = stub->Session(&ctx);
  registry::v1::ClientMessage open;
  open.mutable_open()->set_client_name("intruder");
  open.mutable_open()->set_lease_ms(2000);
  open.mutable_open()->set_resume_session_id(session);
  ASSERT_TRUE(stream->Write(open));
  registry::v1::ServerMessage reply;
  EXPECT_FALSE(stream->Read(&reply)) << reply.DebugString();
  grpc::Status st = stream->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(st.error_message(),
            absl::StrCat("identity 'spiffe://formica.local/operator' may not resume session ",
                         session, " of identity 'spiffe://formica.local/tester'"));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_TRUE(holder->connected());
  EXPECT_EQ(holder->session_id(), session);
}

// dsrd in cluster mode reaches etcd over mutual TLS with its own files:
// etcd asks for a client certificate of the same CA.
TEST_F(TlsTest, ClusterModeReachesEtcdOverMutualTls) {
  MakeCerts(certs_, {"etcd"});
  testing::EtcdCluster::Tls etcd_tls{certs_ + "/ca.pem", certs_ + "/etcd.pem",
                                     certs_ + "/etcd.key"};
  auto etcd = testing::EtcdCluster::Start(1, &etcd_tls);
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  DsrdProcess::Options o;
  o.data_dir = dir_.File("dsrd");
  o.config = TlsKeys("dsrd");
  o.config["push.warmup"] = "0s";
  o.config["storage.engine"] = "etcd";
  o.config["storage.etcd.endpoints"] = (*etcd)->endpoints();
  o.config["storage.etcd.prefix"] = "/tls/";
  o.config["server.id"] = "node0";
  auto d = DsrdProcess::Start(o);
  ASSERT_TRUE(d.ok()) << d.status();
  dsrd_ = std::move(*d);
  auto [code, out] = Ctl("operator", {"cluster", "members"});
  EXPECT_EQ(code, 0) << out << dsrd_->process()->Output();
  EXPECT_NE(out.find("etcd revision"), std::string::npos) << out;
  EXPECT_NE(out.find("node0"), std::string::npos) << out;
}

// In cluster mode a session can be resumed on any node: there too only by
// the identity holding it, though the node asked has never held it (the
// identity is read from the session's record in etcd).
TEST_F(TlsTest, InClusterModeASessionIsResumedOnAnotherNodeOnlyByItsIdentity) {
  MakeCerts(certs_, {"etcd"});
  testing::EtcdCluster::Tls etcd_tls{certs_ + "/ca.pem", certs_ + "/etcd.pem",
                                     certs_ + "/etcd.key"};
  auto etcd = testing::EtcdCluster::Start(1, &etcd_tls);
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  std::vector<std::unique_ptr<DsrdProcess>> nodes;
  for (const char* id : {"node0", "node1"}) {
    DsrdProcess::Options o;
    o.data_dir = dir_.File(std::string("dsrd-") + id);
    o.config = TlsKeys("dsrd");
    o.config["push.warmup"] = "0s";
    o.config["storage.engine"] = "etcd";
    o.config["storage.etcd.endpoints"] = (*etcd)->endpoints();
    o.config["storage.etcd.prefix"] = "/resume/";
    o.config["server.id"] = id;
    auto d = DsrdProcess::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    nodes.push_back(std::move(*d));
  }
  dsrd_ = std::move(nodes[0]);  // the holder's node
  UseTlsAs("tester");
  auto holder = NewRegistry("holder");
  ASSERT_NE(holder, nullptr);
  for (int i = 0; i < 300 && !holder->connected(); ++i) absl::SleepFor(absl::Milliseconds(10));
  uint64_t session = holder->session_id();
  ASSERT_NE(session, 0u);

  // Resumes `session` at node1 as the current identity; the status.
  auto resume = [&](const std::string& name) {
    auto stub = registry::v1::Registry::NewStub(
        grpc::CreateChannel(nodes[1]->address(), ChannelCredentials()));
    grpc::ClientContext ctx;
    auto stream = stub->Session(&ctx);
    registry::v1::ClientMessage open;
    open.mutable_open()->set_client_name(name);
    open.mutable_open()->set_lease_ms(2000);
    open.mutable_open()->set_resume_session_id(session);
    EXPECT_TRUE(stream->Write(open));
    registry::v1::ServerMessage reply;
    if (stream->Read(&reply) && reply.has_opened()) {
      ctx.TryCancel();
      (void)stream->Finish();
      return grpc::Status::OK;
    }
    return stream->Finish();
  };
  UseTlsAs("operator");
  grpc::Status st = resume("intruder");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(st.error_message(),
            absl::StrCat("identity 'spiffe://formica.local/operator' may not resume session ",
                         session, " of identity 'spiffe://formica.local/tester'"));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_TRUE(holder->connected());
  EXPECT_EQ(holder->session_id(), session);

  // The holder's own identity may take it over there (a client moving to
  // another node): the refusal above was the identity, not the node.
  UseTlsAs("tester");
  st = resume("holder-moved");
  EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
}

// The fund (examples/fund) over mutual TLS: its programs read
// FORMICA_TLS_*, the daemons their tls section; orders are confirmed,
// their messages reach the ledger, and money and shares add up.
TEST_F(TlsTest, TheFundRunsOverMutualTls) {
  StartDsrd();
  int dtsd_port = 0, dmsd_port = 0;
  auto dtsd = StartDaemon("dts/dtsd", "dtsd", {"--data-dir", dir_.File("dtsd")}, &dtsd_port);
  // Its participants (sharded ones and dmsd's) take phase two from dtsd's
  // identity only, and dtsd's confirms get through.
  auto dmsd =
      StartDaemon("dms/dmsd", "dmsd",
                  {"--data-dir", dir_.File("dmsd"), "--set", "topics.create=fund.orders:4", "--set",
                   "transactions.coordinator_identity=spiffe://formica.local/dtsd"},
                  &dmsd_port);
  ASSERT_TRUE(dtsd && dmsd);
  MakeCerts(certs_, {"fund"});
  auto server = Subprocess::Start(
      WithTls("fund", {"FORMICA_DTS_COORDINATOR_IDENTITY=spiffe://formica.local/dtsd",
                       BinaryPath("examples/fund/fund-server"), "--registry", dsrd_->address(),
                       "--data", dir_.path(), "--users", "200", "--initial", "100000"}),
      dir_.File("fund-server.log"));
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE((*server)->WaitForOutput("fund-server ready", absl::Seconds(60)))
      << (*server)->Output();
  auto [code, out] = RunToEnd(
      WithTls("fund", {BinaryPath("examples/fund/fund-load"), "--registry", dsrd_->address(),
                       "--users", "200", "--seconds", "2", "--concurrency", "4"}),
      dir_.File("fund-load.log"));
  EXPECT_EQ(code, 0) << out << (*server)->Output();
  EXPECT_NE(out.find("money and shares add up"), std::string::npos) << out;
  EXPECT_EQ(out.find("confirmed 0,"), std::string::npos) << out;
  // dtsd's phase two was taken: every activity finishes.
  std::string unfinished;
  for (int i = 0; i < 100; ++i) {
    auto [ls_code, ls_out] =
        Ctl("operator", {"--dts", absl::StrCat("127.0.0.1:", dtsd_port), "dts", "ls"});
    ASSERT_EQ(ls_code, 0) << ls_out;
    unfinished = ls_out;
    if (ls_out.find("fund.") == std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(unfinished.find("fund."), std::string::npos) << unfinished;
  // And nothing gets through without a certificate.
  auto [plain_code, plain_out] = RunToEnd({BinaryPath("examples/fund/fund-load"), "--registry",
                                           dsrd_->address(), "--users", "200", "--seconds", "1"},
                                          dir_.File("fund-load-plain.log"));
  EXPECT_NE(plain_code, 0) << plain_out;
}

// The serial number of the certificate a TLS server at `address` presents
// now, read by openssl's client as `name`.
std::string ServedSerial(const std::string& certs, const std::string& name,
                         const std::string& address, const std::string& log) {
  std::string cmd = absl::StrCat("echo | openssl s_client -connect ", address, " -CAfile ", certs,
                                 "/ca.pem -cert ", certs, "/", name, ".pem -key ", certs, "/", name,
                                 ".key 2>/dev/null | openssl x509 -noout -serial");
  auto [code, out] = RunToEnd({"/bin/sh", "-c", cmd}, log);
  return code == 0 ? out : "";
}

// The serial number of the certificate in `pem`. Each call logs to a file
// of its own (the output is read back from it).
std::string FileSerial(const std::string& pem) {
  static std::atomic<int> reads{0};
  auto p = Subprocess::Start({"/usr/bin/openssl", "x509", "-in", pem, "-noout", "-serial"},
                             absl::StrCat(pem, ".serial", ++reads));
  if (!p.ok()) return "";
  (*p)->Wait(absl::Seconds(10));
  return (*p)->Output();
}

// A provider's certificate replaced on disk under steady calls: no call
// fails, and new connections get the new certificate within the reload
// interval.
TEST_F(TlsTest, ARotatedCertificateIsServedWithoutFailingACall) {
  StartDsrd();
  std::string echo_address;
  auto echo = StartEcho(&echo_address);
  ASSERT_NE(echo, nullptr);
  std::string before = FileSerial(certs_ + "/echo.pem");
  ASSERT_FALSE(before.empty());
  // Each read has a log of its own: the output is read back from it, and a
  // second run into the same log would add its serial to the first.
  ASSERT_EQ(ServedSerial(certs_, "tester", echo_address, dir_.File("served-before.log")), before);

  UseTlsAs("tester");
  auto reg = NewRegistry("tls-test");
  ASSERT_NE(reg, nullptr);
  rpc::ClientOptions co_rpc;
  co_rpc.app_name = "tls-test";
  auto rpc = rpc::Client::Create(co_rpc, reg.get());
  ASSERT_TRUE(rpc.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0}, failures{0};
  std::string last_error;
  absl::Mutex mu;
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      while (!stop) {
        test::EchoRequest req;
        req.set_message("hi");
        test::EchoResponse resp;
        absl::Status st =
            (*rpc)->Call("formica.test.Echo", {},
                         [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
                           return test::Echo::NewStub(ch)->Echo(ctx, req, &resp);
                         });
        ++calls;
        if (!st.ok()) {
          ++failures;
          absl::MutexLock lock(&mu);
          last_error = st.ToString();
        }
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  MakeCerts(certs_, {"echo"});  // a new key and certificate, same identity
  std::string after = FileSerial(certs_ + "/echo.pem");
  ASSERT_NE(after, before);
  std::string served;
  for (int i = 0; i < 40 && served != after; ++i) {
    absl::SleepFor(absl::Milliseconds(250));
    served = ServedSerial(certs_, "tester", echo_address,
                          dir_.File(absl::StrCat("served-after-", i, ".log")));
  }
  absl::SleepFor(absl::Milliseconds(500));
  stop = true;
  for (auto& t : callers) t.join();
  EXPECT_EQ(served, after) << "the provider still serves its old certificate";
  EXPECT_GT(calls.load(), 100);
  absl::MutexLock lock(&mu);
  EXPECT_EQ(failures.load(), 0) << last_error;
}

}  // namespace
}  // namespace formica
