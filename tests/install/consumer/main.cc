// A user's program: links only the installed Formica::client package and
// its own protos (compiled with formica_add_proto). It never calls
// formica::InitLogging: the library's log lines must go to stderr, leaving
// stdout to the program (run.sh checks both).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "acme/v1/greeter.grpc.pb.h"
#include "formica/common/logging.h"
#include "formica/dts/participant.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"

namespace {

class Greeter final : public acme::v1::Greeter::Service {
  grpc::Status Greet(grpc::ServerContext* ctx, const acme::v1::GreetRequest* request,
                     acme::v1::GreetReply* reply) override {
    return formica::rpc::Serve(ctx, [&] {
      reply->set_text("hello " + request->name() + " in " + request->activity().activity_id());
      return grpc::Status::OK;
    });
  }
};

// dts::Participant's steps get a sqlite3*: SQLite's API must be at hand
// through Formica::client alone.
int UseParticipantDatabase(formica::rpc::Client* rpc, const std::string& database) {
  formica::dts::ParticipantOptions options;
  options.name = "consumer.dts";
  options.database = database;
  auto participant = formica::dts::Participant::Open(options, rpc);
  if (!participant.ok()) {
    std::fprintf(stderr, "participant: %s\n", participant.status().ToString().c_str());
    return 1;
  }
  int rows = -1;
  absl::Status st = (*participant)->Transaction([&](sqlite3* db) {
    if (sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (1), (2)", nullptr,
                     nullptr, nullptr) != SQLITE_OK) {
      return absl::InternalError(sqlite3_errmsg(db));
    }
    sqlite3_stmt* count = nullptr;
    sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &count, nullptr);
    if (sqlite3_step(count) == SQLITE_ROW) rows = sqlite3_column_int(count, 0);
    sqlite3_finalize(count);
    return absl::OkStatus();
  });
  if (!st.ok() || rows != 2) {
    std::fprintf(stderr, "participant transaction: %s, %d rows\n", st.ToString().c_str(), rows);
    return 1;
  }
  std::printf("consumer wrote %d rows through dts::Participant's sqlite3*\n", rows);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: consumer HOST:PORT WORK_DIR\n");
    return 2;
  }
  formica::registry::ClientOptions options;
  options.registries = {argv[1]};
  options.client_name = "consumer";
  auto client = formica::registry::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }
  formica::registry::Instance me;
  me.service = "consumer.Hello";
  me.address = "127.0.0.1:5555";
  if (absl::Status st = (*client)->Publish(me); !st.ok()) {
    std::fprintf(stderr, "publish: %s\n", st.ToString().c_str());
    return 1;
  }
  if (!(*client)->Subscribe("consumer.Hello", nullptr).ok()) {
    return 1;
  }
  auto snapshot = (*client)->AwaitSnapshot("consumer.Hello", absl::Seconds(10));
  if (!snapshot.ok() || snapshot->instances.size() != 1 ||
      snapshot->instances[0].address != "127.0.0.1:5555") {
    std::fprintf(stderr, "subscribe: %s\n", snapshot.status().ToString().c_str());
    return 1;
  }
  std::printf("consumer saw %s at version %llu\n", snapshot->instances[0].address.c_str(),
              static_cast<unsigned long long>(snapshot->version));

  // rpc::Client over the published gRPC health service of dsrd itself.
  formica::registry::Instance health;
  health.service = "grpc.health.v1.Health";
  health.address = argv[1];
  if (!(*client)->Publish(health).ok()) return 1;
  formica::rpc::ClientOptions rpc_options;
  rpc_options.app_name = "consumer";
  auto rpc = formica::rpc::Client::Create(rpc_options, client->get());
  if (!rpc.ok()) return 1;
  formica::rpc::CallOptions call;
  call.timeout = absl::Seconds(10);
  grpc::ByteBuffer response;
  absl::Status st = (*rpc)->Call(
      "grpc.health.v1.Health", call,
      [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
        grpc::GenericStub stub(channel);
        grpc::Slice empty("");  // an empty HealthCheckRequest: the server as a whole
        grpc::ByteBuffer request(&empty, 1);
        std::promise<grpc::Status> done;
        stub.UnaryCall(ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                       &response, [&done](grpc::Status s) { done.set_value(s); });
        return done.get_future().get();
      });
  if (!st.ok()) {
    std::fprintf(stderr, "rpc call: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("consumer called grpc.health.v1.Health through rpc::Client (%zu bytes back)\n",
              response.Length());

  // The program's own gRPC service, generated from its own proto.
  Greeter greeter;
  formica::rpc::ServerOptions server_options;
  server_options.unpublish_grace = absl::ZeroDuration();
  auto server = formica::rpc::Server::Start(
      server_options, {{acme::v1::Greeter::service_full_name(), &greeter}}, client->get());
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  acme::v1::GreetRequest greet;
  greet.set_name("ada");
  greet.mutable_activity()->set_activity_id("a-1");
  acme::v1::GreetReply reply;
  st = (*rpc)->Call(acme::v1::Greeter::service_full_name(), call,
                    [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
                      return acme::v1::Greeter::NewStub(channel)->Greet(ctx, greet, &reply);
                    });
  if (!st.ok() || reply.text() != "hello ada in a-1") {
    std::fprintf(stderr, "greet: %s '%s'\n", st.ToString().c_str(), reply.text().c_str());
    return 1;
  }
  std::printf("consumer greeted through its own service: %s\n", reply.text().c_str());

  if (UseParticipantDatabase(rpc->get(), std::string(argv[2]) + "/participant.db") != 0) return 1;

  // From here the library's lines go to the program's sink, not stderr.
  std::mutex mu;
  std::vector<std::string> lines;
  formica::SetLogSink([&](const formica::LogRecord& record) {
    std::lock_guard<std::mutex> lock(mu);
    lines.push_back(std::string(record.message));
  });
  (*server)->Shutdown();  // logs "rpc server on ... stopped"
  formica::SetLogSink(nullptr);
  bool stopped_seen = false;
  for (const std::string& line : lines) {
    stopped_seen |= line.find("stopped") != std::string::npos;
  }
  if (!stopped_seen) {
    std::fprintf(stderr, "the log sink did not receive the server's stop line\n");
    return 1;
  }
  std::printf("consumer saw %zu line(s) reach its log sink\n", lines.size());
  return 0;
}
