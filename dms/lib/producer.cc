#include "formica/dms/producer.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "formica/common/grpc_status.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/rpc/call_context.h"
#include "formica/rpc/client.h"
#include "placement_watch.h"
#include "stream_call.h"

namespace formica::dms {
namespace {
constexpr size_t kMaxBatchBytes = 4 << 20;  // one call carries more only for one large message
}  // namespace

class Producer::Impl : public std::enable_shared_from_this<Producer::Impl> {
 public:
  struct Pending {
    OutgoingMessage message;
    std::function<void(absl::StatusOr<SendReceipt>)> done;
    int queue = -1;  // chosen here from the topic's placement; -1: the broker picks
    absl::Time refused_since = absl::InfiniteFuture();  // first refused by a moving queue
  };
  struct TopicQueue {
    std::deque<Pending> waiting;
    int outstanding = 0;
  };
  // Sends are batched per topic and broker group.
  using Route = std::pair<std::string, std::string>;  // (topic, group)

  ProducerOptions options;
  rpc::Client* rpc = nullptr;
  std::unique_ptr<PlacementWatch> placement;
  std::atomic<uint64_t> round_robin{0};
  absl::Mutex mu;
  std::map<Route, TopicQueue> topics ABSL_GUARDED_BY(mu);
  int64_t unanswered ABSL_GUARDED_BY(mu) = 0;  // sends not answered yet

  // Where a message goes: its queue (by the broker's rule) and that
  // queue's group, when the topic has a placement.
  absl::Status Place(const std::string& topic, Pending& p, std::string* group, bool refresh) {
    absl::StatusOr<std::optional<Placement>> got =
        refresh ? placement->Refresh(topic) : placement->Get(topic);
    if (!got.ok()) return got.status();
    group->clear();
    if (!got->has_value()) return absl::OkStatus();
    const Placement& pl = **got;
    if (p.queue < 0 || p.queue >= pl.queues()) {
      // A keyless message with a dedup key goes by its dedup key: a resend
      // reaches the same queue, so the same group's dedup index, wherever
      // the topic's queues are.
      const std::string& by = p.message.key.empty() ? p.message.dedup_key : p.message.key;
      p.queue = by.empty() ? static_cast<int>(round_robin.fetch_add(1) % pl.groups.size())
                           : QueueForKey(by, pl.queues());
    }
    *group = pl.groups[p.queue];
    return absl::OkStatus();
  }

  void SendAsync(const std::string& topic, OutgoingMessage message,
                 std::function<void(absl::StatusOr<SendReceipt>)> done) {
    Pending p{std::move(message), std::move(done)};
    std::string group;
    if (absl::Status st = Place(topic, p, &group, false); !st.ok()) {
      p.done(st);
      return;
    }
    {
      absl::MutexLock lock(&mu);
      ++unanswered;
      topics[{topic, group}].waiting.push_back(std::move(p));
    }
    Pump({topic, group});
  }

  // Starts calls for what waits, while the route has room for them.
  void Pump(const Route& route) {
    while (true) {
      std::vector<Pending> batch;
      {
        absl::MutexLock lock(&mu);
        TopicQueue& q = topics[route];
        if (q.waiting.empty() || q.outstanding >= options.max_outstanding) return;
        size_t bytes = 0;
        // One call names every message's queue or none.
        bool chosen = q.waiting.front().queue >= 0;
        while (!q.waiting.empty() && batch.size() < static_cast<size_t>(options.max_batch) &&
               (batch.empty() || bytes < kMaxBatchBytes) &&
               (q.waiting.front().queue >= 0) == chosen) {
          bytes += q.waiting.front().message.body.size();
          batch.push_back(std::move(q.waiting.front()));
          q.waiting.pop_front();
        }
        ++q.outstanding;
      }
      Call(route, std::move(batch));
    }
  }

  struct CallState {
    v1::ProduceRequest request;
    v1::ProduceReply reply;
    std::vector<Pending> batch;
    bool all_dedup = true;
    absl::Time give_up;  // for retries while no broker is reachable
  };

