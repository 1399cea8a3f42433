// Who may report on what (docs/security.md, "Identities in DTS and DMS"):
// over mutual TLS with distinct certificates, only an activity's initiator
// decides it, only an action's participant enlists it or checks back about
// it, only dtsd confirms or cancels at a participant, and a half message is
// checked back only with identities that may produce to its topic. Each
// refusal is checked as the client receives it.
#include <grpcpp/grpcpp.h>
#include <sqlite3.h>

#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/dts/activity.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/internal/credentials.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/test/account.grpc.pb.h"
#include "gtest/gtest.h"
#include "process.h"
#include "tls_fixture.h"

namespace formica {
namespace {

constexpr char kDtsd[] = "spiffe://formica.local/dtsd";

// (balance, frozen) of `account` in an account_server's database.
std::pair<int64_t, int64_t> Account(const std::string& db_path, const std::string& account) {
  sqlite3* db = nullptr;
  std::pair<int64_t, int64_t> out = {-1, -1};
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return out;
  }
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT balance, frozen FROM accounts WHERE id = ?1", -1, &s,
                         nullptr) == SQLITE_OK) {
    sqlite3_bind_text(s, 1, account.c_str(), -1, SQLITE_TRANSIENT);
    if (sqlite3_step(s) == SQLITE_ROW) {
      out = {sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1)};
    }
  }
  sqlite3_finalize(s);
  sqlite3_close(db);
  return out;
}

class IdentityTest : public TlsTest {
 protected:
  // An account_server as `bank`, publishing `service` (and `service`.dts),
  // taking phase two only from dtsd's identity; its address in `address`.
  std::unique_ptr<Subprocess> StartBank(const std::string& bank, const std::string& service,
                                        std::string* address) {
    auto p = Subprocess::Start(
        WithTls(bank,
                {absl::StrCat("FORMICA_DTS_COORDINATOR_IDENTITY=", kDtsd),
                 BinaryPath("tests/dts/account_server"), "--registry", dsrd_->address(), "--name",
                 service, "--db", dir_.File(bank + ".db"), "--accounts", "2", "--initial", "1000"}),
        dir_.File(bank + ".log"));
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    EXPECT_TRUE((*p)->WaitForOutput("serving on ", absl::Seconds(20))) << (*p)->Output();
    *address = (*p)->LineAfter("serving on ");
    return std::move(*p);
  }
};

