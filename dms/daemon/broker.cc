// The gRPC face of dmsd: formica.dms.v1.Broker as a thin adapter over the
// engines (TopicCatalog, ProduceEngine, ConsumerGroups, DeadLetters,
// Housekeeping, Transactions), plus the threads that drive them: the
// dispatcher (ConsumerGroups::PumpAll when kicked, else every 10 ms) and
// housekeeping (every second).
#include "broker.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "ack_batches.h"
#include "broker_group.h"
#include "broker_metrics.h"
#include "consumer_groups.h"
#include "dead_letters.h"
#include "dedup_index.h"
#include "disk_watermark.h"
#include "dms_names.h"
#include "formica/common/grpc_status.h"
#include "formica/dms/v1/dms.grpc.pb.h"
#include "formica/internal/audit_log.h"
#include "formica/internal/dms_placement.h"
#include "formica/internal/metrics_endpoint.h"
#include "formica/internal/permissions.h"
#include "formica/registry/client.h"
#include "formica/rpc/client.h"
#include "formica/rpc/metrics.h"
#include "formica/rpc/server.h"
#include "group_progress.h"
#include "housekeeping.h"
#include "meta_store.h"
#include "produce_engine.h"
#include "queue_holds.h"
#include "queue_moves.h"
#include "threaded_stream.h"
#include "topic_catalog.h"
#include "transactions.h"

namespace formica::dms {
namespace {

// How many acks and retries of one Consume stream may wait for the settle
// in progress before its reader stops reading.
constexpr size_t kMaxWaitingAcks = 1 << 16;
constexpr size_t kMaxWaitingAckBytes = 16 << 20;

}  // namespace

class Broker::Impl final
    : public v1::Broker::WithCallbackMethod_CheckBack<v1::Broker::WithCallbackMethod_Consume<
          v1::Broker::WithCallbackMethod_Produce<v1::Broker::Service>>> {
 public:
  BrokerOptions options;
  Clock* clock = nullptr;
  std::unique_ptr<GroupProgress> progress;
  std::unique_ptr<MetaStore> meta;
  std::unique_ptr<DiskWatermark> disk;
  std::unique_ptr<DedupIndex> dedup;
  std::unique_ptr<ProduceEngine> producer;
  std::unique_ptr<DeadLetters> letters;
  std::unique_ptr<ConsumerGroups> groups;
  std::unique_ptr<Housekeeping> housekeeping;
  std::unique_ptr<QueueHolds> holds;  // queues moving between broker groups
  std::unique_ptr<QueueMoves> moves;
  std::unique_ptr<registry::Client> registry;
  std::unique_ptr<rpc::Client> rpc;  // to dtsd, for messages joined to activities
  std::unique_ptr<Transactions> txns;
  std::unique_ptr<rpc::Server> server;
  std::unique_ptr<AuditLog> audit;  // operator acts (docs/security.md)
  std::unique_ptr<MetricsEndpoint> metrics;
  // Last, so the topics' logs close first, while what their pending syncs
  // call back into is still there.
  std::unique_ptr<TopicCatalog> topics;

  absl::Mutex kick_mu;
  bool kicked ABSL_GUARDED_BY(kick_mu) = false;
  bool stopping ABSL_GUARDED_BY(kick_mu) = false;
  std::atomic<bool> streams_stop{false};
  LiveStreams live_streams;  // Consume and CheckBack
  std::thread dispatcher, housekeeper;
  bool shut_down = false;

  // ---- start-up -------------------------------------------------------

  absl::Status Open() {
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir + "/topics", ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", options.data_dir, "/topics: ", ec.message()));
    }
    if (const BrokerStores* s = options.stores; s != nullptr) {
      progress = GroupProgress::Over(s->progress, s->writes);
      meta = MetaStore::Over(s->meta, s->writes);
    } else {
      absl::StatusOr<std::unique_ptr<GroupProgress>> p =
          GroupProgress::Open(options.data_dir + "/progress");
      if (!p.ok()) return p.status();
      progress = *std::move(p);
      absl::StatusOr<std::unique_ptr<MetaStore>> m = MetaStore::Open(options.data_dir + "/meta");
      if (!m.ok()) return m.status();
      meta = *std::move(m);
    }
    absl::StatusOr<std::unique_ptr<AuditLog>> a =
        AuditLog::Open(options.data_dir + "/formica-audit.log", "dmsd");
    if (!a.ok()) return a.status();
    audit = *std::move(a);
    UseAuditLog(audit.get());

    disk = std::make_unique<DiskWatermark>(options.data_dir, options.disk_full_ratio);
    dedup = std::make_unique<DedupIndex>(meta.get(), clock, options.dedup_window);
    CatalogOptions co;
    co.data_dir = options.data_dir;
    co.sync = options.sync;
    co.segment_bytes = options.segment_bytes;
    co.max_record_bytes =
        static_cast<uint32_t>(options.max_body_bytes + kMaxPropertiesBytes + 64 * 1024);
    co.quarantine_damaged_topics = options.quarantine_damaged_topics;
    if (options.stores != nullptr) co.shared_topics = options.stores->topics;
    topics = std::make_unique<TopicCatalog>(co, progress.get(), dedup.get(), clock);
    ProduceOptions po;
    po.max_body_bytes = options.max_body_bytes;
    po.max_batch = options.max_batch;
    po.max_delay = options.max_delay;
    producer = std::make_unique<ProduceEngine>(po, topics.get(), dedup.get(), disk.get(), clock);
    letters = std::make_unique<DeadLetters>(meta.get(), clock);
    GroupOptions go;
    go.ack_timeout = options.ack_timeout;
    go.max_attempts = options.max_attempts;
    go.retry_initial = options.retry_initial;
    go.retry_max = options.retry_max;
    go.replicated = options.stores != nullptr;
    groups =
        std::make_unique<ConsumerGroups>(go, topics.get(), progress.get(), letters.get(), clock);
    HousekeepingOptions ho;
    ho.retention_age = options.retention_age;
    ho.retention_bytes = options.retention_bytes;
    ho.interval = options.housekeeping_interval;
    housekeeping = std::make_unique<Housekeeping>(ho, topics.get(), groups.get(), dedup.get(),
                                                  disk.get(), clock);
    holds = std::make_unique<QueueHolds>(meta.get());
    if (absl::Status st = holds->Load(); !st.ok()) return st;
    producer->UseHolds(holds.get());
    groups->UseHolds(holds.get());
    moves = std::make_unique<QueueMoves>(options.group, topics.get(), holds.get(), progress.get(),
                                         dedup.get(), groups.get());
    return topics->OpenAll(options.topics);
  }