  void Call(const Route& route, std::vector<Pending> batch) {
    using State = CallState;
    auto state = std::make_shared<State>();
    state->request.set_topic(route.first);
    state->request.set_producer_group(options.producer_group);
    bool all_dedup = true;
    for (Pending& p : batch) {
      v1::Message m = ToMessage(p.message);
      *state->request.add_messages() = m;
      if (p.queue >= 0) state->request.add_queues(p.queue);
      all_dedup = all_dedup && !p.message.dedup_key.empty();
    }
    state->batch = std::move(batch);
    state->all_dedup = all_dedup;
    state->give_up = absl::Now() + options.unavailable_retry;
    Attempt(route, state);
  }

  // A send refused because a queue of it is moving to another broker group
  // (nothing of it was stored).
  static bool Moving(const absl::Status& st) {
    return absl::IsFailedPrecondition(st) && (absl::StrContains(st.message(), "moved to") ||
                                              absl::StrContains(st.message(), "is moving here"));
  }

  void Attempt(const Route& route, std::shared_ptr<CallState> state) {
    rpc::CallOptions co;
    co.timeout = options.timeout;
    co.idempotent = state->all_dedup;
    co.inherit_current = false;
    std::shared_ptr<Impl> self = shared_from_this();
    rpc->CallAsync(
        BrokerServiceOf(route.second), co,
        [state](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
                std::function<void(grpc::Status)> done) {
          state->reply.Clear();
          ctx->set_wait_for_ready(
              true);  // a restarting broker is waited for (nothing sent till then)
          v1::Broker::NewStub(channel)->async()->Produce(ctx, &state->request, &state->reply,
                                                         std::move(done));
        },
        [self, state, route](absl::Status st) {
          if (state->all_dedup && (absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st)) &&
              absl::Now() + absl::Milliseconds(100) < state->give_up) {
            // Not on gRPC's thread: a short wait, then the same call again.
            std::thread([self, state, route] {
              absl::SleepFor(absl::Milliseconds(100));
              self->Attempt(route, state);
            }).detach();
            return;
          }
          if (Moving(st)) {
            // Not on gRPC's thread: the placement is read again.
            std::thread([self, state, route, st] { self->Reroute(route, state, st); }).detach();
            return;
          }
          if (st.ok() && state->reply.receipts_size() != state->request.messages_size()) {
            st = absl::InternalError(absl::StrCat("the broker answered ",
                                                  state->reply.receipts_size(), " receipts for ",
                                                  state->request.messages_size(), " messages"));
          }
          for (size_t i = 0; i < state->batch.size(); ++i) {
            if (!st.ok()) {
              state->batch[i].done(st);
              continue;
            }
            const v1::Receipt& r = state->reply.receipts(static_cast<int>(i));
            state->batch[i].done(SendReceipt{r.queue(), r.offset(), r.duplicate()});
          }
          self->Answered(route, state->batch.size());
        });
  }

  void Answered(const Route& route, size_t messages) {
    {
      absl::MutexLock lock(&mu);
      --topics[route].outstanding;
      unanswered -= static_cast<int64_t>(messages);
    }
    Pump(route);
  }

  // A refused batch's messages wait again, at the front of their queues'
  // routes as the placement now says (each keeps its queue), after a short
  // pause; one refused for longer than unavailable_retry fails with the
  // refusal.
  void Reroute(const Route& route, std::shared_ptr<CallState> state, const absl::Status& refusal) {
    absl::SleepFor(absl::Milliseconds(100));
    absl::Time now = absl::Now();
    absl::Status read = placement->Refresh(route.first).status();
    std::map<Route, std::vector<Pending>> again;
    size_t failed = 0;
    for (size_t i = 0; i < state->batch.size(); ++i) {
      Pending& p = state->batch[i];
      // The request took the body (ToMessage); it goes out again.
      p.message.body =
          std::move(*state->request.mutable_messages(static_cast<int>(i))->mutable_body());
      if (p.refused_since == absl::InfiniteFuture()) p.refused_since = now;
      std::string group = route.second;
      absl::Status st = now - p.refused_since > options.unavailable_retry ? refusal
                        : read.ok() ? Place(route.first, p, &group, false)
                                    : read;
      if (!st.ok()) {
        p.done(st);
        ++failed;
        continue;
      }
      again[{route.first, group}].push_back(std::move(p));
    }
    {
      absl::MutexLock lock(&mu);
      --topics[route].outstanding;
      unanswered -= static_cast<int64_t>(failed);
      for (auto& [r, list] : again) {
        std::deque<Pending>& waiting = topics[r].waiting;
        for (auto it = list.rbegin(); it != list.rend(); ++it) waiting.push_front(std::move(*it));
      }
    }
    Pump(route);
    for (const auto& [r, list] : again) {
      if (r != route) Pump(r);
    }
  }

