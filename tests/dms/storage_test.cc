// What dmsd keeps on disk, end to end: topics of every name the rule
// accepts survive a restart with every acknowledged message; names that
// cannot be safe directory names are refused; a topic directory that
// cannot be opened stops start-up (or is quarantined when the operator
// says so); after a damaged tail is cut no offset is handed out twice; a
// message whose consumers keep dying reaches the dead-letter queue; a
// finished transaction's outcome outlives a restart.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "dms_fixture.h"
#include "group_progress.h"
#include "rocksdb/db.h"
#include "topic.h"

namespace formica::dms {
namespace {

using formica::testing::Subprocess;
using testing::DmsTest;
using testing::Msg;
using testing::Seen;
namespace fs = std::filesystem;

class DmsStorageTest : public DmsTest {
 protected:
  // Disk damage after the data was synced: flips a byte near the end of the
  // record at offset 7 of a segment holding ten records of one size.
  static void FlipAByteOfTheEighthOfTenRecords(const std::string& segment) {
    uint64_t record = fs::file_size(segment) / 10;
    ASSERT_EQ(record * 10, fs::file_size(segment));
    std::fstream f(segment, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(7 * record + record - 2));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(7 * record + record - 2));
    f.put(static_cast<char>(c ^ 0x5a));
  }

  // SIGTERM, then the same data dir again.
  void Restart(const std::vector<std::string>& extra = {}) {
    ASSERT_EQ(dmsd_->Terminate(absl::Seconds(20)), 0) << dmsd_->Output();
    StartDmsd(extra);
  }

  grpc::Status CreateTopicStatus(const std::string& name) {
    grpc::ClientContext ctx;
    v1::CreateTopicRequest req;
    req.set_name(name);
    req.set_queues(1);
    v1::TopicInfo info;
    return broker_->CreateTopic(&ctx, req, &info);
  }

  v1::GetLagReply Lag(const std::string& group) {
    grpc::ClientContext ctx;
    v1::GetLagRequest req;
    req.set_group(group);
    v1::GetLagReply reply;
    grpc::Status st = broker_->GetLag(&ctx, req, &reply);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return reply;
  }

  // Consumes `topic` as `group` until `n` distinct messages are confirmed.
  std::set<std::string> ConsumeAll(const std::string& group, const std::string& topic, size_t n) {
    Seen seen;
    auto consumer = Consume(Options(group, topic, &seen), &seen);
    EXPECT_TRUE(seen.WaitConfirmed(n, absl::Seconds(20))) << topic;
    absl::SleepFor(absl::Milliseconds(100));  // anything extra would show now
    if (consumer != nullptr) consumer->Stop();
    return seen.Distinct();
  }

  // Starts dmsd expecting it to refuse: its exit code and output.
  std::pair<int, std::string> StartRefused(const std::vector<std::string>& extra = {}) {
    auto p = Subprocess::Start(DmsdCommand(extra),
                               dir_.File(absl::StrCat("refused.", ++refused_, ".log")));
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait(absl::Seconds(30));
    return {code, (*p)->Output()};
  }