  void Kick() {
    absl::MutexLock lock(&kick_mu);
    kicked = true;
  }

  // ---- topics and produce ---------------------------------------------

  grpc::Status CreateTopic(grpc::ServerContext* ctx, const v1::CreateTopicRequest* req,
                           v1::TopicInfo* reply) override {
    grpc::Status st = rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCaller(ctx, "operate", "dms"); !st.ok()) return ToGrpcStatus(st);
      if (absl::Status st = ValidName("topic name", req->name()); !st.ok()) {
        return ToGrpcStatus(st);
      }
      int queues = req->queues() == 0 ? options.default_queues : req->queues();
      if (queues < 1 || queues > 1024) {
        return ToGrpcStatus(absl::InvalidArgumentError(
            absl::StrCat("a topic has 1 to 1024 queues, not ", req->queues())));
      }
      absl::StatusOr<TopicState*> t = topics->Open(req->name(), queues);
      if (!t.ok()) return ToGrpcStatus(t.status());
      Describe(**t, reply);
      return grpc::Status::OK;
    });
    RecordAct(ctx, "dms.create-topic",
              absl::StrCat("topic=", req->name(), " queues=", req->queues()), FromGrpcStatus(st));
    return st;
  }

  static void Describe(TopicState& t, v1::TopicInfo* out) {
    out->set_name(t.name);
    for (int q = 0; q < t.topic->queues(); ++q) {
      v1::QueueInfo* qi = out->add_queues();
      qi->set_queue(q);
      qi->set_first_offset(t.topic->first_offset(q));
      qi->set_end_offset(t.topic->end_offset(q));
      qi->set_bytes(t.topic->bytes(q));
    }
  }

  grpc::Status ListTopics(grpc::ServerContext* ctx, const v1::ListTopicsRequest*,
                          v1::ListTopicsReply* reply) override {
    return rpc::Serve(ctx, [&] {
      for (TopicState* t : topics->All()) Describe(*t, reply->add_topics());
      reply->set_broker_group(options.group);
      return grpc::Status::OK;
    });
  }

  // Produce runs on gRPC's callback API: the call is answered from the
  // thread whose fdatasync made its messages durable, and no thread waits
  // for the disk on its behalf.
  grpc::ServerUnaryReactor* Produce(grpc::CallbackServerContext* ctx, const v1::ProduceRequest* req,
                                    v1::ProduceReply* reply) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    if (absl::Status st = CheckCaller(ctx, "produce", req->topic()); !st.ok()) {
      reactor->Finish(ToGrpcStatus(st));
      return reactor;
    }
    producer->Produce(*req, reply, [this, reactor](absl::Status st) {
      if (st.ok()) Kick();
      reactor->Finish(ToGrpcStatus(st));
    });
    return reactor;
  }

  // ---- moving a queue between broker groups (QueueMoves) --------------

  // An operator call: the operate permission, and (unless it only reads)
  // the audit trail.
  template <typename Body>
  grpc::Status Operate(grpc::ServerContext* ctx, const char* act, const std::string& detail,
                       Body body) {
    grpc::Status st = rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCaller(ctx, "operate", "dms"); !st.ok()) return ToGrpcStatus(st);
      return ToGrpcStatus(body());
    });
    if (act != nullptr) RecordAct(ctx, act, detail, FromGrpcStatus(st));
    return st;
  }

  grpc::Status SealQueue(grpc::ServerContext* ctx, const v1::SealQueueRequest* req,
                         v1::SealQueueReply* reply) override {
    return Operate(ctx, "dms.seal-queue",
                   absl::StrCat("topic=", req->topic(), " queue=", req->queue(),
                                " to_group=", req->to_group()),
                   [&] { return moves->Seal(*req, reply); });
  }

  // Message bodies leave the broker here: every read that returned some is
  // in the audit trail (a move's copy: one act per batch), and so is a
  // refused one.
  grpc::Status ReadQueue(grpc::ServerContext* ctx, const v1::ReadQueueRequest* req,
                         v1::ReadQueueReply* reply) override {
    grpc::Status st = Operate(ctx, nullptr, "", [&] { return moves->Read(*req, reply); });
    if (!st.ok() || reply->records_size() > 0) {
      RecordAct(ctx, "dms.read-queue",
                absl::StrCat("topic=", req->topic(), " queue=", req->queue(), " from=", req->from(),
                             " records=", reply->records_size()),
                FromGrpcStatus(st));
    }
    return st;
  }

  grpc::Status ImportQueue(grpc::ServerContext* ctx, const v1::ImportQueueRequest* req,
                           v1::ImportQueueReply* reply) override {
    grpc::Status st = Operate(ctx, nullptr, "", [&] { return moves->Import(*req, reply); });
    // One act per import that changed something or failed, not per batch
    // that found its records already there.
    if (!st.ok() || reply->appended() > 0 || req->progress_size() > 0) {
      RecordAct(ctx, "dms.import-queue",
                absl::StrCat("topic=", req->topic(), " queue=", req->queue(),
                             " from_group=", req->from_group(), " records=", reply->appended(),
                             " progress=", req->progress_size()),
                FromGrpcStatus(st));
    }
    return st;
  }

  grpc::Status OpenQueue(grpc::ServerContext* ctx, const v1::OpenQueueRequest* req,
                         v1::OpenQueueReply*) override {
    return Operate(ctx, "dms.open-queue",
                   absl::StrCat("topic=", req->topic(), " queue=", req->queue()), [&] {
                     absl::Status st = moves->Open(*req);
                     if (st.ok()) Kick();
                     return st;
                   });
  }

  // ---- transactional messages -----------------------------------------

  // A committed half message goes into its topic once (its dedup key).
  absl::StatusOr<v1::Receipt> ProduceOne(const std::string& topic, v1::StoredMessage m) {
    absl::StatusOr<v1::Receipt> r = producer->ProduceOne(topic, std::move(m));
    if (r.ok()) Kick();
    return r;
  }

  grpc::Status Prepare(grpc::ServerContext* ctx, const v1::PrepareRequest* req,
                       v1::PrepareReply* reply) override {
    return rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCaller(ctx, "produce", req->topic()); !st.ok()) {
        return ToGrpcStatus(st);
      }
      absl::StatusOr<v1::StoredMessage> half =
          producer->PrepareHalf(req->topic(), req->producer_group(), req->message());
      if (!half.ok()) return ToGrpcStatus(half.status());
      absl::StatusOr<std::string> id =
          txns->Prepare(req->topic(), *std::move(half), req->activity_id());
      if (!id.ok()) return ToGrpcStatus(id.status());
      reply->set_transaction_id(*id);
      return grpc::Status::OK;
    });
  }

  grpc::Status EndTransaction(grpc::ServerContext* ctx, const v1::EndTransactionRequest* req,
                              v1::EndTransactionReply* reply) override {
    return rpc::Serve(ctx, [&] {
      // Ending a half message is producing to its topic (or withdrawing
      // from it): the same permission as Prepare's.
      if (absl::StatusOr<std::string> topic = txns->TopicOf(req->transaction_id()); topic.ok()) {
        if (absl::Status st = CheckCaller(ctx, "produce", *topic); !st.ok())
          return ToGrpcStatus(st);
      }
      absl::StatusOr<v1::Receipt> r = txns->End(req->transaction_id(), req->commit());
      if (!r.ok()) return ToGrpcStatus(r.status());
      *reply->mutable_receipt() = *r;
      return grpc::Status::OK;
    });
  }

  grpc::ServerBidiReactor<v1::CheckAnswer, v1::CheckRequest>* CheckBack(
      grpc::CallbackServerContext* ctx) override {
    return new CheckBackStream(
        ctx,
        [this](CheckBackStream& stream) {
          return rpc::Serve(stream.context(), [&] {
            grpc::Status st = txns->CheckBack(stream);
            if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
              SPDLOG_WARN("CheckBack stream from {} refused: {}", stream.context()->peer(),
                          st.error_message());
            }
            return st;
          });
        },
        &live_streams);
  }

  grpc::Status ListHalfMessages(grpc::ServerContext* ctx, const v1::ListHalfMessagesRequest* req,
                                v1::ListHalfMessagesReply* reply) override {
    return rpc::Serve(ctx, [&] {
      // Undecided messages' bodies: an operator's read.
      if (absl::Status st = CheckCaller(ctx, "operate", "dms"); !st.ok()) return ToGrpcStatus(st);
      txns->List(req->parked_only(), req->limit() > 0 ? static_cast<size_t>(req->limit()) : 100,
                 reply);
      return grpc::Status::OK;
    });
  }

  grpc::Status ResumeHalfMessages(grpc::ServerContext* ctx,
                                  const v1::ResumeHalfMessagesRequest* req,
                                  v1::ResumeHalfMessagesReply* reply) override {
    grpc::Status st = rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCaller(ctx, "operate", "dms"); !st.ok()) return ToGrpcStatus(st);
      absl::StatusOr<uint64_t> n = txns->Resume(req->transaction_id());
      if (!n.ok()) return ToGrpcStatus(n.status());
      reply->set_resumed(*n);
      return grpc::Status::OK;
    });
    RecordAct(ctx, "dms.resume",
              req->transaction_id().empty() ? "all parked"
                                            : absl::StrCat("transaction=", req->transaction_id()),
              FromGrpcStatus(st));
    return st;
  }

  // ---- consume --------------------------------------------------------

  using ConsumeStream = ThreadedStream<v1::ConsumeRequest, v1::ConsumeReply>;

  // Consume serves each stream on a thread of its own; whatever ends the
  // stream, its status reaches the consumer and non-routine ends are logged.
  grpc::ServerBidiReactor<v1::ConsumeRequest, v1::ConsumeReply>* Consume(
      grpc::CallbackServerContext* ctx) override {
    return new ConsumeStream(
        ctx,
        [this](ConsumeStream& stream) {
          return rpc::Serve(stream.context(), [&] {
            std::string subscription;
            absl::Status st = DoConsume(stream, &subscription);
            if (absl::IsInvalidArgument(st)) {
              SPDLOG_WARN("Consume stream from {}{} refused: {}", stream.context()->peer(),
                          subscription, st.ToString());
            } else if (!st.ok() && !streams_stop.load()) {
              SPDLOG_INFO("Consume stream from {}{} ended: {}", stream.context()->peer(),
                          subscription, st.ToString());
            }
            return ToGrpcStatus(st);
          });
        },
        &live_streams);
  }

  // `subscription` gets " (group ..., topic ...)" once the stream subscribed.
  absl::Status DoConsume(ConsumeStream& stream, std::string* subscription) {
    v1::ConsumeRequest first;
    if (!stream.Read(&first)) {
      return streams_stop.load() ? StoppingError() : absl::OkStatus();
    }
    if (!first.has_subscribe()) {
      return absl::InvalidArgumentError("the first request on a Consume stream must subscribe");
    }
    if (absl::Status st =
            CheckCaller(stream.context(), "consume",
                        absl::StrCat(first.subscribe().topic(), "/", first.subscribe().group()));
        !st.ok()) {
      return st;
    }
    std::shared_ptr<Member> member = groups->NewMember();
    absl::StatusOr<std::shared_ptr<GroupState>> joined = groups->Join(first.subscribe(), member);
    if (!joined.ok()) return joined.status();
    std::shared_ptr<GroupState> g = *joined;
    *subscription = absl::StrCat(" (group '", first.subscribe().group(), "', topic '",
                                 first.subscribe().topic(), "')");
    Kick();
    // An empty reply says the subscription is in place.
    if (!stream.Write(v1::ConsumeReply())) {
      groups->Leave(*g, member);
      return absl::OkStatus();
    }

    // One thread reads, another settles: acks that arrive while a settle
    // waits for its write are settled together in the next one, so a
    // consumer's acks cost one durable write per settle, not per request.
    AckBatches batches(kMaxWaitingAcks, kMaxWaitingAckBytes);
    absl::Status reader_status, settle_status;
    std::thread reader([&] {
      v1::ConsumeRequest req;
      while (stream.Read(&req)) {
        if (req.has_subscribe()) {
          reader_status = absl::InvalidArgumentError("a Consume stream subscribes only once");
          break;
        }
        if (absl::Status st = groups->CheckAcks(*g, req); !st.ok()) {
          reader_status = st;
          break;
        }
        if (req.acks_size() == 0 && req.retries_size() == 0) continue;  // nothing to settle
        req.DiscardUnknownFields();
        if (!batches.Push(std::move(req))) break;
        req.Clear();
      }
      batches.Finish();  // what was read before is still settled
    });
    std::thread settler([&] {
      v1::ConsumeRequest merged;
      while (batches.Take(&merged)) {
        if (absl::Status st = groups->Settle(*g, *member, merged); !st.ok()) {
          settle_status = st;
          batches.Abandon();
          break;
        }
        Kick();
      }
      groups->Close(*g, *member);
    });

    absl::Status result;
    while (true) {
      v1::ConsumeReply reply;
      ConsumerGroups::Collected got = groups->Collect(
          *g, *member, absl::Milliseconds(100), [this] { return streams_stop.load(); },
          [&stream] { return stream.IsCancelled(); }, &reply);
      if (got == ConsumerGroups::Collected::kStopping) {
        result = StoppingError();
        break;
      }
      if (got == ConsumerGroups::Collected::kClosed) break;
      if (reply.messages_size() == 0 && reply.acked_size() == 0) continue;
      if (!stream.Write(reply)) {
        // The consumer cannot ack what a failed write carried (its acks
        // come over this stream): not a delivery, no attempt used.
        groups->Unsend(*g, *member, &reply);
        break;
      }
    }
    // Frees the reader without cancelling the call, so `result` (or the
    // reader's error) is what the consumer receives.
    stream.StopReading();
    reader.join();
    settler.join();
    groups->Leave(*g, member);
    Kick();
    if (!reader_status.ok()) return reader_status;
    if (!settle_status.ok()) return settle_status;
    return result;
  }

  static absl::Status StoppingError() {
    return absl::UnavailableError("dmsd is stopping; consume from another broker or later");
  }

  void DispatchLoop() {
    while (true) {
      {
        absl::MutexLock lock(&kick_mu);
        auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(kick_mu) { return kicked || stopping; };
        kick_mu.AwaitWithTimeout(absl::Condition(&woken), absl::Milliseconds(10));
        if (stopping) return;
        kicked = false;
      }
      groups->PumpAll();
    }
  }

  // ---- lag and dead letters ------------------------------------------

  grpc::Status GetLag(grpc::ServerContext* ctx, const v1::GetLagRequest* req,
                      v1::GetLagReply* reply) override {
    return rpc::Serve(ctx, [&] { return ToGrpcStatus(groups->Lag(*req, reply)); });
  }

  grpc::Status ListDeadLetters(grpc::ServerContext* ctx, const v1::ListDeadLettersRequest* req,
                               v1::ListDeadLettersReply* reply) override {
    return rpc::Serve(ctx, [&] {
      if (req->group().empty()) {
        return ToGrpcStatus(absl::InvalidArgumentError("dead letters: group is required"));
      }
      std::vector<v1::DeadLetter> found;
      size_t limit = req->limit() > 0 ? static_cast<size_t>(req->limit()) : 100;
      if (absl::Status st = letters->List(req->group(), req->topic(), limit, &found); !st.ok()) {
        return ToGrpcStatus(st);
      }
      for (v1::DeadLetter& l : found) *reply->add_letters() = std::move(l);
      return grpc::Status::OK;
    });
  }

  grpc::Status ReplayDeadLetters(grpc::ServerContext* ctx, const v1::ReplayDeadLettersRequest* req,
                                 v1::ReplayDeadLettersReply* reply) override {
    grpc::Status st = rpc::Serve(ctx, [&] {
      if (absl::Status st = CheckCaller(ctx, "operate", "dms"); !st.ok()) return ToGrpcStatus(st);
      if (req->group().empty()) {
        return ToGrpcStatus(absl::InvalidArgumentError("replay: group is required"));
      }
      absl::StatusOr<uint64_t> n = groups->ReplayDeadLetters(req->group(), req->topic());
      if (!n.ok()) return ToGrpcStatus(n.status());
      reply->set_replayed(*n);
      SPDLOG_INFO("group {}: {} dead letters replayed", req->group(), *n);
      Kick();
      return grpc::Status::OK;
    });
    RecordAct(ctx, "dms.replay",
              absl::StrCat("group=", req->group(), " topic=", req->topic(),
                           st.ok() ? absl::StrCat(" -> ", reply->replayed(), " replayed") : ""),
              FromGrpcStatus(st));
    return st;
  }

  // ---- housekeeping ---------------------------------------------------

  void HousekeepingLoop() {
    while (true) {
      {
        absl::MutexLock lock(&kick_mu);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(kick_mu) { return stopping; };
        if (kick_mu.AwaitWithTimeout(absl::Condition(&stop), absl::Seconds(1))) return;
      }
      housekeeping->RunOnce();
    }
  }

  void Shutdown() {
    if (shut_down) return;
    shut_down = true;
    if (metrics != nullptr) metrics->Stop();
    streams_stop = true;  // consumers move on at once
    if (groups != nullptr) groups->Stop();
    if (txns != nullptr) txns->Stop();
    live_streams.StopReading();  // streams still waiting for their first request
    {
      absl::MutexLock lock(&kick_mu);
      stopping = true;
    }
    if (server != nullptr) server->Shutdown();
    UseAuditLog(nullptr);
    if (dispatcher.joinable()) dispatcher.join();
    if (housekeeper.joinable()) housekeeper.join();
    if (groups != nullptr) groups->Checkpoint();
    SPDLOG_INFO("dmsd stopped");
  }
};