  void Flush() {
    absl::MutexLock lock(&mu);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return unanswered == 0; };
    mu.Await(absl::Condition(&idle));
  }

  static v1::Message ToMessage(OutgoingMessage& m) {
    v1::Message out;
    out.set_key(m.key);
    for (const std::string& t : m.tags) out.add_tags(t);
    for (const auto& [k, v] : m.properties) (*out.mutable_properties())[k] = v;
    out.set_body(std::move(m.body));
    out.set_dedup_key(m.dedup_key);
    if (m.delay > absl::ZeroDuration()) {
      out.set_delay_ms(std::max<int64_t>(1, absl::ToInt64Milliseconds(m.delay)));
    }
    return out;
  }

  absl::StatusOr<std::string> Prepare(const std::string& topic, OutgoingMessage& message,
                                      const std::string& activity_id) {
    v1::PrepareRequest req;
    req.set_topic(topic);
    *req.mutable_message() = ToMessage(message);
    req.set_producer_group(options.producer_group);
    req.set_activity_id(activity_id);
    v1::PrepareReply reply;
    rpc::CallOptions co;
    co.timeout = options.timeout;
    co.inherit_current = false;
    absl::Status st =
        rpc->Call(kBrokerService, co,
                  [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
                    ctx->set_wait_for_ready(
                        true);  // a restarting broker is waited for (nothing sent till then)
                    return v1::Broker::NewStub(channel)->Prepare(ctx, req, &reply);
                  });
    if (!st.ok()) return st;
    return reply.transaction_id();
  }

  absl::StatusOr<SendReceipt> End(const std::string& id, bool commit) {
    v1::EndTransactionRequest req;
    req.set_transaction_id(id);
    req.set_commit(commit);
    v1::EndTransactionReply reply;
    rpc::CallOptions co;
    co.timeout = options.timeout;
    co.idempotent = true;  // a repeated end of one outcome is a success
    co.inherit_current = false;
    absl::Status st =
        rpc->Call(kBrokerService, co,
                  [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
                    ctx->set_wait_for_ready(
                        true);  // a restarting broker is waited for (nothing sent till then)
                    return v1::Broker::NewStub(channel)->EndTransaction(ctx, req, &reply);
                  });
    if (!st.ok()) return st;
    return SendReceipt{reply.receipt().queue(), reply.receipt().offset(), false};
  }

  // ---- check-back: this producer answers for its group ----------------

  absl::Mutex check_mu;
  bool check_stopping ABSL_GUARDED_BY(check_mu) = false;
  grpc::ClientContext* check_ctx ABSL_GUARDED_BY(check_mu) = nullptr;
  std::thread check_thread;

  void CheckLoop() {
    while (true) {
      {
        absl::MutexLock lock(&check_mu);
        if (check_stopping) return;
      }
      absl::Status st = CheckSession();
      absl::MutexLock lock(&check_mu);
      if (check_stopping) return;
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(check_mu) { return check_stopping; };
      check_mu.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(200));
    }
  }

  absl::Status CheckSession() {
    return CallBrokerStream(rpc, [&](const std::shared_ptr<grpc::Channel>& channel,
                                     grpc::ClientContext* ctx) {
      {
        absl::MutexLock lock(&check_mu);
        if (check_stopping) return grpc::Status(grpc::StatusCode::CANCELLED, "stopping");
        check_ctx = ctx;
      }
      auto stub = v1::Broker::NewStub(channel);
      auto stream = stub->CheckBack(ctx);
      v1::CheckAnswer hello;
      hello.set_producer_group(options.producer_group);
      if (stream->Write(hello)) {
        v1::CheckRequest req;
        while (stream->Read(&req)) {
          CheckedMessage m;
          m.transaction_id = req.transaction_id();
          m.topic = req.topic();
          m.key = req.message().key();
          m.tags.assign(req.message().tags().begin(), req.message().tags().end());
          m.properties.insert(req.message().properties().begin(), req.message().properties().end());
          m.body = req.message().body();
          m.check = req.check();
          v1::CheckAnswer answer;
          answer.set_transaction_id(req.transaction_id());
          TransactionState state = options.checker(m);
          answer.set_state(state == TransactionState::kCommit     ? v1::COMMIT
                           : state == TransactionState::kRollback ? v1::ROLLBACK
                                                                  : v1::UNKNOWN);
          if (!stream->Write(answer)) break;
        }
      }
      {
        absl::MutexLock lock(&check_mu);
        check_ctx = nullptr;
      }
      return stream->Finish();
    });
  }

  void StopChecks() {
    {
      absl::MutexLock lock(&check_mu);
      check_stopping = true;
      if (check_ctx != nullptr) check_ctx->TryCancel();
    }
    if (check_thread.joinable()) check_thread.join();
  }
};

