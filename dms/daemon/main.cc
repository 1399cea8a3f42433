// dmsd: the Formica message broker. See docs/dms.md.
#include "broker.h"
#include "formica/internal/daemon.h"

int main(int argc, char** argv) {
  return formica::RunDaemon(argc, argv, "dmsd",
                            {{"listen", "server.listen"},
                             {"data-dir", "storage.data_dir"},
                             {"quarantine-damaged-topics", "storage.quarantine_damaged_topics"},
                             {"registry", "registry.addresses"}},
                            formica::dms::LoadBrokerOptions, formica::dms::Broker::Start);
}
