#include "formica/internal/server_options.h"

#include "formica/common/config.h"
#include "formica/internal/address.h"

namespace formica {

void ReadServerSection(ConfigReader& r, ServerSection* s) {
  s->listen = r.String("server.listen", s->listen);
  s->advertise_host = r.String("server.advertise_host", s->advertise_host);
  s->zone = r.String("server.zone", s->zone);
  s->unpublish_grace = r.Duration("server.unpublish_grace", s->unpublish_grace,
                                  absl::ZeroDuration(), absl::Minutes(10));
  s->drain_timeout =
      r.Duration("server.drain_timeout", s->drain_timeout, absl::ZeroDuration(), absl::Minutes(10));
  s->registries = r.StringList("registry.addresses", s->registries);
  s->metrics_listen = r.String("metrics.listen", s->metrics_listen);
}

void CheckServerSection(ConfigReader& r, const ServerSection& s) {
  for (const std::string& a : s.registries) {
    if (absl::Status st = ValidateAddress(a); !st.ok()) {
      r.Fail("registry.addresses", st.message());
      return;
    }
  }
}

}  // namespace formica
