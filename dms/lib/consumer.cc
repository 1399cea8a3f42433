#include "formica/dms/consumer.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "formica/common/grpc_status.h"
#include "formica/dms/producer.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/rpc/client.h"
#include "placement_watch.h"
#include "stream_call.h"

namespace formica::dms {
namespace {

ReceivedMessage FromDelivered(const std::string& topic, const v1::Delivered& d) {
  ReceivedMessage m;
  const v1::StoredMessage& s = d.message();
  m.topic = topic;
  m.queue = d.ref().queue();
  m.offset = d.ref().offset();
  m.replay = d.ref().replay();
  m.attempt = d.attempt();
  m.key = s.key();
  m.tags.assign(s.tags().begin(), s.tags().end());
  m.properties.insert(s.properties().begin(), s.properties().end());
  m.body = s.body();
  m.dedup_key = s.dedup_key();
  m.producer_group = s.producer_group();
  m.born = absl::FromUnixMillis(s.born_unix_ms());
  m.deliver_at = s.deliver_at_unix_ms() > 0 ? absl::FromUnixMillis(s.deliver_at_unix_ms()) : m.born;
  return m;
}

}  // namespace

// The consumer's stream to one broker group, with its own handler threads.
class GroupStream {
 public:
  using Stream = grpc::ClientReaderWriter<v1::ConsumeRequest, v1::ConsumeReply>;

  ConsumerOptions options;
  MessageHandler handler;
  rpc::Client* rpc = nullptr;
  std::string service;  // the broker group's (BrokerServiceOf)

  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool draining ABSL_GUARDED_BY(mu) = false;  // no new handler runs
  uint64_t session ABSL_GUARDED_BY(mu) = 0;   // the stream now open (0: none)
  bool session_ended ABSL_GUARDED_BY(mu) = false;
  grpc::ClientContext* context ABSL_GUARDED_BY(mu) = nullptr;
  std::deque<std::pair<uint64_t, ReceivedMessage>> work ABSL_GUARDED_BY(mu);
  int running ABSL_GUARDED_BY(mu) = 0;
  v1::ConsumeRequest outgoing ABSL_GUARDED_BY(mu);  // acks and retries to send
  // Acks sent and not confirmed yet, to tell on_acked which message it was.
  std::map<std::pair<int, uint64_t>, ReceivedMessage> unconfirmed ABSL_GUARDED_BY(mu);
  // The first session's outcome, for Start.
  bool first_known ABSL_GUARDED_BY(mu) = false;
  absl::Status first_status ABSL_GUARDED_BY(mu);
  absl::Status first_retry_error ABSL_GUARDED_BY(mu);  // the last, while none is known

  std::thread runner;
  std::vector<std::thread> workers;

  static std::pair<int, uint64_t> Key(const ReceivedMessage& m) {
    return {m.replay ? -1 - m.queue : m.queue, m.offset};
  }

  void Run() {
    while (true) {
      uint64_t id;
      {
        absl::MutexLock lock(&mu);
        if (stopping) return;
        id = ++session;
        session_ended = false;
      }
      absl::Status st = Session(id);
      {
        absl::MutexLock lock(&mu);
        session_ended = true;
        // Messages of the ended stream will be delivered again.
        work.erase(
            std::remove_if(work.begin(), work.end(), [id](const auto& w) { return w.first == id; }),
            work.end());
        outgoing.Clear();
        unconfirmed.clear();
        if (!first_known) {
          if (absl::IsUnavailable(st) || absl::IsDeadlineExceeded(st)) {
            // No broker took it yet (a broker group's follower, a dead
            // leader still listed, an election): Start keeps trying
            // within its start_timeout.
            first_retry_error = st;
          } else {
            first_known = true;
            first_status = st.ok() ? absl::UnavailableError("the broker ended the stream") : st;
          }
        }
        if (stopping) return;
      }
      if (!st.ok()) {
        SPDLOG_WARN("consumer {}/{}: {}; reconnecting", options.group, options.topic,
                    std::string(st.message()));
      }
      absl::MutexLock lock(&mu);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return stopping; };
      mu.AwaitWithTimeout(absl::Condition(&stop), options.reconnect_delay);
    }
  }

  absl::Status Session(uint64_t id) {
    return CallBrokerStream(
        rpc,
        [&](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx) {
          return OpenStream(id, channel, ctx);
        },
        service);
  }

