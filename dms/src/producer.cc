#include "formica/dms/producer.h"

#include <grpcpp/grpcpp.h>

#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "formica/common/grpc_status.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/rpc/client.h"

namespace formica::dms {
namespace {
constexpr size_t kMaxBatchBytes = 4 << 20;  // one call carries more only for one large message
}  // namespace

class Producer::Impl : public std::enable_shared_from_this<Producer::Impl> {
 public:
  struct Pending {
    OutgoingMessage message;
    std::function<void(absl::StatusOr<SendReceipt>)> done;
  };
  struct TopicQueue {
    std::deque<Pending> waiting;
    int outstanding = 0;
  };

  ProducerOptions options;
  rpc::Client* rpc = nullptr;
  absl::Mutex mu;
  std::map<std::string, TopicQueue> topics ABSL_GUARDED_BY(mu);
  int64_t unanswered ABSL_GUARDED_BY(mu) = 0;  // sends not answered yet

  void SendAsync(const std::string& topic, OutgoingMessage message,
                 std::function<void(absl::StatusOr<SendReceipt>)> done) {
    {
      absl::MutexLock lock(&mu);
      ++unanswered;
      topics[topic].waiting.push_back(Pending{std::move(message), std::move(done)});
    }
    Pump(topic);
  }

  // Starts calls for what waits, while the topic has room for them.
  void Pump(const std::string& topic) {
    while (true) {
      std::vector<Pending> batch;
      {
        absl::MutexLock lock(&mu);
        TopicQueue& q = topics[topic];
        if (q.waiting.empty() || q.outstanding >= options.max_outstanding) return;
        size_t bytes = 0;
        while (!q.waiting.empty() && batch.size() < static_cast<size_t>(options.max_batch) &&
               (batch.empty() || bytes < kMaxBatchBytes)) {
          bytes += q.waiting.front().message.body.size();
          batch.push_back(std::move(q.waiting.front()));
          q.waiting.pop_front();
        }
        ++q.outstanding;
      }
      Call(topic, std::move(batch));
    }
  }

  void Call(const std::string& topic, std::vector<Pending> batch) {
    struct State {
      v1::ProduceRequest request;
      v1::ProduceReply reply;
      std::vector<Pending> batch;
    };
    auto state = std::make_shared<State>();
    state->request.set_topic(topic);
    state->request.set_producer_group(options.producer_group);
    bool all_dedup = true;
    for (Pending& p : batch) {
      v1::Message* m = state->request.add_messages();
      m->set_key(p.message.key);
      for (const std::string& t : p.message.tags) m->add_tags(t);
      for (const auto& [k, v] : p.message.properties) (*m->mutable_properties())[k] = v;
      m->set_body(std::move(p.message.body));
      m->set_dedup_key(p.message.dedup_key);
      if (p.message.delay > absl::ZeroDuration()) {
        m->set_delay_ms(std::max<int64_t>(1, absl::ToInt64Milliseconds(p.message.delay)));
      }
      all_dedup = all_dedup && !p.message.dedup_key.empty();
    }
    state->batch = std::move(batch);
    rpc::CallOptions co;
    co.timeout = options.timeout;
    co.idempotent = all_dedup;
    co.inherit_current = false;
    std::shared_ptr<Impl> self = shared_from_this();
    rpc->CallAsync(
        kBrokerService, co,
        [state](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
                std::function<void(grpc::Status)> done) {
          state->reply.Clear();
          v1::Broker::NewStub(channel)->async()->Produce(ctx, &state->request, &state->reply,
                                                         std::move(done));
        },
        [self, state, topic](absl::Status st) {
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
          {
            absl::MutexLock lock(&self->mu);
            --self->topics[topic].outstanding;
            self->unanswered -= static_cast<int64_t>(state->batch.size());
          }
          self->Pump(topic);
        });
  }

  void Flush() {
    absl::MutexLock lock(&mu);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return unanswered == 0; };
    mu.Await(absl::Condition(&idle));
  }
};

absl::StatusOr<std::unique_ptr<Producer>> Producer::Create(ProducerOptions options,
                                                           rpc::Client* rpc) {
  if (rpc == nullptr) return absl::InvalidArgumentError("dms::Producer needs an rpc::Client");
  if (options.max_batch < 1 || options.max_outstanding < 1) {
    return absl::InvalidArgumentError("dms::Producer: max_batch and max_outstanding must be >= 1");
  }
  auto impl = std::make_shared<Impl>();
  impl->options = std::move(options);
  impl->rpc = rpc;
  return std::unique_ptr<Producer>(new Producer(std::move(impl)));
}

Producer::Producer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Producer::~Producer() { impl_->Flush(); }

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
