#include "etcd.h"

#include <unistd.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace formica::testing {

absl::StatusOr<std::unique_ptr<EtcdCluster>> EtcdCluster::Start(int members, const Tls* tls) {
  if (access(kBinary, X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(kBinary, " not found (package etcd-server)"));
  }
  std::unique_ptr<EtcdCluster> cluster(new EtcdCluster());
  std::set<int> taken;
  auto port = [&taken]() {
    int p = PickFreePort();
    while (taken.count(p) > 0) p = PickFreePort();
    taken.insert(p);
    return p;
  };
  std::vector<std::string> initial;
  for (int i = 0; i < members; ++i) {
    Member m;
    m.name = absl::StrCat("etcd", i);
    m.client_port = port();
    m.peer_port = port();
    initial.push_back(absl::StrCat(m.name, "=http://127.0.0.1:", m.peer_port));
    cluster->members_.push_back(std::move(m));
  }
  for (Member& m : cluster->members_) {
    std::string client =
        absl::StrCat(tls != nullptr ? "https" : "http", "://127.0.0.1:", m.client_port);
    std::string peer = absl::StrCat("http://127.0.0.1:", m.peer_port);
    std::vector<std::string> argv = {
        kBinary, "--name", m.name, "--data-dir", cluster->dir_.File(m.name), "--listen-client-urls",
        client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer, "--initial-cluster", absl::StrJoin(initial, ","),
        "--initial-cluster-state", "new", "--initial-cluster-token", "formica-test",
        // A quicker election than the default 1 s, so a killed leader is
        // replaced within the tests' leases.
        "--heartbeat-interval", "50", "--election-timeout", "500", "--logger", "zap"};
    if (tls != nullptr) {
      argv.insert(argv.end(), {"--trusted-ca-file", tls->ca, "--cert-file", tls->cert, "--key-file",
                               tls->key, "--client-cert-auth"});
    }
    auto process = Subprocess::Start(argv, cluster->dir_.File(m.name + ".log"));
    if (!process.ok()) {
      return process.status();
    }
    m.process = std::move(*process);
  }
  for (Member& m : cluster->members_) {
    if (!m.process->WaitForOutput("serving client traffic", absl::Seconds(30))) {
      return absl::UnavailableError(
          absl::StrCat("etcd member ", m.name, " did not start:\n", m.process->Output()));
    }
  }
  return cluster;
}

EtcdCluster::~EtcdCluster() {
  for (Member& m : members_) {
    if (m.process != nullptr) {
      m.process->Kill();
    }
  }
}

std::string EtcdCluster::endpoint(int i) const {
  return absl::StrCat("127.0.0.1:", members_[i].client_port);
}

std::string EtcdCluster::endpoints() const {
  std::vector<std::string> out;
  for (int i = 0; i < size(); ++i) out.push_back(endpoint(i));
  return absl::StrJoin(out, ",");
}

void EtcdCluster::Kill9(int i) { members_[i].process->Kill(); }
bool EtcdCluster::running(int i) { return members_[i].process->running(); }
std::string EtcdCluster::Log(int i) const { return members_[i].process->Output(); }

}  // namespace formica::testing
