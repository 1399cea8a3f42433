// Bad input gets a clear error naming the field, stores nothing, and the
// daemon keeps serving.
#include <fstream>

#include "registry_fixture.h"

namespace formica::registry::testing {
namespace {

struct BadCase {
  std::string label;
  std::function<void(v1::Instance*)> spoil;
  std::string expected_text;
};

v1::Instance GoodInstance() {
  v1::Instance i;
  i.set_service("fund.Trade");
  i.set_address("127.0.0.1:9000");
  i.set_weight(100);
  return i;
}

TEST_F(RegistryTest, BadPublicationsAreRefusedNamingTheFieldAndStoreNothing) {
  std::vector<BadCase> cases = {
      {"empty service", [](v1::Instance* i) { i->set_service(""); }, "service name is empty"},
      {"long service", [](v1::Instance* i) { i->set_service(std::string(300, 's')); },
       "service name is 300 characters long; the limit is 256"},
      {"service charset", [](v1::Instance* i) { i->set_service("fund trade"); },
       "service name 'fund trade' has character ' '"},
      {"service '..'", [](v1::Instance* i) { i->set_service(".."); },
       "service name '..' is not allowed: '..' means the current or parent directory"},
      {"service with a '.' part", [](v1::Instance* i) { i->set_service("fund/./trade"); },
       "service name 'fund/./trade' is not allowed: '.' means"},
      {"address without port", [](v1::Instance* i) { i->set_address("127.0.0.1"); },
       "address '127.0.0.1' is malformed: no port"},
      {"address port range", [](v1::Instance* i) { i->set_address("host:99999"); },
       "the port must be a number from 1 to 65535"},
      {"address signed port", [](v1::Instance* i) { i->set_address("host:+80"); },
       "the port must be a number from 1 to 65535"},
      {"address host chars", [](v1::Instance* i) { i->set_address("a b:80"); },
       "address 'a b:80' is malformed"},
      {"empty address", [](v1::Instance* i) { i->set_address(""); }, "address is empty"},
      {"negative weight", [](v1::Instance* i) { i->set_weight(-5); },
       "weight -5 is out of range 0..10000"},
      {"huge weight", [](v1::Instance* i) { i->set_weight(10001); },
       "weight 10001 is out of range"},
      {"oversized metadata",
       [](v1::Instance* i) { (*i->mutable_metadata())["blob"] = std::string(5000, 'x'); },
       "metadata is 5004 bytes; the limit is 4096"},
      {"too many tags",
       [](v1::Instance* i) {
         for (int t = 0; t < 40; ++t) (*i->mutable_tags())["t" + std::to_string(t)] = "v";
       },
       "tags has 40 entries; the limit is 32"},
      {"zone charset", [](v1::Instance* i) { i->set_zone("gz 00"); }, "zone 'gz 00' has character"},
  };
  RawSession raw(dsrd_->address());
  ASSERT_NE(raw.Open(), 0u);
  uint64_t request = 0;
  for (const BadCase& c : cases) {
    v1::ClientMessage m;
    m.mutable_publish()->set_request_id(++request);
    *m.mutable_publish()->mutable_instance() = GoodInstance();
    c.spoil(m.mutable_publish()->mutable_instance());
    ASSERT_TRUE(raw.Write(m)) << c.label;
    v1::ServerMessage reply;
    ASSERT_TRUE(raw.ReadUntil([](const v1::ServerMessage& x) { return x.has_result(); }, &reply))
        << c.label;
    EXPECT_EQ(reply.result().request_id(), request) << c.label;
    EXPECT_EQ(reply.result().code(), static_cast<int>(absl::StatusCode::kInvalidArgument))
        << c.label;
    EXPECT_NE(reply.result().message().find(c.expected_text), std::string::npos)
        << c.label << ": got '" << reply.result().message() << "'";
  }
  // Nothing was stored.
  grpc::ClientContext ctx;
  v1::ListServicesResponse list;
  ASSERT_TRUE(Stub()->ListServices(&ctx, {}, &list).ok());
  EXPECT_EQ(list.services_size(), 0);
  // The same session and the daemon still work.
  v1::ClientMessage good;
  good.mutable_publish()->set_request_id(++request);
  *good.mutable_publish()->mutable_instance() = GoodInstance();
  ASSERT_TRUE(raw.Write(good));
  v1::ServerMessage reply;
  ASSERT_TRUE(raw.ReadUntil([](const v1::ServerMessage& x) { return x.has_result(); }, &reply));
  EXPECT_EQ(reply.result().code(), 0) << reply.result().message();
}

TEST_F(RegistryTest, ClientRefusesBadInputBeforeSending) {
  auto client = NewClient("bad");
  Instance i = MakeInstance("fund.Trade", "127.0.0.1:9000");
  i.weight = -1;
  absl::Status st = client->Publish(i);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("weight -1"), absl::string_view::npos) << st;
  EXPECT_EQ(client->Publish(MakeInstance("", "127.0.0.1:1")).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Subscribe("bad name", nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Over the registry's size limit: refused by dsrd, and not kept for replay.
  Instance big = MakeInstance("fund.Trade", "127.0.0.1:9001");
  big.metadata["blob"] = std::string(10000, 'x');
  st = client->Publish(big);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("metadata is"), absl::string_view::npos) << st;
  EXPECT_EQ(client->Unpublish("fund.Trade", "127.0.0.1:9001").code(), absl::StatusCode::kNotFound);

  EXPECT_EQ(Client::Create(ClientOptions{}).status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions bad_address = Options();
  bad_address.registries = {"nowhere"};
  auto created = Client::Create(bad_address);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(created.status().message().find("ClientOptions.registries"), absl::string_view::npos);
}

TEST_F(RegistryTest, UnknownSessionsAreNotFound) {
  RawSession raw(dsrd_->address());
  v1::ClientMessage open;
  open.mutable_open()->set_resume_session_id(123456789);
  ASSERT_TRUE(raw.Write(open));
  v1::ServerMessage m;
  EXPECT_FALSE(raw.Read(&m));
  grpc::Status st = raw.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("session 123456789 not found"), std::string::npos)
      << st.error_message();

  grpc::ClientContext ctx;
  v1::KillSessionRequest kill;
  kill.set_session_id(42);
  v1::KillSessionResponse resp;
  grpc::Status killed = Stub()->KillSession(&ctx, kill, &resp);
  EXPECT_EQ(killed.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(killed.error_message(), "session 42 not found");
}

TEST_F(RegistryTest, AStreamMustOpenASessionFirst) {
  RawSession raw(dsrd_->address());
  v1::ClientMessage publish;
  *publish.mutable_publish()->mutable_instance() = GoodInstance();
  ASSERT_TRUE(raw.Write(publish));
  v1::ServerMessage m;
  EXPECT_FALSE(raw.Read(&m));
  grpc::Status st = raw.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("must be 'open'"), std::string::npos);
}

TEST_F(RegistryTest, BadConfigRequestsNameTheProblem) {
  auto client = NewClient("config");
  EXPECT_EQ(client->PutConfig("", "v").status().code(), absl::StatusCode::kInvalidArgument);
  auto big = client->PutConfig("k", std::string((1 << 20) + 1, 'x'));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("config value is 1048577 bytes"), absl::string_view::npos);
  EXPECT_EQ(client->GetConfig("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->DeleteConfig("missing").code(), absl::StatusCode::kNotFound);
  auto unknown = [&] {
    grpc::ClientContext ctx;
    v1::GetServiceRequest req;
    req.set_service("nobody.Home");
    v1::ServiceSnapshot out;
    return Stub()->GetService(&ctx, req, &out);
  }();
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(unknown.error_message().find("'nobody.Home'"), std::string::npos);
}

TEST_F(RegistryTest, SigtermShutsDownGracefully) {
  auto client = NewClient("c");
  ASSERT_TRUE(client->Publish(MakeInstance("svc", "127.0.0.1:8900")).ok());
  EXPECT_EQ(dsrd_->Stop(), 0);
  std::string out = dsrd_->process()->Output();
  EXPECT_NE(out.find("shutting down"), std::string::npos) << out;
  EXPECT_NE(out.find("dsrd stopped"), std::string::npos) << out;
}

TEST_F(RegistryTest, ASecondDsrdOnTheSamePortRefusesToStart) {
  TempDir other;
  auto p = Subprocess::Start({formica::testing::BinaryPath("registry/dsrd"), "--listen",
                              dsrd_->address(), "--data-dir", other.File("data")},
                             other.File("out.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 1);
  EXPECT_NE((*p)->Output().find("cannot listen on '" + dsrd_->address() + "'"), std::string::npos)
      << (*p)->Output();
}

TEST_F(RegistryTest, ASecondDsrdOnTheSameDataDirRefusesToStart) {
  TempDir other;
  auto p = Subprocess::Start({formica::testing::BinaryPath("registry/dsrd"), "--listen",
                              "127.0.0.1:" + std::to_string(formica::testing::PickFreePort()),
                              "--data-dir", dir_.File("dsrd") + "/store"},
                             other.File("out.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 1);
  EXPECT_NE((*p)->Output().find("cannot open the registry store"), std::string::npos)
      << (*p)->Output();
}

TEST(DsrdStartup, InvalidConfigFileStopsStartupNamingTheKey) {
  TempDir dir;
  std::string path = dir.File("dsrd.yaml");
  {
    std::ofstream out(path);
    out << "server:\n  listen: 127.0.0.1:0\nsession:\n  lease: forever\n";
  }
  auto p = Subprocess::Start({formica::testing::BinaryPath("registry/dsrd"), "--config", path},
                             dir.File("out.log"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(absl::Seconds(20)), 2);
  EXPECT_NE((*p)->Output().find(path + ":4: session.lease: expected a duration"), std::string::npos)
      << (*p)->Output();

  {
    std::ofstream out(path, std::ios::trunc);
    out << "server:\n  listn: 127.0.0.1:0\n";
  }
  auto q = Subprocess::Start({formica::testing::BinaryPath("registry/dsrd"), "--config", path},
                             dir.File("out2.log"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ((*q)->Wait(absl::Seconds(20)), 2);
  EXPECT_NE((*q)->Output().find("server.listn: unknown key"), std::string::npos) << (*q)->Output();
}

}  // namespace
}  // namespace formica::registry::testing
