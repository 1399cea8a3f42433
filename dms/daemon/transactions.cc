#include "transactions.h"

#include <grpcpp/grpcpp.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <set>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/participant.h"
#include "formica/internal/credentials.h"
#include "formica/internal/permissions.h"
#include "formica/rpc/client.h"
#include "formica/rpc/server.h"
#include "now_ms.h"

namespace formica::dms {
namespace {

constexpr char kHalfPrefix[] = "h/";
// Finished transactions' outcomes, kept (across restarts) so a repeated End
// answers as the first did: "f/<id>" -> "<c|r> <finished unix ms> <receipt>".
constexpr char kFinishedPrefix[] = "f/";
constexpr size_t kRememberFinished = 100000;  // the newest outcomes kept
constexpr char kCoordinator[] = "formica.dts.v1.Coordinator";

}  // namespace

class Transactions::Impl final : public dts::v1::Participant::Service {
 public:
  struct Checker {
    uint64_t id = 0;
    std::string group;
    std::string identity;  // of its certificate; asked only about topics it may produce to
    std::deque<v1::CheckRequest> outbox;
    bool closed = false;
  };

  TransactionOptions options;
  rocksdb::DB* meta = nullptr;
  rpc::Client* rpc = nullptr;
  Clock* clock = nullptr;
  ProduceFn produce;
  std::string boot;  // makes transaction ids unique across restarts
  std::atomic<uint64_t> seq{0};

  absl::Mutex mu;
  std::map<std::string, v1::HalfMessage> halves ABSL_GUARDED_BY(mu);
  std::set<std::string> resolving ABSL_GUARDED_BY(mu);       // being committed or rolled back
  std::map<std::string, bool> finished ABSL_GUARDED_BY(mu);  // recent outcomes: id -> committed
  std::deque<std::string> finished_order ABSL_GUARDED_BY(mu);
  std::map<std::string, v1::Receipt> receipts ABSL_GUARDED_BY(mu);
  std::map<uint64_t, std::shared_ptr<Checker>> checkers ABSL_GUARDED_BY(mu);
  uint64_t next_checker ABSL_GUARDED_BY(mu) = 1;
  size_t round_robin ABSL_GUARDED_BY(mu) = 0;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::thread loop;

  static std::string Key(const std::string& id) { return kHalfPrefix + id; }
  static std::string FinishedKey(const std::string& id) { return kFinishedPrefix + id; }

  // Remembers an outcome in memory, forgetting (also on disk) the oldest
  // beyond kRememberFinished.
  void Remember(const std::string& id, bool commit, const v1::Receipt& receipt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    finished[id] = commit;
    if (commit) receipts[id] = receipt;
    finished_order.push_back(id);
    if (finished_order.size() > kRememberFinished) {
      const std::string& oldest = finished_order.front();
      meta->Delete(rocksdb::WriteOptions(), FinishedKey(oldest)).PermitUncheckedError();
      finished.erase(oldest);
      receipts.erase(oldest);
      finished_order.pop_front();
    }
  }

  absl::Status LoadFinished() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    struct Outcome {
      int64_t at = 0;
      std::string id;
      bool commit = false;
      v1::Receipt receipt;
    };
    std::vector<Outcome> outcomes;
    std::unique_ptr<rocksdb::Iterator> it(meta->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(kFinishedPrefix); it->Valid() && it->key().starts_with(kFinishedPrefix);
         it->Next()) {
      Outcome o;
      o.id = it->key().ToString().substr(sizeof(kFinishedPrefix) - 1);
      std::string value = it->value().ToString();
      size_t space1 = value.find(' ');
      size_t space2 = space1 == std::string::npos ? space1 : value.find(' ', space1 + 1);
      if (space2 == std::string::npos || (value[0] != 'c' && value[0] != 'r') ||
          !absl::SimpleAtoi(value.substr(space1 + 1, space2 - space1 - 1), &o.at) ||
          !o.receipt.ParseFromString(value.substr(space2 + 1))) {
        return absl::DataLossError(
            absl::StrCat("the outcome of transaction ", o.id, " is corrupt"));
      }
      o.commit = value[0] == 'c';
      outcomes.push_back(std::move(o));
    }
    if (!it->status().ok()) return absl::InternalError(it->status().ToString());
    std::sort(outcomes.begin(), outcomes.end(),
              [](const Outcome& a, const Outcome& b) { return a.at < b.at; });
    for (const Outcome& o : outcomes) Remember(o.id, o.commit, o.receipt);
    return absl::OkStatus();
  }