  grpc::Status OpenStream(uint64_t id, const std::shared_ptr<grpc::Channel>& channel,
                          grpc::ClientContext* ctx) {
    {
      absl::MutexLock lock(&mu);
      if (stopping) return grpc::Status(grpc::StatusCode::CANCELLED, "consumer stopping");
      context = ctx;
    }
    auto stub = v1::Broker::NewStub(channel);
    std::unique_ptr<Stream> stream = stub->Consume(ctx);
    v1::ConsumeRequest sub;
    v1::Subscribe* s = sub.mutable_subscribe();
    s->set_group(options.group);
    s->set_topic(options.topic);
    for (const std::string& t : options.tags) s->add_tags(t);
    s->set_broadcast(options.broadcast);
    s->set_consumer_id(options.consumer_id);
    s->set_max_in_flight(options.max_in_flight);
    s->set_concurrent(!options.ordered);
    s->set_max_attempts(options.max_attempts);
    s->set_ack_timeout_ms(absl::ToInt64Milliseconds(options.ack_timeout));
    bool ok = stream->Write(sub);
    std::thread writer;
    if (ok) writer = std::thread([this, id, &stream] { WriteLoop(id, stream.get()); });
    v1::ConsumeReply reply;
    bool first = true;
    while (ok && stream->Read(&reply)) {
      absl::MutexLock lock(&mu);
      if (first) {
        first = false;
        if (!first_known) {
          first_known = true;
          first_status = absl::OkStatus();
        }
      }
      for (const v1::Delivered& d : reply.messages()) {
        work.emplace_back(id, FromDelivered(options.topic, d));
      }
      for (const v1::MessageRef& r : reply.acked()) {
        auto it = unconfirmed.find({r.replay() ? -1 - r.queue() : r.queue(), r.offset()});
        if (it == unconfirmed.end()) continue;
        ReceivedMessage m = std::move(it->second);
        unconfirmed.erase(it);
        if (options.on_acked) {
          mu.Unlock();
          options.on_acked(m);
          mu.Lock();
        }
      }
    }
    {
      absl::MutexLock lock(&mu);
      session_ended = true;
      context = nullptr;
    }
    // The broker ended the stream (its status comes from Finish), or Stop
    // cancelled it; the writer sees the session end.
    if (writer.joinable()) writer.join();
    return stream->Finish();
  }

  // Sends acks and retries for session `id` as they come.
  void WriteLoop(uint64_t id, Stream* stream) {
    while (true) {
      v1::ConsumeRequest req;
      {
        absl::MutexLock lock(&mu);
        auto ready = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
          return session != id || session_ended || outgoing.acks_size() > 0 ||
                 outgoing.retries_size() > 0;
        };
        mu.Await(absl::Condition(&ready));
        if (session != id || session_ended) return;
        req.Swap(&outgoing);
      }
      if (!stream->Write(req)) return;
    }
  }

  void Work() {
    while (true) {
      std::pair<uint64_t, ReceivedMessage> item;
      {
        absl::MutexLock lock(&mu);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return draining || !work.empty(); };
        mu.Await(absl::Condition(&ready));
        if (draining) return;
        item = std::move(work.front());
        work.pop_front();
        ++running;
      }
      ConsumeResult result = ConsumeResult::kRetryLater;
      result = handler(item.second);
      absl::MutexLock lock(&mu);
      --running;
      if (item.first != session || session_ended) continue;  // its stream is gone
      v1::MessageRef* ref =
          result == ConsumeResult::kSuccess ? outgoing.add_acks() : outgoing.add_retries();
      ref->set_queue(item.second.queue);
      ref->set_offset(item.second.offset);
      ref->set_replay(item.second.replay);
      if (result == ConsumeResult::kSuccess) {
        unconfirmed[Key(item.second)] = std::move(item.second);
      }
    }
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu);
      if (draining) return;
      draining = true;
      auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return running == 0; };
      mu.Await(absl::Condition(&idle));
    }
    for (std::thread& t : workers) t.join();
    {
      // The last acks go out; wait briefly for the broker to confirm them.
      absl::MutexLock lock(&mu);
      auto flushed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
        return session_ended || (outgoing.acks_size() == 0 && unconfirmed.empty());
      };
      mu.AwaitWithTimeout(absl::Condition(&flushed), absl::Seconds(2));
      stopping = true;
      if (context != nullptr) context->TryCancel();
    }
    if (runner.joinable()) runner.join();
  }

  // Starts the handler threads and the stream; with `wait`, returns the
  // subscription's outcome (stopping again on an error).
  absl::Status Launch(bool wait) {
    for (int i = 0; i < options.threads; ++i) workers.emplace_back([this] { Work(); });
    runner = std::thread([this] { Run(); });
    if (!wait) return absl::OkStatus();
    absl::Status first;
    {
      absl::MutexLock lock(&mu);
      auto known = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return first_known; };
      if (!mu.AwaitWithTimeout(absl::Condition(&known), options.start_timeout)) {
        first = absl::DeadlineExceededError(absl::StrCat(
            "dms::Consumer: no broker of ", service, " answered the subscription to '",
            options.topic, "' within ", absl::FormatDuration(options.start_timeout),
            first_retry_error.ok() ? std::string()
                                   : absl::StrCat(" (last: ", first_retry_error.message(), ")")));
      } else {
        first = first_status;
      }
    }
    if (!first.ok()) Stop();
    return first;
  }
};