  int refused_ = 0;
};

// Edge cases first, then names drawn across the whole alphabet and lengths.
std::vector<std::string> TopicNames() {
  std::vector<std::string> names = {"...",  "-",    "_",   "a.",  ".a",  "a..b", "-a", "0",
                                    "Ab",   "aB",   "AB",  "ab",  "^",   "x_-.", "Z",  "z",
                                    ".-_.", "....", "A.B", "a.b", "_A_", "_a_"};
  names.push_back(std::string(128, 'Q'));
  names.push_back(std::string(128, 'q'));
  names.push_back(std::string(127, '.') + "x");
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
  std::mt19937 random(20261202);
  for (int i = 0; i < 40; ++i) {
    size_t length = 1 + random() % 128;
    std::string name;
    for (size_t j = 0; j < length; ++j) name.push_back(alphabet[random() % alphabet.size()]);
    if (name == "." || name == "..") continue;
    names.push_back(name);
  }
  names.erase(std::remove(names.begin(), names.end(), "^"), names.end());  // not in the alphabet
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

TEST_F(DmsStorageTest, DotNamesAndUnsafeNamesAreRefusedOverTheWire) {
  for (std::string name : {".", ".."}) {
    grpc::Status st = CreateTopicStatus(name);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
    EXPECT_EQ(st.error_message(),
              absl::StrCat("topic name '", name, "' is not allowed: '", name,
                           "' means the current or parent directory in the paths names become"));
  }
  for (const std::string& name : {std::string("a/b"), std::string("^"), std::string("a b"),
                                  std::string(129, 'a'), std::string()}) {
    grpc::Status st = CreateTopicStatus(name);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
    EXPECT_THAT(st.error_message(), ::testing::HasSubstr("topic name")) << name;
  }
  // A group named ".." is refused too (the same rule for every name).
  auto consumer = Consumer::Start(
      [] {
        ConsumerOptions o;
        o.group = "..";
        o.topic = "missing";
        return o;
      }(),
      [](const ReceivedMessage&) { return ConsumeResult::kSuccess; }, rpc_.get());
  ASSERT_FALSE(consumer.ok());
  EXPECT_EQ(consumer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(consumer.status().message(), ::testing::HasSubstr("group '..' is not allowed"));
  // Nothing was written outside the topics directory (beside dmsd's own
  // fixed files: its stores and its audit trail).
  std::set<std::string> top;
  for (const auto& e : fs::directory_iterator(dir_.File("dmsd"))) {
    top.insert(e.path().filename().string());
  }
  EXPECT_EQ(top, (std::set<std::string>{"formica-audit.log", "meta", "progress", "topics"}));
}

TEST_F(DmsStorageTest, TopicsOfEveryAcceptedNameKeepEveryAcknowledgedMessageAcrossARestart) {
  std::vector<std::string> names = TopicNames();
  ASSERT_GE(names.size(), 60u);
  auto producer = NewProducer();
  for (const std::string& name : names) {
    grpc::Status created = CreateTopicStatus(name);
    ASSERT_TRUE(created.ok()) << name << ": " << created.error_message();
    for (int i = 0; i < 3; ++i) {
      auto r = producer->Send(name, Msg(absl::StrCat(name, "#", i)));
      ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    }
  }
  Restart();
  grpc::ClientContext ctx;
  v1::ListTopicsReply listed;
  ASSERT_TRUE(broker_->ListTopics(&ctx, v1::ListTopicsRequest(), &listed).ok());
  std::set<std::string> topics;
  for (const v1::TopicInfo& t : listed.topics()) topics.insert(t.name());
  EXPECT_EQ(topics, std::set<std::string>(names.begin(), names.end()));
  for (const std::string& name : names) {
    std::set<std::string> got = ConsumeAll("readers", name, 3);
    EXPECT_EQ(got, (std::set<std::string>{absl::StrCat(name, "#0"), absl::StrCat(name, "#1"),
                                          absl::StrCat(name, "#2")}))
        << name;
  }
  // One directory per topic, each named by the mapping, all inside topics/.
  std::set<std::string> dirs, expected;
  for (const auto& e : fs::directory_iterator(dir_.File("dmsd/topics"))) {
    dirs.insert(e.path().filename().string());
  }
  for (const std::string& name : names) expected.insert(TopicDirectory(name));
  EXPECT_EQ(dirs, expected);
  EXPECT_EQ(expected.size(), names.size()) << "two names share a directory";
  std::set<std::string> folded;
  for (const std::string& d : dirs) folded.insert(absl::AsciiStrToLower(d));
  EXPECT_EQ(folded.size(), dirs.size()) << "directories that differ only in case";
}

TEST_F(DmsStorageTest, TopicDirectoriesOfAnEarlierVersionStillOpen) {
  ASSERT_EQ(dmsd_->Terminate(absl::Seconds(20)), 0);
  // Earlier versions named a topic's directory by the name itself.
  for (const std::string& name : {std::string("Fund.Orders"), std::string("plain")}) {
    TopicOptions to;
    to.dir = dir_.File(absl::StrCat("dmsd/topics/", name));
    to.queues = 2;
    auto topic = Topic::Open(to, nullptr);
    ASSERT_TRUE(topic.ok()) << topic.status();
    for (int i = 0; i < 5; ++i) {
      v1::StoredMessage m;
      m.set_body(absl::StrCat(name, "/", i));
      m.set_born_unix_ms(absl::ToUnixMillis(absl::Now()));
      ASSERT_TRUE((*topic)->Produce(m).ok());
    }
  }
  StartDmsd();
  EXPECT_EQ(TopicDirectory("Fund.Orders"), "^fund.orders^120");
  EXPECT_TRUE(
      dmsd_->WaitForOutput("directory Fund.Orders renamed to ^fund.orders^120", absl::Seconds(5)))
      << dmsd_->Output();
  for (const std::string& name : {std::string("Fund.Orders"), std::string("plain")}) {
    std::set<std::string> got = ConsumeAll("old-readers", name, 5);
    EXPECT_EQ(got.size(), 5u) << name;
    for (int i = 0; i < 5; ++i) EXPECT_EQ(got.count(absl::StrCat(name, "/", i)), 1u) << name;
  }
  EXPECT_TRUE(fs::exists(dir_.File("dmsd/topics/^fund.orders^120/QUEUES")));
  EXPECT_FALSE(fs::exists(dir_.File("dmsd/topics/Fund.Orders")));
  // And it keeps working after another restart.
  auto producer = NewProducer();
  ASSERT_TRUE(producer->Send("Fund.Orders", Msg("Fund.Orders/new")).ok());
  Restart();
  std::set<std::string> got = ConsumeAll("old-readers", "Fund.Orders", 1);
  EXPECT_EQ(got, (std::set<std::string>{"Fund.Orders/new"}));
}

TEST_F(DmsStorageTest, ATopicDirectoryThatCannotBeOpenedStopsStartUpUnlessQuarantined) {
  const std::vector<std::string> small_files = {"--set", "storage.segment_bytes=4096"};
  dmsd_->Kill();
  StartDmsd(small_files);
  CreateTopic("kept", 1);
  CreateTopic("torn", 1);
  auto producer = NewProducer();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(producer->Send("kept", Msg(absl::StrCat("k", i))).ok());
  for (int i = 0; i < 3; ++i) {  // a log file each
    ASSERT_TRUE(producer->Send("torn", Msg(absl::StrCat(i, std::string(5000, 't')))).ok());
  }
  EXPECT_EQ(ConsumeAll("readers", "torn", 3).size(), 3u);
  ASSERT_EQ(dmsd_->Terminate(absl::Seconds(20)), 0);
  // What an earlier dmsd left for a topic named ".": queue logs right in
  // topics/ (topics/0/...), no QUEUES file beside them.
  fs::create_directories(dir_.File("dmsd/topics/0"));
  fs::copy(dir_.File("dmsd/topics/kept/0"), dir_.File("dmsd/topics/0/0"));
  // A creation cut short (an empty directory), and a directory no topic
  // has, without messages: skipped with a warning.
  fs::create_directories(dir_.File("dmsd/topics/halfmade"));
  fs::create_directories(dir_.File("dmsd/topics/not+a+topic"));

  auto [code, output] = StartRefused(small_files);
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, ::testing::HasSubstr(absl::StrCat("dmsd: cannot start: topic directory ",
                                                        dir_.File("dmsd/topics/0"),
                                                        " cannot be opened: it holds queue logs "
                                                        "but no QUEUES file")))
      << output;
  EXPECT_THAT(output, ::testing::HasSubstr("--quarantine-damaged-topics=true")) << output;
  EXPECT_TRUE(fs::exists(dir_.File("dmsd/topics/0/0"))) << "nothing is moved without the flag";

  // Queue logs in a directory no topic has: refused as well.
  fs::rename(dir_.File("dmsd/topics/0"), dir_.File("dmsd/topics/Not+A+Topic"));
  std::tie(code, output) = StartRefused(small_files);
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, ::testing::HasSubstr(absl::StrCat(
                          "topic directory ", dir_.File("dmsd/topics/Not+A+Topic"),
                          " cannot be opened: it holds queue logs but its name is not one dmsd "
                          "gives a topic")))
      << output;
  ASSERT_GT(fs::remove_all(dir_.File("dmsd/topics/Not+A+Topic")), 0u);

  // A topic whose oldest log file is damaged (newer ones follow it).
  {
    std::fstream f(dir_.File("dmsd/topics/torn/0/00000000000000000000.log"),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(30);
    f.put('!');
  }
  std::tie(code, output) = StartRefused(small_files);
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, ::testing::HasSubstr(absl::StrCat(
                          "topic directory ", dir_.File("dmsd/topics/torn"), " cannot be opened: ",
                          dir_.File("dmsd/topics/torn/0/00000000000000000000.log"),
                          " is damaged at byte 0")))
      << output;
  EXPECT_THAT(output, ::testing::HasSubstr("newer segments follow it")) << output;

  // With the flag, it is moved aside (and said), and dmsd serves the rest.
  std::vector<std::string> quarantine = small_files;
  quarantine.push_back("--quarantine-damaged-topics=true");
  StartDmsd(quarantine);
  std::string log = dmsd_->Output();
  EXPECT_THAT(
      log, ::testing::HasSubstr(absl::StrCat(dir_.File("dmsd/topics/torn"), " cannot be opened")));
  EXPECT_THAT(log, ::testing::HasSubstr("moved to " + dir_.File("dmsd/quarantine/torn.")));
  EXPECT_THAT(log, ::testing::HasSubstr("halfmade holds no QUEUES file and no messages"));
  EXPECT_THAT(log, ::testing::HasSubstr("not+a+topic is not a topic directory"));
  EXPECT_FALSE(fs::exists(dir_.File("dmsd/topics/torn")));
  size_t quarantined = 0;
  for (const auto& e : fs::directory_iterator(dir_.File("dmsd/quarantine"))) {
    EXPECT_TRUE(fs::exists(e.path() / "0" / "00000000000000000000.log")) << e.path();
    ++quarantined;
  }
  EXPECT_EQ(quarantined, 1u);
  EXPECT_EQ(ConsumeAll("after", "kept", 4), (std::set<std::string>{"k0", "k1", "k2", "k3"}));
  // Created again, the topic continues above what its groups acknowledged.
  CreateTopic("torn", 1);
  auto again = producer->Send("torn", Msg("torn-again"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->offset, 3u);
  EXPECT_EQ(ConsumeAll("readers", "torn", 1), (std::set<std::string>{"torn-again"}));
}

TEST_F(DmsStorageTest, AfterADamagedTailIsCutNoOffsetIsReusedAndEveryGroupGetsNewMessages) {
  CreateTopic("journal", 1);
  auto producer = NewProducer();
  // The receipt of one send (with a dedup key if one is given).
  auto send = [&](const std::string& body, const std::string& dedup_key = "") {
    OutgoingMessage m = Msg(body);
    m.dedup_key = dedup_key;
    absl::StatusOr<SendReceipt> r = producer->Send("journal", m);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : SendReceipt{.offset = UINT64_MAX};
  };
  // Ten records of one size, each with a dedup key.
  auto send_m = [&](int i) {
    EXPECT_EQ(send(absl::StrCat("m", i), absl::StrCat("d", i)).offset, static_cast<uint64_t>(i));
  };
  for (int i = 0; i < 5; ++i) send_m(i);
  EXPECT_EQ(ConsumeAll("slow", "journal", 5).size(), 5u);  // acks offsets 0..4
  for (int i = 5; i < 10; ++i) send_m(i);
  EXPECT_EQ(ConsumeAll("fast", "journal", 10).size(), 10u);  // acks offsets 0..9
  ASSERT_EQ(dmsd_->Terminate(absl::Seconds(20)), 0);
  // Disk damage after the data was synced: a flipped byte in the record at
  // offset 7 (the ten records are of one size).
  std::string seg = dir_.File("dmsd/topics/journal/0/00000000000000000000.log");
  ASSERT_NO_FATAL_FAILURE(FlipAByteOfTheEighthOfTenRecords(seg));
  StartDmsd();
  EXPECT_TRUE(dmsd_->WaitForOutput("cut a damaged tail", absl::Seconds(5))) << dmsd_->Output();
  std::string out = dmsd_->Output();
  EXPECT_THAT(out, ::testing::HasSubstr("offsets 7 to 9 were handed out before")) << out;
  EXPECT_THAT(out, ::testing::HasSubstr(
                       "new messages start at offset 10 (reached by the dedup index, group fast)"))
      << out;
  EXPECT_THAT(out, ::testing::HasSubstr(
                       "group slow: lost 3 messages it never acknowledged, offsets 7 to 9"))
      << out;
  EXPECT_THAT(out, ::testing::HasSubstr("group fast: lost nothing")) << out;
  // New messages take new offsets.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(send(absl::StrCat("n", i)).offset, 10u + i);
  // Lag counts what each group will get: fast the 4 new ones; slow 5 and 6
  // (kept) and the 4 new ones, not the lost 7 to 9.
  EXPECT_EQ(Lag("fast").total(), 4u);
  EXPECT_EQ(Lag("slow").total(), 6u);
  EXPECT_EQ(ConsumeAll("fast", "journal", 4), (std::set<std::string>{"n0", "n1", "n2", "n3"}));
  EXPECT_EQ(ConsumeAll("slow", "journal", 6),
            (std::set<std::string>{"m5", "m6", "n0", "n1", "n2", "n3"}));
  EXPECT_EQ(Lag("fast").total(), 0u);
  EXPECT_EQ(Lag("slow").total(), 0u);
  // A lost message sent again with its dedup key is stored again (its key
  // was forgotten with it); a kept one is still a duplicate.
  SendReceipt stored = send("m8", "d8");
  EXPECT_FALSE(stored.duplicate);
  EXPECT_EQ(stored.offset, 14u);
  SendReceipt duplicate = send("m6", "d6");
  EXPECT_TRUE(duplicate.duplicate);
  EXPECT_EQ(duplicate.offset, 6u);
  EXPECT_EQ(ConsumeAll("fast", "journal", 1), (std::set<std::string>{"m8"}));
  // A new group gets what is kept, never a lost offset's placeholder.
  EXPECT_EQ(ConsumeAll("fresh", "journal", 12),
            (std::set<std::string>{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m8", "n0", "n1", "n2",
                                   "n3"}));
  // And after another restart nothing moves back.
  Restart();
  EXPECT_EQ(send("after-restart").offset, 15u);
  EXPECT_EQ(ConsumeAll("fast", "journal", 1), (std::set<std::string>{"after-restart"}));
}

TEST_F(DmsStorageTest, ADedupKeyLeftPointingAtALostOrOtherMessageIsNoDuplicate) {
  CreateTopic("ledger", 1);
  auto producer = NewProducer();
  auto send = [&](const std::string& body, const std::string& dedup_key) {
    OutgoingMessage m = Msg(body);
    m.dedup_key = dedup_key;
    absl::StatusOr<SendReceipt> r = producer->Send("ledger", m);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : SendReceipt{.offset = UINT64_MAX};
  };
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(send(absl::StrCat("m", i), absl::StrCat("d", i)).offset, static_cast<uint64_t>(i));
  }
  ASSERT_EQ(dmsd_->Terminate(absl::Seconds(20)), 0);
  // A damaged tail from offset 7 on: placeholders take offsets 7 to 9.
  std::string seg = dir_.File("dmsd/topics/ledger/0/00000000000000000000.log");
  ASSERT_NO_FATAL_FAILURE(FlipAByteOfTheEighthOfTenRecords(seg));
  StartDmsd();
  EXPECT_TRUE(dmsd_->WaitForOutput("offsets 7 to 9 were handed out before", absl::Seconds(5)))
      << dmsd_->Output();
  ASSERT_EQ(dmsd_->Terminate(absl::Seconds(20)), 0);
  // The dedup index as a start-up stopped after writing the placeholders
  // (before it forgot the lost keys) leaves it: d8 names the placeholder at
  // offset 8, and d9 names offset 5, which holds another message.
  {
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir_.File("dmsd/meta"), &raw).ok());
    std::unique_ptr<rocksdb::DB> meta(raw);
    std::string now = absl::StrCat(absl::ToUnixMillis(absl::Now()));
    std::string prefix = absl::StrCat("d/ledger", std::string(1, '\0'));
    ASSERT_TRUE(meta->Put(rocksdb::WriteOptions(), prefix + "d8", "0 8 " + now).ok());
    ASSERT_TRUE(meta->Put(rocksdb::WriteOptions(), prefix + "d9", "0 5 " + now).ok());
  }
  StartDmsd();
  // Sent again, both are stored (not answered with what the keys name);
  // a kept message is still a duplicate.
  SendReceipt m8 = send("m8", "d8");
  EXPECT_FALSE(m8.duplicate);
  EXPECT_EQ(m8.offset, 10u);
  SendReceipt m9 = send("m9", "d9");
  EXPECT_FALSE(m9.duplicate);
  EXPECT_EQ(m9.offset, 11u);
  SendReceipt m6 = send("m6", "d6");
  EXPECT_TRUE(m6.duplicate);
  EXPECT_EQ(m6.offset, 6u);
  EXPECT_EQ(ConsumeAll("readers", "ledger", 9),
            (std::set<std::string>{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m8", "m9"}));
}

TEST_F(DmsStorageTest, AGroupFarPastTheLogIsAWrongDataDirectoryNotADamagedTail) {
  CreateTopic("far", 1);
  ASSERT_EQ(dmsd_->Terminate(absl::Seconds(20)), 0);
  {
    auto progress = GroupProgress::Open(dir_.File("dmsd/progress"));
    ASSERT_TRUE(progress.ok()) << progress.status();
    ASSERT_TRUE((*progress)->Ack("g", "far", 0, 5000000, 0).ok());
  }
  auto [code, output] = StartRefused();
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, ::testing::HasSubstr(absl::StrCat(
                          "topic directory ", dir_.File("dmsd/topics/far"),
                          " cannot be opened: topic far queue 0: the log ends at offset 0 but "
                          "group g reached offset 5000001; more than 4194304 offsets lost is not "
                          "a damaged tail: check the data directory")))
      << output;
}

TEST_F(DmsStorageTest, AMessageWhoseConsumersKeepDyingReachesTheDeadLetterQueue) {
  CreateTopic("poison", 1);
  auto producer = NewProducer();
  ASSERT_TRUE(producer->Send("poison", Msg("kills-its-consumer")).ok());
  constexpr int kMaxAttempts = 3;
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    // A consumer takes the message and dies: its stream ends, no ack.
    grpc::ClientContext ctx;
    auto stream = broker_->Consume(&ctx);
    v1::ConsumeRequest sub;
    sub.mutable_subscribe()->set_group("victims");
    sub.mutable_subscribe()->set_topic("poison");
    sub.mutable_subscribe()->set_max_attempts(kMaxAttempts);
    ASSERT_TRUE(stream->Write(sub));
    v1::ConsumeReply reply;
    ASSERT_TRUE(stream->Read(&reply));  // subscribed
    while (reply.messages_size() == 0) ASSERT_TRUE(stream->Read(&reply));
    ASSERT_EQ(reply.messages_size(), 1);
    EXPECT_EQ(reply.messages(0).message().body(), "kills-its-consumer");
    EXPECT_EQ(reply.messages(0).attempt(), attempt) << "every delivery counts";
    ctx.TryCancel();
    stream->Finish().IgnoreError();
  }
  // Its attempts used up, it is a dead letter, not delivered again.
  v1::ListDeadLettersReply letters = WaitForDeadLetters("victims", 1, absl::Seconds(10));
  ASSERT_EQ(letters.letters_size(), 1);
  EXPECT_EQ(letters.letters(0).attempts(), kMaxAttempts);
  EXPECT_EQ(letters.letters(0).message().body(), "kills-its-consumer");
  EXPECT_THAT(letters.letters(0).reason(), ::testing::HasSubstr("went away without an ack"));
  ConsumerOptions o;
  o.group = "victims";
  o.topic = "poison";
  o.max_attempts = kMaxAttempts;
  Seen seen;
  auto consumer = Consume(o, &seen);
  absl::SleepFor(absl::Seconds(1));
  EXPECT_TRUE(seen.Distinct().empty()) << "a dead letter was delivered again";
  EXPECT_EQ(Lag("victims").total(), 0u);
}