absl::StatusOr<std::unique_ptr<Producer>> Producer::Create(ProducerOptions options,
                                                           rpc::Client* rpc) {
  if (rpc == nullptr) return absl::InvalidArgumentError("dms::Producer needs an rpc::Client");
  if (options.max_batch < 1 || options.max_outstanding < 1) {
    return absl::InvalidArgumentError("dms::Producer: max_batch and max_outstanding must be >= 1");
  }
  if (options.checker && options.producer_group.empty()) {
    return absl::InvalidArgumentError("dms::Producer: a checker needs a producer_group");
  }
  auto impl = std::make_shared<Impl>();
  impl->options = std::move(options);
  impl->rpc = rpc;
  impl->placement = std::make_unique<PlacementWatch>(rpc->registry());
  if (impl->options.checker) {
    Impl* raw = impl.get();
    impl->check_thread = std::thread([raw] { raw->CheckLoop(); });
  }
  return std::unique_ptr<Producer>(new Producer(std::move(impl)));
}

Producer::Producer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Producer::~Producer() {
  impl_->Flush();
  impl_->StopChecks();
}

absl::StatusOr<TransactionOutcome> Producer::SendInTransaction(
    const std::string& topic, OutgoingMessage message,
    const std::function<TransactionState()>& local) {
  if (impl_->options.producer_group.empty()) {
    return absl::InvalidArgumentError(
        "dms::Producer: transactional sends need ProducerOptions::producer_group");
  }
  absl::StatusOr<std::string> id = impl_->Prepare(topic, message, "");
  if (!id.ok()) return id.status();
  TransactionOutcome outcome;
  outcome.transaction_id = *id;
  outcome.state = local();
  if (outcome.state == TransactionState::kUnknown) return outcome;  // the check-back decides
  absl::StatusOr<SendReceipt> r = impl_->End(*id, outcome.state == TransactionState::kCommit);
  if (!r.ok()) {
    return absl::Status(r.status().code(),
                        absl::StrCat("transaction ", *id, ": the local transaction ended but ",
                                     "telling the broker failed (its check-back will settle it): ",
                                     r.status().message()));
  }
  outcome.receipt = *r;
  return outcome;
}

absl::StatusOr<std::string> Producer::SendInActivity(const std::string& topic,
                                                     OutgoingMessage message,
                                                     std::string activity_id) {
  if (activity_id.empty()) {
    const rpc::CallContext* current = rpc::CurrentCallContext();
    if (current != nullptr) activity_id = current->txn_id;
  }
  if (activity_id.empty()) {
    return absl::FailedPreconditionError(
        "dms::Producer::SendInActivity: no activity id given and none current on this thread");
  }
  if (impl_->options.producer_group.empty()) {
    return absl::InvalidArgumentError(
        "dms::Producer: transactional sends need ProducerOptions::producer_group");
  }
  return impl_->Prepare(topic, message, activity_id);
}

absl::StatusOr<SendReceipt> Producer::Send(const std::string& topic, OutgoingMessage message) {
  absl::Notification done;
  absl::StatusOr<SendReceipt> result;
  impl_->SendAsync(topic, std::move(message), [&](absl::StatusOr<SendReceipt> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

void Producer::SendAsync(const std::string& topic, OutgoingMessage message,
                         std::function<void(absl::StatusOr<SendReceipt>)> done) {
  impl_->SendAsync(topic, std::move(message), std::move(done));
}

void Producer::Flush() { impl_->Flush(); }

}  // namespace formica::dms