// A participant (bank-b) cannot cancel, enlist, check back about or decide
// what belongs to another (bank-a's frozen debit, transfer's activity);
// each try is PERMISSION_DENIED naming who may, and changes nothing; the
// initiator's commit and dtsd's confirm then go through.
TEST_F(IdentityTest, AParticipantCannotCancelAnothersAction) {
  StartDsrd();
  int dtsd_port = 0;
  auto dtsd = StartDaemon("dts/dtsd", "dtsd", {"--data-dir", dir_.File("dtsd")}, &dtsd_port);
  ASSERT_TRUE(dtsd);
  std::string dts = absl::StrCat("127.0.0.1:", dtsd_port);
  std::string bank_a;
  auto bank = StartBank("bank-a", "bank.a", &bank_a);
  ASSERT_TRUE(bank);

  // The initiator ("transfer") begins at dtsd; bank-a's try freezes 100
  // and enlists the debit as bank-a.
  UseTlsAs("transfer");
  auto reg = NewRegistry("transfer");
  ASSERT_NE(reg, nullptr);
  rpc::ClientOptions co;
  co.app_name = "transfer";
  auto rpc = rpc::Client::Create(co, reg.get());
  ASSERT_TRUE(rpc.ok()) << rpc.status();
  dts::ActivityOptions ao;
  ao.name = "bank.Transfer";
  ao.begin_at_coordinator = true;
  ao.timeout = absl::Seconds(60);
  auto activity = dts::Activity::Begin(rpc->get(), ao);
  ASSERT_TRUE(activity.ok()) << activity.status();
  const std::string id = (*activity)->id();
  test::Move move;
  move.set_account("0");
  move.set_amount(100);
  absl::Status tried = (*activity)->Run([&] {
    test::Moved out;
    return (*rpc)->Call("bank.a", {},
                        [&](const std::shared_ptr<grpc::Channel>& ch, grpc::ClientContext* ctx) {
                          return test::Account::NewStub(ch)->Debit(ctx, move, &out);
                        });
  });
  ASSERT_TRUE(tried.ok()) << tried;
  ASSERT_EQ(Account(dir_.File("bank-a.db"), "0"), std::make_pair(int64_t{1000}, int64_t{100}));

  // bank-b, with its own certificate.
  UseTlsAs("bank-b");
  const std::string b = "identity 'spiffe://formica.local/bank-b' may not ";
  auto participant =
      dts::v1::Participant::NewStub(grpc::CreateChannel(bank_a, ChannelCredentials()));
  dts::v1::PhaseTwoRequest cancel;
  cancel.set_activity_id(id);
  cancel.set_action("debit");
  cancel.set_payload(move.SerializeAsString());
  for (bool confirm : {false, true}) {
    grpc::ClientContext ctx;
    dts::v1::PhaseTwoResponse resp;
    grpc::Status st = confirm ? participant->Confirm(&ctx, cancel, &resp)
                              : participant->Cancel(&ctx, cancel, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_EQ(st.error_message(),
              absl::StrCat(b, confirm ? "confirm" : "cancel",
                           " actions of participant 'bank.a.dts': only '", kDtsd, "' may"));
  }
  {
    dts::v1::PhaseTwoBatchRequest batch;
    dts::v1::PhaseTwoItem* item = batch.add_items();
    item->set_activity_id(id);
    item->set_action("debit");
    item->set_payload(move.SerializeAsString());
    grpc::ClientContext ctx;
    dts::v1::PhaseTwoBatchResponse resp;
    grpc::Status st = participant->PhaseTwoBatch(&ctx, batch, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_EQ(resp.results_size(), 0);
  }
  EXPECT_EQ(Account(dir_.File("bank-a.db"), "0"), std::make_pair(int64_t{1000}, int64_t{100}))
      << "a refused cancel released the frozen money";

  // At dtsd: bank-b neither decides transfer's activity nor reports on
  // bank-a's action.
  auto coordinator = dts::v1::Coordinator::NewStub(grpc::CreateChannel(dts, ChannelCredentials()));
  for (bool commit : {false, true}) {
    grpc::ClientContext ctx;
    dts::v1::ActivityRef ref;
    ref.set_activity_id(id);
    dts::v1::DecisionResponse resp;
    grpc::Status st =
        commit ? coordinator->Commit(&ctx, ref, &resp) : coordinator->Rollback(&ctx, ref, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_EQ(st.error_message(),
              absl::StrCat(b, commit ? "commit" : "roll back", " activity ", id,
                           ": it was begun by 'spiffe://formica.local/transfer', and only the "
                           "identity that began an activity decides it"));
  }
  {
    dts::v1::BatchRequest batch;
    dts::v1::EnlistRequest* enlist = batch.add_ops()->mutable_enlist();
    enlist->set_activity_id(id);
    enlist->set_participant("bank.a.dts");
    enlist->set_action("debit");
    enlist->set_payload(move.SerializeAsString());
    dts::v1::ActivityRef* resolve = batch.add_ops()->mutable_resolve();
    resolve->set_activity_id(id);
    dts::v1::JoinedAction* named = resolve->add_actions();
    named->set_participant("bank.a.dts");
    named->set_action("debit");
    dts::v1::ActivityRef* rollback = batch.add_ops()->mutable_rollback();
    rollback->set_activity_id(id);
    grpc::ClientContext ctx;
    dts::v1::BatchResponse resp;
    ASSERT_TRUE(coordinator->Batch(&ctx, batch, &resp).ok());
    ASSERT_EQ(resp.results_size(), 3);
    const std::string of_a =
        absl::StrCat(" action debit of participant bank.a.dts in activity ", id,
                     ": it was enlisted by 'spiffe://formica.local/bank-a', "
                     "and only that identity reports on it");
    EXPECT_EQ(resp.results(0).code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
    EXPECT_EQ(resp.results(0).message(), absl::StrCat(b, "enlist", of_a));
    EXPECT_EQ(resp.results(1).code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
    EXPECT_EQ(resp.results(1).message(), absl::StrCat(b, "check back about", of_a));
    EXPECT_EQ(resp.results(2).code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
  }
  {
    grpc::ClientContext ctx;
    dts::v1::ActivityRef ref;
    ref.set_activity_id(id);
    dts::v1::Activity a;
    ASSERT_TRUE(coordinator->Get(&ctx, ref, &a).ok());
    EXPECT_EQ(a.state(), dts::v1::ACTIVE) << "a refused decision changed it";
    EXPECT_EQ(a.initiator_identity(), "spiffe://formica.local/transfer");
    ASSERT_EQ(a.actions_size(), 1);
    EXPECT_EQ(a.actions(0).identity(), "spiffe://formica.local/bank-a");
  }
  EXPECT_TRUE(dtsd->WaitForOutput(absl::StrCat(b, "roll back activity ", id), absl::Seconds(5)));
  auto [show_code, show] = Ctl("operator", {"--dts", dts, "dts", "show", id});
  EXPECT_EQ(show_code, 0) << show;
  EXPECT_NE(show.find("begun by   spiffe://formica.local/transfer\n"), std::string::npos) << show;

  // The initiator commits; dtsd's confirm is taken: the debit is made.
  ASSERT_TRUE((*activity)->Commit().ok());
  std::pair<int64_t, int64_t> after;
  for (int i = 0; i < 200; ++i) {
    after = Account(dir_.File("bank-a.db"), "0");
    if (after.second == 0) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(after, std::make_pair(int64_t{900}, int64_t{0})) << bank->Output();
}

// A check-back of half messages goes only to a producer whose identity may
// produce to the message's topic: an identity that may produce nothing is
// refused its CheckBack stream; one that may produce elsewhere is never
// asked, and its answers are ignored; the topic's producer is asked. Nor
// does dmsd's DTS participant take a cancel from anyone but dtsd.
TEST_F(IdentityTest, AHalfMessageIsCheckedBackOnlyWithItsTopicsProducers) {
  std::string rules = dir_.File("permissions.yaml");
  std::ofstream(rules) << R"(rules:
  - identity: spiffe://formica.local/tester
    allow: [produce payments]
  - identity: spiffe://formica.local/bank-a
    allow: [produce audit]
  - identity: spiffe://formica.local/operator
    allow: [operate *]
  - identity: spiffe://formica.local/dmsd
    allow: [publish formica.dms.*, subscribe *]
)";
  StartDsrd();
  int dmsd_port = 0;
  auto dmsd = StartDaemon(
      "dms/dmsd", "dmsd",
      {"--data-dir", dir_.File("dmsd"), "--set", "security.permissions_file=" + rules, "--set",
       "transactions.check_after=100ms", "--set", "transactions.check_interval=100ms", "--set",
       "transactions.check_interval_max=100ms", "--set", "transactions.max_checks=1000", "--set",
       absl::StrCat("transactions.coordinator_identity=", kDtsd)},
      &dmsd_port);
  ASSERT_TRUE(dmsd);
  std::string dms = absl::StrCat("127.0.0.1:", dmsd_port);
  ASSERT_EQ(Ctl("operator", {"--dms", dms, "dms", "create-topic", "payments"}).first, 0);

  UseTlsAs("tester");
  auto as_tester = dms::v1::Broker::NewStub(grpc::CreateChannel(dms, ChannelCredentials()));
  dms::v1::PrepareRequest prepare;
  prepare.set_topic("payments");
  prepare.set_producer_group("tester");
  prepare.mutable_message()->set_body("refund 42");
  dms::v1::PrepareReply prepared;
  {
    grpc::ClientContext ctx;
    grpc::Status st = as_tester->Prepare(&ctx, prepare, &prepared);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  // dmsd's DTS participant takes phase two from dtsd only: the half
  // message's producer cannot cancel it that way either.
  {
    auto participant =
        dts::v1::Participant::NewStub(grpc::CreateChannel(dms, ChannelCredentials()));
    dts::v1::PhaseTwoRequest cancel;
    cancel.set_activity_id("any");
    cancel.set_action(prepared.transaction_id());
    grpc::ClientContext ctx;
    dts::v1::PhaseTwoResponse resp;
    grpc::Status st = participant->Cancel(&ctx, cancel, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_EQ(st.error_message(),
              absl::StrCat("identity 'spiffe://formica.local/tester' may not cancel actions of "
                           "participant 'formica.dms.Transactions': only '",
                           kDtsd, "' may"));
  }
  dms::v1::CheckAnswer hello;
  hello.set_producer_group("tester");

  // operator may produce nothing: its stream is refused.
  UseTlsAs("operator");
  auto as_operator = dms::v1::Broker::NewStub(grpc::CreateChannel(dms, ChannelCredentials()));
  {
    auto& broker = as_operator;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto stream = broker->CheckBack(&ctx);
    ASSERT_TRUE(stream->Write(hello));
    dms::v1::CheckRequest req;
    EXPECT_FALSE(stream->Read(&req)) << "asked about " << req.transaction_id();
    grpc::Status st = stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_EQ(st.error_message(),
              absl::StrCat("identity 'spiffe://formica.local/operator' may not check back half "
                           "messages of producer group 'tester': no rule in ",
                           rules, " allows it to produce anything"));
  }

  // bank-a may produce to "audit" only: connected for 1.5 s (many check
  // rounds), it is never asked about the "payments" message, and its
  // unasked answer (commit) changes nothing.
  UseTlsAs("bank-a");
  {
    auto broker = dms::v1::Broker::NewStub(grpc::CreateChannel(dms, ChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1500));
    auto stream = broker->CheckBack(&ctx);
    ASSERT_TRUE(stream->Write(hello));
    dms::v1::CheckAnswer forged;
    forged.set_transaction_id(prepared.transaction_id());
    forged.set_state(dms::v1::COMMIT);
    stream->Write(forged);
    dms::v1::CheckRequest req;
    EXPECT_FALSE(stream->Read(&req)) << "bank-a was asked about " << req.transaction_id();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  {
    grpc::ClientContext ctx;
    dms::v1::ListHalfMessagesRequest list;
    dms::v1::ListHalfMessagesReply halves;
    ASSERT_TRUE(as_operator->ListHalfMessages(&ctx, list, &halves).ok());
    ASSERT_EQ(halves.messages_size(), 1) << "the forged answer ended it";
    EXPECT_GT(halves.messages(0).checks(), 2);
    EXPECT_EQ(halves.messages(0).last_check(), "no producer of group 'tester' is connected");
  }
  EXPECT_TRUE(
      dmsd->WaitForOutput("a check-back answer is ignored: identity "
                          "'spiffe://formica.local/bank-a' may not produce 'payments'",
                          absl::Seconds(5)))
      << dmsd->Output();

  // tester, the topic's producer, is asked, and its answer ends it.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto stream = as_tester->CheckBack(&ctx);
    ASSERT_TRUE(stream->Write(hello));
    dms::v1::CheckRequest req;
    ASSERT_TRUE(stream->Read(&req));
    EXPECT_EQ(req.transaction_id(), prepared.transaction_id());
    EXPECT_EQ(req.topic(), "payments");
    dms::v1::CheckAnswer answer;
    answer.set_transaction_id(req.transaction_id());
    answer.set_state(dms::v1::ROLLBACK);
    ASSERT_TRUE(stream->Write(answer));
    dms::v1::ListHalfMessagesReply halves;
    for (int i = 0; i < 100; ++i) {
      grpc::ClientContext list_ctx;
      halves.Clear();
      ASSERT_TRUE(
          as_operator->ListHalfMessages(&list_ctx, dms::v1::ListHalfMessagesRequest(), &halves)
              .ok());
      if (halves.messages_size() == 0) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_EQ(halves.messages_size(), 0);
    stream->WritesDone();
    ctx.TryCancel();
    stream->Finish();
  }
}

}  // namespace
}  // namespace formica