// One stream per broker group holding queues of the topic (its placement;
// without one, the default group's), and one more for each group the
// placement names later.
class Consumer::Impl {
 public:
  ConsumerOptions options;
  MessageHandler handler;
  rpc::Client* rpc = nullptr;
  std::unique_ptr<PlacementWatch> placement;  // moved out under mu by Stop
  absl::Mutex mu;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  std::map<std::string, std::unique_ptr<GroupStream>> streams ABSL_GUARDED_BY(mu);

  absl::Status Join(const std::string& group, bool wait) {
    auto stream = std::make_unique<GroupStream>();
    stream->options = options;
    stream->handler = handler;
    stream->rpc = rpc;
    stream->service = BrokerServiceOf(group);
    GroupStream* raw = stream.get();
    absl::MutexLock lock(&mu);
    if (stopped || streams.count(group) > 0) return absl::OkStatus();
    streams[group] = std::move(stream);
    if (!wait) return raw->Launch(false);  // under mu: Stop sees it whole
    // Start's own joins: no Stop can run yet, and the wait must not hold mu.
    mu.Unlock();
    absl::Status st = raw->Launch(true);
    mu.Lock();
    return st;
  }

  void Placed(const std::optional<Placement>& p) {
    for (const std::string& g : p.has_value() ? p->Groups() : std::vector<std::string>{""}) {
      Join(g, false).IgnoreError();
    }
  }

  void Stop() {
    // The watch goes first, outside mu: its callbacks join streams (under
    // mu), and its destructor waits for one under way, which sees stopped.
    std::unique_ptr<PlacementWatch> watch;
    {
      absl::MutexLock lock(&mu);
      stopped = true;
      watch = std::move(placement);
    }
    watch.reset();
    std::vector<GroupStream*> all;
    {
      absl::MutexLock lock(&mu);
      for (auto& [g, s] : streams) all.push_back(s.get());
    }
    for (GroupStream* s : all) s->Stop();
  }
};

absl::StatusOr<std::unique_ptr<Consumer>> Consumer::Start(ConsumerOptions options,
                                                          MessageHandler handler,
                                                          rpc::Client* rpc) {
  if (rpc == nullptr) return absl::InvalidArgumentError("dms::Consumer needs an rpc::Client");
  if (options.group.empty()) return absl::InvalidArgumentError("dms::Consumer: group is required");
  if (options.topic.empty()) return absl::InvalidArgumentError("dms::Consumer: topic is required");
  if (options.broadcast && options.consumer_id.empty()) {
    return absl::InvalidArgumentError("dms::Consumer: broadcast needs a consumer_id");
  }
  if (!handler) return absl::InvalidArgumentError("dms::Consumer: a handler is required");
  if (options.threads < 1 || options.max_in_flight < 1) {
    return absl::InvalidArgumentError("dms::Consumer: threads and max_in_flight must be >= 1");
  }
  auto impl = std::make_shared<Impl>();
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  impl->rpc = rpc;
  impl->placement = std::make_unique<PlacementWatch>(rpc->registry());
  absl::StatusOr<std::optional<Placement>> placed = impl->placement->Get(impl->options.topic);
  if (!placed.ok()) return placed.status();
  std::vector<std::string> groups =
      placed->has_value() ? (*placed)->Groups() : std::vector<std::string>{""};
  for (const std::string& g : groups) {
    if (absl::Status st = impl->Join(g, true); !st.ok()) {
      impl->Stop();
      return st;
    }
  }
  // Groups named from now on get a stream too.
  Impl* raw = impl.get();
  impl->placement->OnChange(impl->options.topic,
                            [raw](const std::optional<Placement>& p) { raw->Placed(p); });
  // A placement that changed while the joins above waited reached no
  // listener: read it again now that one listens.
  if (absl::StatusOr<std::optional<Placement>> now = impl->placement->Get(impl->options.topic);
      now.ok()) {
    raw->Placed(*now);
  }
  return std::unique_ptr<Consumer>(new Consumer(std::move(impl)));
}

Consumer::Consumer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Consumer::~Consumer() { Stop(); }
void Consumer::Stop() { impl_->Stop(); }

}  // namespace formica::dms