  absl::Status Persist(const v1::HalfMessage& h, bool sync) {
    std::string bytes;
    h.SerializeToString(&bytes);
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    rocksdb::Status s = meta->Put(wo, Key(h.transaction_id()), bytes);
    if (!s.ok())
      return absl::InternalError(absl::StrCat("cannot store a half message: ", s.ToString()));
    return absl::OkStatus();
  }

  absl::Status Load() {
    std::unique_ptr<rocksdb::Iterator> it(meta->NewIterator(rocksdb::ReadOptions()));
    absl::MutexLock lock(&mu);
    for (it->Seek(kHalfPrefix); it->Valid() && it->key().starts_with(kHalfPrefix); it->Next()) {
      v1::HalfMessage h;
      if (!h.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        return absl::DataLossError(
            absl::StrCat("half message ", it->key().ToString(), " is corrupt"));
      }
      halves[h.transaction_id()] = std::move(h);
    }
    if (!it->status().ok()) return absl::InternalError(it->status().ToString());
    if (!halves.empty()) SPDLOG_INFO("{} undecided half messages reloaded", halves.size());
    return LoadFinished();
  }

  absl::StatusOr<std::string> Prepare(const std::string& topic, v1::StoredMessage message,
                                      const std::string& activity_id) {
    std::string id = absl::StrCat(boot, "-", seq.fetch_add(1) + 1);
    // An activity its initiator began: stored, then reported back through
    // the reply (the commit carries it to dtsd); one begun at dtsd:
    // enlisted first.
    const bool joined = !activity_id.empty() && dts::JoinsThroughReply(activity_id);
    if (!activity_id.empty() && !joined) {
      // Enlisted first: once the activity knows the action, its outcome
      // decides the message, whatever happens next.
      rpc::CallOptions co;
      co.timeout = absl::Seconds(5);
      co.inherit_current = false;
      dts::v1::EnlistRequest req;
      req.set_activity_id(activity_id);
      req.set_participant(options.participant);
      req.set_action(id);
      req.set_payload(id);
      absl::Status st =
          rpc->Call(kCoordinator, co,
                    [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
                      dts::v1::EnlistResponse resp;
                      return dts::v1::Coordinator::NewStub(channel)->Enlist(ctx, req, &resp);
                    });
      if (!st.ok()) {
        return absl::Status(st.code(),
                            absl::StrCat("cannot join activity ", activity_id, ": ", st.message()));
      }
    }
    v1::HalfMessage h;
    h.set_transaction_id(id);
    h.set_topic(topic);
    *h.mutable_message() = std::move(message);
    h.set_activity_id(activity_id);
    h.set_prepared_unix_ms(NowMs(*clock));
    h.set_next_check_unix_ms(NowMs(*clock) + absl::ToInt64Milliseconds(options.check_after));
    if (absl::Status st = Persist(h, /*sync=*/true); !st.ok()) return st;
    {
      absl::MutexLock lock(&mu);
      halves[id] = std::move(h);
    }
    // The action is named by the transaction id (confirm and cancel take it). A
    // report that reaches no one is settled by the check with dtsd below.
    if (joined) dts::ReportJoinedTry(activity_id, options.participant, id);
    return id;
  }