TEST_F(DmsStorageTest, AMessageOutWhenDmsdStopsIsNotDeadLetteredForIt) {
  CreateTopic("patient", 1);
  auto producer = NewProducer();
  ASSERT_TRUE(producer->Send("patient", Msg("on-its-last-attempt")).ok());
  // Its one attempt is out to a consumer when dmsd is stopped: the consumer
  // could not ack it, so it is delivered again after the restart.
  grpc::ClientContext ctx;
  auto stream = broker_->Consume(&ctx);
  v1::ConsumeRequest sub;
  sub.mutable_subscribe()->set_group("patients");
  sub.mutable_subscribe()->set_topic("patient");
  sub.mutable_subscribe()->set_max_attempts(1);
  ASSERT_TRUE(stream->Write(sub));
  v1::ConsumeReply reply;
  ASSERT_TRUE(stream->Read(&reply));  // subscribed
  while (reply.messages_size() == 0) ASSERT_TRUE(stream->Read(&reply));
  EXPECT_EQ(reply.messages(0).attempt(), 1);
  Restart();
  stream->Finish().IgnoreError();
  EXPECT_EQ(WaitForDeadLetters("patients", 1, absl::Milliseconds(500)).letters_size(), 0);
  Seen seen;
  ConsumerOptions o = Options("patients", "patient", &seen);
  o.max_attempts = 1;
  auto consumer = Consume(o, &seen);
  EXPECT_TRUE(seen.WaitConfirmed(1, absl::Seconds(10)));
}