absl::StatusOr<std::unique_ptr<Broker>> Broker::Start(BrokerOptions options) {
  if (options.registries.empty()) {
    return absl::InvalidArgumentError("dmsd needs at least one registry (dsrd) address");
  }
  if (options.raft.has_value() && options.stores == nullptr) {
    absl::StatusOr<std::unique_ptr<BrokerGroup>> group = BrokerGroup::Start(std::move(options));
    if (!group.ok()) return group.status();
    return std::unique_ptr<Broker>(new Broker(*std::move(group)));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->clock = impl->options.clock != nullptr ? impl->options.clock : Clock::Real();
  const BrokerOptions& o = impl->options;
  if (absl::Status st = impl->Open(); !st.ok()) return st;
  registry::ClientOptions ro;
  ro.registries = o.registries;
  ro.client_name = "dmsd";
  absl::StatusOr<std::unique_ptr<registry::Client>> registry = registry::Client::Create(ro);
  if (!registry.ok()) return registry.status();
  impl->registry = *std::move(registry);
  rpc::ClientOptions co;
  co.app_name = "dmsd";
  co.zone = o.zone;
  absl::StatusOr<std::unique_ptr<rpc::Client>> rpc_client =
      rpc::Client::Create(co, impl->registry.get());
  if (!rpc_client.ok()) return rpc_client.status();
  impl->rpc = *std::move(rpc_client);
  absl::StatusOr<std::unique_ptr<Transactions>> txns = Transactions::Open(
      o.transactions, impl->meta->db(), impl->rpc.get(), impl->clock,
      [raw = impl.get()](const std::string& topic, v1::StoredMessage m) {
        return raw->ProduceOne(topic, std::move(m));
      },
      o.stores != nullptr ? o.stores->writes : nullptr);
  if (!txns.ok()) return txns.status();
  impl->txns = *std::move(txns);
  Impl* raw = impl.get();
  impl->dispatcher = std::thread([raw] { raw->DispatchLoop(); });
  impl->housekeeper = std::thread([raw] { raw->HousekeepingLoop(); });
  impl->disk->Check();

  rpc::ServerOptions so;
  so.listen = o.listen;
  so.advertise_host = o.advertise_host;
  so.zone = o.zone;
  so.unpublish_grace = o.unpublish_grace;
  so.drain_timeout = o.drain_timeout;
  // Room for a produce call of the largest message (a larger one gets
  // INVALID_ARGUMENT naming the limit, not gRPC's RESOURCE_EXHAUSTED).
  so.max_receive_message_bytes = static_cast<int>(
      std::min<int64_t>(INT32_MAX, std::max<int64_t>(64 << 20, 2 * o.max_body_bytes + (1 << 20))));
  absl::StatusOr<std::unique_ptr<rpc::Server>> server =
      rpc::Server::Start(so,
                         {{BrokerServiceOf(o.group), impl.get()},
                          {o.transactions.participant, impl->txns->participant()},
                          {"formica.dms.Audit", impl->audit->service()}},
                         impl->registry.get());
  if (!server.ok()) {
    impl->Shutdown();
    return server.status();
  }
  impl->server = *std::move(server);
  if (!o.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> metrics = MetricsEndpoint::Start(
        o.metrics_listen,
        {[raw](PrometheusText& out) {
           out.Gauge("formica_dms_disk_full",
                     "1 while produce is refused because the data directory's file system is "
                     "above storage.disk_full_ratio, else 0.",
                     raw->disk->refusal().empty() ? 0 : 1);
         },
         [raw](PrometheusText& out) {
           WriteBrokerMetrics(
               {raw->topics.get(), raw->groups.get(), raw->txns.get(), raw->disk.get()}, out);
         },
         [](PrometheusText& out) { out.Append(rpc::CallMetricsPrometheusText()); }});
    if (!metrics.ok()) {
      impl->Shutdown();
      return metrics.status();
    }
    impl->metrics = *std::move(metrics);
    SPDLOG_INFO("dmsd metrics on port {} (GET /metrics)", impl->metrics->port());
  }
  SPDLOG_INFO("dmsd serving on {} ({} flush)", impl->server->address(), o.sync ? "sync" : "async");
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

Broker::Broker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Broker::Broker(std::unique_ptr<BrokerGroup> group) : group_(std::move(group)) {}
Broker::~Broker() { Shutdown(); }
int Broker::port() const { return group_ != nullptr ? group_->port() : impl_->server->port(); }
void Broker::Shutdown() {
  if (group_ != nullptr) {
    group_->Shutdown();
  } else {
    impl_->Shutdown();
  }
}

}  // namespace formica::dms