  // Commits or rolls back `id`, once; a repeat of the same outcome is fine.
  absl::StatusOr<v1::Receipt> End(const std::string& id, bool commit, absl::string_view why) {
    v1::HalfMessage h;
    {
      absl::MutexLock lock(&mu);
      auto idle = [this, &id]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return resolving.count(id) == 0; };
      mu.Await(absl::Condition(&idle));
      auto it = halves.find(id);
      if (it == halves.end()) {
        if (auto f = finished.find(id); f != finished.end()) {
          if (f->second != commit) {
            return absl::FailedPreconditionError(absl::StrCat(
                "transaction ", id, " was already ", f->second ? "committed" : "rolled back"));
          }
          return receipts.count(id) ? receipts[id] : v1::Receipt();
        }
        return absl::NotFoundError(
            absl::StrCat("transaction ", id, " is unknown (or finished longer ago than the last ",
                         kRememberFinished, " transactions)"));
      }
      h = it->second;
      resolving.insert(id);
    }
    v1::Receipt receipt;
    absl::Status st;
    if (commit) {
      v1::StoredMessage m = h.message();
      if (m.dedup_key().empty()) m.set_dedup_key(absl::StrCat("txn:", id));
      // It enters its topic now: its dedup window starts here.
      m.set_born_unix_ms(NowMs(*clock));
      absl::StatusOr<v1::Receipt> r = produce(h.topic(), std::move(m));
      if (r.ok()) {
        receipt = *r;
      } else {
        st = r.status();
      }
    }
    if (st.ok()) {
      // The half message goes and its outcome stays, in one write.
      rocksdb::WriteBatch batch;
      batch.Delete(Key(id));
      batch.Put(FinishedKey(id), absl::StrCat(commit ? "c " : "r ", NowMs(*clock), " ",
                                              receipt.SerializeAsString()));
      rocksdb::WriteOptions sync;
      sync.sync = true;
      rocksdb::Status s = meta->Write(sync, &batch);
      if (!s.ok()) st = absl::InternalError(s.ToString());
    }
    absl::MutexLock lock(&mu);
    resolving.erase(id);
    if (!st.ok()) return st;
    halves.erase(id);
    Remember(id, commit, receipt);
    (void)why;  // for the debug log only
    SPDLOG_DEBUG("transaction {} {} ({})", id, commit ? "committed" : "rolled back",
                 std::string(why));
    return receipt;
  }

  absl::Duration Backoff(int checks) const {
    absl::Duration d = options.check_interval;
    for (int i = 1; i < checks && d < options.check_interval_max; ++i) d *= 2;
    return std::min(d, options.check_interval_max);
  }

  // One pass over the half messages that are due, within the rate limit.
  void CheckDue(int budget) {
    int64_t now = NowMs(*clock);
    std::vector<v1::HalfMessage> due;
    {
      absl::MutexLock lock(&mu);
      for (auto& [id, h] : halves) {
        if (!h.parked() && resolving.count(id) == 0 && h.next_check_unix_ms() <= now) {
          due.push_back(h);
        }
      }
    }
    // The longest waiting first; a failing one moves back behind the others.
    std::sort(due.begin(), due.end(), [](const v1::HalfMessage& a, const v1::HalfMessage& b) {
      return a.next_check_unix_ms() < b.next_check_unix_ms();
    });
    if (due.size() > static_cast<size_t>(budget)) due.resize(static_cast<size_t>(budget));
    for (v1::HalfMessage& h : due) {
      {
        absl::MutexLock lock(&mu);
        if (stopping) return;
      }
      if (!h.activity_id().empty()) {
        CheckActivity(h);
      } else {
        AskProducer(h);
      }
    }
  }

  // Records a check's outcome; parks the message once its checks are used.
  void Checked(const std::string& id, bool counted, const std::string& outcome) {
    absl::MutexLock lock(&mu);
    auto it = halves.find(id);
    if (it == halves.end() || resolving.count(id) > 0) return;  // being ended: not written back
    v1::HalfMessage& h = it->second;
    if (counted) h.set_checks(h.checks() + 1);
    h.set_last_check(outcome);
    h.set_next_check_unix_ms(NowMs(*clock) +
                             absl::ToInt64Milliseconds(Backoff(std::max(1, h.checks()))));
    if (h.checks() >= options.max_checks && !h.parked()) {
      h.set_parked(true);
      SPDLOG_WARN(
          "half message {} (topic {}) parked after {} checks, last: {}; `formicactl dms half` "
          "lists it, `formicactl dms half --resume` checks it again",
          id, h.topic(), h.checks(), outcome);
    }
    if (absl::Status st = Persist(h, /*sync=*/false); !st.ok()) {
      SPDLOG_ERROR("{}", std::string(st.message()));
    }
  }

  void CheckActivity(const v1::HalfMessage& h) {
    rpc::CallOptions co;
    co.timeout = absl::Seconds(2);
    co.idempotent = true;
    co.inherit_current = false;
    // resolve: the outcome, and for an activity dtsd never heard decided
    // (its report lost) once past its deadline, its rollback recorded.
    dts::v1::BatchRequest req;
    dts::v1::ActivityRef* ref = req.add_ops()->mutable_resolve();
    ref->set_activity_id(h.activity_id());
    dts::v1::JoinedAction* mine = ref->add_actions();
    mine->set_participant(options.participant);
    mine->set_action(h.transaction_id());
    dts::v1::BatchResponse resp;
    absl::Status st =
        rpc->Call(kCoordinator, co,
                  [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
                    return dts::v1::Coordinator::NewStub(channel)->Batch(ctx, req, &resp);
                  });
    if (st.ok() && resp.results_size() != 1) st = absl::InternalError("dtsd answered no result");
    if (st.ok() && resp.results(0).code() != 0) {
      st = absl::Status(static_cast<absl::StatusCode>(resp.results(0).code()),
                        resp.results(0).message());
    }
    dts::v1::OpResult activity = st.ok() ? resp.results(0) : dts::v1::OpResult();
    if (!st.ok()) {
      Checked(h.transaction_id(), true,
              absl::StrCat("asking dtsd about activity ", h.activity_id(), ": ", st.message()));
      return;
    }
    switch (activity.state()) {
      case dts::v1::COMMITTING:
      case dts::v1::COMMITTED:
        Resolve(h.transaction_id(), true, "its activity committed");
        return;
      case dts::v1::ROLLING_BACK:
      case dts::v1::ROLLED_BACK:
        Resolve(h.transaction_id(), false, "its activity rolled back");
        return;
      default:
        // Still running: its own deadline will decide it; not a failed check.
        Checked(h.transaction_id(), false, "its activity is still active");
    }
  }

  void Resolve(const std::string& id, bool commit, absl::string_view why) {
    absl::StatusOr<v1::Receipt> r = End(id, commit, why);
    if (!r.ok() && !absl::IsNotFound(r.status())) {
      Checked(id, true,
              absl::StrCat(commit ? "commit" : "rollback", " failed: ", r.status().message()));
    }
  }

  void AskProducer(const v1::HalfMessage& h) {
    const std::string& group = h.message().producer_group();
    // Only checkers whose identity may produce to the topic are asked; the
    // permissions are looked up outside `mu` (they may read their file).
    std::set<std::string> allowed;
    {
      absl::MutexLock lock(&mu);
      for (auto& [cid, c] : checkers) {
        if (c->group == group && !c->closed) allowed.insert(c->identity);
      }
    }
    for (auto it = allowed.begin(); it != allowed.end();) {
      it = CheckPermission(*it, "produce", h.topic()).ok() ? std::next(it) : allowed.erase(it);
    }
    std::shared_ptr<Checker> chosen;
    {
      absl::MutexLock lock(&mu);
      std::vector<std::shared_ptr<Checker>> of_group;
      for (auto& [cid, c] : checkers) {
        if (c->group == group && !c->closed && allowed.count(c->identity) > 0) {
          of_group.push_back(c);
        }
      }
      if (!of_group.empty()) {
        chosen = of_group[round_robin++ % of_group.size()];
        v1::CheckRequest& req = chosen->outbox.emplace_back();
        req.set_transaction_id(h.transaction_id());
        req.set_topic(h.topic());
        *req.mutable_message() = h.message();
        req.set_check(h.checks() + 1);
      }
    }
    Checked(h.transaction_id(), true,
            chosen == nullptr ? absl::StrCat("no producer of group '", group, "' is connected")
                              : absl::StrCat("asked a producer of group '", group, "'"));
  }

  void Loop() {
    absl::Time last = clock->Now();
    while (true) {
      {
        absl::MutexLock lock(&mu);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return stopping; };
        if (mu.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(100))) return;
      }
      absl::Time now = clock->Now();
      int budget = std::max(
          1, static_cast<int>(options.checks_per_second * absl::ToDoubleSeconds(now - last)));
      last = now;
      CheckDue(budget);
    }
  }

  static grpc::Status StoppingStatus() {
    return ToGrpcStatus(
        absl::UnavailableError("dmsd is stopping; connect the checker to another broker or later"));
  }

  // A checker answers only about half messages of topics its identity may
  // produce to (what it could have ended itself).
  absl::Status MayAnswer(const std::string& identity, const std::string& id) {
    std::string topic;
    {
      absl::MutexLock lock(&mu);
      auto it = halves.find(id);
      if (it == halves.end()) return absl::OkStatus();  // ended: the answer changes nothing
      topic = it->second.topic();
    }
    return CheckPermission(identity, "produce", topic);
  }

  grpc::Status CheckBack(CheckBackStream& stream) {
    v1::CheckAnswer first;
    if (!stream.Read(&first)) {
      absl::MutexLock lock(&mu);
      return stopping ? StoppingStatus() : grpc::Status::OK;
    }
    if (first.producer_group().empty()) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          "the first message on a CheckBack stream names the producer group"));
    }
    auto checker = std::make_shared<Checker>();
    checker->group = first.producer_group();
    checker->identity = PeerIdentity(*stream.context()->auth_context());
    // With a permissions file: only an identity that may produce checks
    // back, and only about half messages of topics it may produce to.
    if (absl::Status st = CheckPermissionOnAny(
            checker->identity, "produce",
            absl::StrCat("check back half messages of producer group '", checker->group, "'"));
        !st.ok()) {
      SPDLOG_WARN("{}", std::string(st.message()));
      return ToGrpcStatus(st);
    }
    {
      absl::MutexLock lock(&mu);
      checker->id = next_checker++;
      checkers[checker->id] = checker;
    }
    std::thread reader([&] {
      v1::CheckAnswer answer;
      while (stream.Read(&answer)) {
        const std::string& id = answer.transaction_id();
        if (absl::Status st = MayAnswer(checker->identity, id); !st.ok()) {
          SPDLOG_WARN("a check-back answer is ignored: {}", std::string(st.message()));
          continue;
        }
        if (!answer.error().empty()) {
          Checked(id, false, absl::StrCat("the producer's checker failed: ", answer.error()));
        } else if (answer.state() == v1::COMMIT) {
          Resolve(id, true, "its producer said commit");
        } else if (answer.state() == v1::ROLLBACK) {
          Resolve(id, false, "its producer said roll back");
        } else {
          Checked(id, false, "its producer does not know yet");
        }
      }
      absl::MutexLock lock(&mu);
      checker->closed = true;
    });
    grpc::Status result = grpc::Status::OK;
    while (true) {
      std::vector<v1::CheckRequest> out;
      {
        absl::MutexLock lock(&mu);
        auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
          return stopping || checker->closed || !checker->outbox.empty();
        };
        mu.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
        if (stopping) {
          result = StoppingStatus();
          break;
        }
        if (checker->closed) break;
        out.assign(checker->outbox.begin(), checker->outbox.end());
        checker->outbox.clear();
      }
      if (stream.IsCancelled()) break;
      bool ok = true;
      for (const v1::CheckRequest& req : out) ok = ok && stream.Write(req);
      if (!ok) break;
    }
    // Frees the reader without cancelling the call, so `result` reaches the
    // producer.
    stream.StopReading();
    reader.join();
    absl::MutexLock lock(&mu);
    checkers.erase(checker->id);
    return result;
  }

  // formica.dts.v1.Participant
  // Phase two comes only from dtsd's identity, when one is configured.
  absl::Status CheckCoordinator(grpc::ServerContext* ctx, absl::string_view act) {
    return CheckPeerIs(ctx, options.coordinator_identity,
                       absl::StrCat(act, " actions of participant '", options.participant, "'"));
  }

  grpc::Status Confirm(grpc::ServerContext* ctx, const dts::v1::PhaseTwoRequest* req,
                       dts::v1::PhaseTwoResponse*) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCoordinator(ctx, "confirm"); !st.ok()) return ToGrpcStatus(st);
      return ToGrpcStatus(PhaseTwo(req->action(), true));
    });
  }
  grpc::Status Cancel(grpc::ServerContext* ctx, const dts::v1::PhaseTwoRequest* req,
                      dts::v1::PhaseTwoResponse*) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCoordinator(ctx, "cancel"); !st.ok()) return ToGrpcStatus(st);
      return ToGrpcStatus(PhaseTwo(req->action(), false));
    });
  }
  grpc::Status PhaseTwoBatch(grpc::ServerContext* ctx, const dts::v1::PhaseTwoBatchRequest* req,
                             dts::v1::PhaseTwoBatchResponse* resp) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCoordinator(ctx, "confirm or cancel"); !st.ok()) {
        return ToGrpcStatus(st);
      }
      for (const dts::v1::PhaseTwoItem& item : req->items()) {
        absl::Status st = PhaseTwo(item.action(), item.confirm());
        dts::v1::PhaseTwoResult* r = resp->add_results();
        r->set_code(static_cast<int>(st.code()));
        r->set_message(std::string(st.message()));
      }
      return grpc::Status::OK;
    });
  }

  // Confirm or cancel of an action (a transaction id). One never prepared
  // (its enlist won but the half message was never stored) is a no-op.
  absl::Status PhaseTwo(const std::string& id, bool commit) {
    absl::StatusOr<v1::Receipt> r =
        End(id, commit, commit ? "its activity confirmed it" : "its activity cancelled it");
    if (r.ok() || absl::IsNotFound(r.status())) return absl::OkStatus();
    return r.status();
  }
};

