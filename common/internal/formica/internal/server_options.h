// The section of a daemon's config that says where and how it serves: the
// `server.*` keys (listen, advertise_host, zone, unpublish_grace,
// drain_timeout), `registry.addresses` and `metrics.listen`, read the one way dtsd and dmsd
// share. For daemons only; link formica_daemon_support.
//
//   ServerSection s{.listen = "127.0.0.1:7380"};   // the daemon's defaults
//   ConfigReader r(config);
//   ReadServerSection(r, &s);
//   ...                                              // the daemon's own keys
//   CheckServerSection(r, s);                        // after them: errors keep their order
//   if (absl::Status st = r.Finish(); !st.ok()) return st;
#pragma once

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace formica {

class ConfigReader;

struct ServerSection {
  std::string listen;          // server.listen, "host:port" to bind
  std::string advertise_host;  // server.advertise_host, published in the registry
  std::string zone;            // server.zone
  absl::Duration unpublish_grace = absl::Seconds(1);  // server.unpublish_grace, 0..10m
  absl::Duration drain_timeout = absl::Seconds(5);    // server.drain_timeout, 0..10m
  std::vector<std::string> registries;                // registry.addresses (dsrd nodes)
  std::string metrics_listen;  // metrics.listen, "" (off) or "host:port" (docs/metrics.md)
};

// Reads the section's keys into `section`, whose values on entry are the
// defaults for keys the config leaves out. A value out of range is recorded
// in `reader` (its Finish() reports it).
void ReadServerSection(ConfigReader& reader, ServerSection* section);

// The same for a daemon's own options struct that has the section's fields
// under the same names (dts::CoordinatorOptions, dms::BrokerOptions): its
// values are the defaults, and the section read is returned for
// CheckServerSection.
template <typename Options>
ServerSection ReadServerSectionInto(ConfigReader& reader, Options* options) {
  ServerSection s{options->listen,          options->advertise_host, options->zone,
                  options->unpublish_grace, options->drain_timeout,  options->registries,
                  options->metrics_listen};
  ReadServerSection(reader, &s);
  options->listen = s.listen;
  options->advertise_host = s.advertise_host;
  options->zone = s.zone;
  options->unpublish_grace = s.unpublish_grace;
  options->drain_timeout = s.drain_timeout;
  options->registries = s.registries;
  options->metrics_listen = s.metrics_listen;
  return s;
}

// Records in `reader` the first registry address that breaks the address
// rule (formica/internal/address.h), under "registry.addresses".
void CheckServerSection(ConfigReader& reader, const ServerSection& section);

}  // namespace formica
