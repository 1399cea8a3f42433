#include "broker_metrics.h"

#include <map>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "formica/dms/v1/dms.pb.h"
#include "message_log.h"

namespace formica::dms {

void WriteBrokerMetrics(const BrokerMetricsSources& s, PrometheusText& out) {
  out.Family("formica_dms_messages_total", "counter",
             "Messages appended to each topic since it was created (the sum of its queues' end "
             "offsets; rate() is the produce rate).");
  std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> topics;
  for (TopicState* t : s.topics->All()) {
    uint64_t messages = 0, bytes = 0;
    for (int q = 0; q < t->topic->queues(); ++q) {
      messages += t->topic->end_offset(q);
      bytes += t->topic->bytes(q);
    }
    topics.push_back({t->name, {messages, bytes}});
  }
  for (const auto& [name, counts] : topics) {
    out.Sample("formica_dms_messages_total", {{"topic", name}}, static_cast<double>(counts.first));
  }
  out.Family("formica_dms_stored_bytes", "gauge", "Bytes each topic's queues keep on disk.");
  for (const auto& [name, counts] : topics) {
    out.Sample("formica_dms_stored_bytes", {{"topic", name}}, static_cast<double>(counts.second));
  }

  // Lag per group, topic and queue (broadcast members added up), and the
  // dead letters each group holds.
  std::map<std::tuple<std::string, std::string, int>, uint64_t> lag;
  std::map<std::string, uint64_t> dead;
  std::map<std::tuple<std::string, std::string, int>, uint64_t> acked;
  for (const std::string& group : s.groups->GroupNames()) {
    v1::GetLagRequest request;
    request.set_group(group);
    v1::GetLagReply reply;
    if (!s.groups->Lag(request, &reply).ok()) continue;
    dead[group] = reply.dead_letters();
    for (const v1::QueueLag& q : reply.queues()) {
      lag[{group, q.topic(), q.queue()}] += q.lag();
      auto& a = acked[{group, q.topic(), q.queue()}];
      a = std::max<uint64_t>(a, q.committed());
    }
  }
  out.Family("formica_dms_group_lag", "gauge",
             "Messages of a queue a consumer group has not acked yet, by group, topic and queue.");
  for (const auto& [key, n] : lag) {
    out.Sample("formica_dms_group_lag",
               {{"group", std::get<0>(key)},
                {"topic", std::get<1>(key)},
                {"queue", absl::StrCat(std::get<2>(key))}},
               static_cast<double>(n));
  }
  out.Family("formica_dms_group_committed_offset", "gauge",
             "The offset below which a group acked every message of a queue, by group, topic and "
             "queue (rate() is its delivery rate).");
  for (const auto& [key, n] : acked) {
    out.Sample("formica_dms_group_committed_offset",
               {{"group", std::get<0>(key)},
                {"topic", std::get<1>(key)},
                {"queue", absl::StrCat(std::get<2>(key))}},
               static_cast<double>(n));
  }
  out.Family("formica_dms_dead_letters", "gauge",
             "Dead letters a consumer group holds (out of attempts, not replayed yet).");
  for (const auto& [group, n] : dead) {
    out.Sample("formica_dms_dead_letters", {{"group", group}}, static_cast<double>(n));
  }

  uint64_t undecided = 0, parked = 0;
  s.txns->Count(&undecided, &parked);
  out.Gauge("formica_dms_half_messages",
            "Transactional (half) messages not decided yet, parked ones included.",
            static_cast<double>(undecided));
  out.Gauge("formica_dms_half_messages_parked",
            "Half messages out of check-backs, waiting for an operator (dms resume).",
            static_cast<double>(parked));

  MessageLogSyncLatency().Write(out, "formica_dms_log_sync_duration_seconds",
                                "Time each fdatasync of a queue's log took.");
  double used = s.disk->used_ratio();
  out.Gauge("formica_dms_disk_used_ratio",
            "Used fraction of the data directory's file system at the last check (-1: unknown).",
            used);
  out.Gauge("formica_dms_disk_full_ratio",
            "storage.disk_full_ratio: above this used fraction, produce is refused.",
            s.disk->full_ratio());
}

}  // namespace formica::dms