TEST_F(DmsStorageTest, ARepeatedEndTransactionAfterARestartAnswersTheFirstOutcome) {
  CreateTopic("orders", 2);
  auto prepare = [&](const std::string& body) {
    grpc::ClientContext ctx;
    v1::PrepareRequest req;
    req.set_topic("orders");
    req.set_producer_group("order-service");
    req.mutable_message()->set_body(body);
    v1::PrepareReply reply;
    grpc::Status st = broker_->Prepare(&ctx, req, &reply);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return reply.transaction_id();
  };
  auto end_txn = [&](const std::string& id, bool commit, v1::EndTransactionReply* reply) {
    grpc::ClientContext ctx;
    v1::EndTransactionRequest req;
    req.set_transaction_id(id);
    req.set_commit(commit);
    return broker_->EndTransaction(&ctx, req, reply);
  };
  std::string committed = prepare("order-1");
  std::string rolled_back = prepare("order-2");
  v1::EndTransactionReply first;
  ASSERT_TRUE(end_txn(committed, true, &first).ok());
  v1::EndTransactionReply ignored;
  ASSERT_TRUE(end_txn(rolled_back, false, &ignored).ok());
  Restart();
  v1::EndTransactionReply again;
  grpc::Status st = end_txn(committed, true, &again);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(again.receipt().queue(), first.receipt().queue());
  EXPECT_EQ(again.receipt().offset(), first.receipt().offset());
  EXPECT_TRUE(end_txn(rolled_back, false, &ignored).ok());
  st = end_txn(committed, false, &ignored);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), ::testing::HasSubstr("was already committed"));
  st = end_txn(rolled_back, true, &ignored);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), ::testing::HasSubstr("was already rolled back"));
  // The committed message is in its topic once.
  Seen seen;
  auto consumer = Consume(Options("shipping", "orders", &seen), &seen);
  ASSERT_TRUE(seen.WaitConfirmed(1, absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(300));
  absl::MutexLock lock(&seen.mu);
  EXPECT_EQ(seen.handled, (std::vector<std::string>{"order-1"}));
}

}  // namespace
}  // namespace formica::dms