absl::StatusOr<std::unique_ptr<Transactions>> Transactions::Open(TransactionOptions options,
                                                                 rocksdb::DB* meta,
                                                                 rpc::Client* rpc, Clock* clock,
                                                                 ProduceFn produce) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->meta = meta;
  impl->rpc = rpc;
  impl->clock = clock;
  impl->produce = std::move(produce);
  impl->boot = absl::StrFormat("%x", NowMs(*clock));
  if (absl::Status st = impl->Load(); !st.ok()) return st;
  Impl* raw = impl.get();
  impl->loop = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<Transactions>(new Transactions(std::move(impl)));
}

Transactions::Transactions(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Transactions::~Transactions() { Stop(); }

void Transactions::Stop() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->loop.joinable()) impl_->loop.join();
}

absl::StatusOr<std::string> Transactions::Prepare(const std::string& topic,
                                                  v1::StoredMessage message,
                                                  const std::string& activity_id) {
  return impl_->Prepare(topic, std::move(message), activity_id);
}

absl::StatusOr<v1::Receipt> Transactions::End(const std::string& id, bool commit) {
  return impl_->End(id, commit, commit ? "its producer committed" : "its producer rolled back");
}

grpc::Status Transactions::CheckBack(CheckBackStream& stream) { return impl_->CheckBack(stream); }

