// dmsd's own metrics (docs/metrics.md): per topic, per consumer group and
// queue, dead letters, half messages, the logs' syncs and the disk. Read
// from the broker's engines at each scrape.
#pragma once

#include "consumer_groups.h"
#include "disk_watermark.h"
#include "formica/internal/metrics_endpoint.h"
#include "topic_catalog.h"
#include "transactions.h"

namespace formica::dms {

// The engines read; borrowed, and must outlive every scrape.
struct BrokerMetricsSources {
  TopicCatalog* topics = nullptr;
  ConsumerGroups* groups = nullptr;
  Transactions* txns = nullptr;
  DiskWatermark* disk = nullptr;
};

void WriteBrokerMetrics(const BrokerMetricsSources& s, PrometheusText& out);

}  // namespace formica::dms