absl::StatusOr<std::string> Transactions::TopicOf(const std::string& id) {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->halves.find(id);
  if (it == impl_->halves.end()) {
    return absl::NotFoundError(absl::StrCat("no undecided half message ", id));
  }
  return it->second.topic();
}

void Transactions::List(bool parked_only, size_t limit, v1::ListHalfMessagesReply* out) {
  absl::MutexLock lock(&impl_->mu);
  for (const auto& [id, h] : impl_->halves) {
    if (out->messages_size() >= static_cast<int>(limit)) break;
    if (parked_only && !h.parked()) continue;
    *out->add_messages() = h;
  }
}

void Transactions::Count(uint64_t* undecided, uint64_t* parked) {
  absl::MutexLock lock(&impl_->mu);
  *undecided = impl_->halves.size();
  *parked = 0;
  for (const auto& [id, h] : impl_->halves) *parked += h.parked() ? 1 : 0;
}

absl::StatusOr<uint64_t> Transactions::Resume(const std::string& id) {
  absl::MutexLock lock(&impl_->mu);
  if (!id.empty() && impl_->halves.count(id) == 0) {
    return absl::NotFoundError(absl::StrCat("no undecided half message ", id));
  }
  uint64_t n = 0;
  for (auto& [hid, h] : impl_->halves) {
    if (!id.empty() && hid != id) continue;
    if (!h.parked() || impl_->resolving.count(hid) > 0) continue;
    h.set_parked(false);
    h.set_checks(0);
    h.set_next_check_unix_ms(NowMs(*impl_->clock));
    impl_->Persist(h, /*sync=*/true).IgnoreError();
    ++n;
  }
  return n;
}

grpc::Service* Transactions::participant() { return impl_.get(); }

}  // namespace formica::dms
