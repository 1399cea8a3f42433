// Test support: a real etcd cluster of N members on loopback ports, from the
// distribution's etcd-server, in a temp dir; killed on destruction.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "process.h"

namespace formica::testing {

class EtcdCluster {
 public:
  static constexpr char kBinary[] = "/usr/bin/etcd";

  // Client TLS: etcd serves clients over https and asks for a client
  // certificate of `ca` (--client-cert-auth).
  struct Tls {
    std::string ca, cert, key;
  };
  // Starts `members` members and waits until each serves clients.
  static absl::StatusOr<std::unique_ptr<EtcdCluster>> Start(int members, const Tls* tls = nullptr);
  ~EtcdCluster();

  int size() const { return static_cast<int>(members_.size()); }
  // "127.0.0.1:port" of member i.
  std::string endpoint(int i) const;
  // Every member's endpoint, comma-separated (dsrd's storage.etcd.endpoints).
  std::string endpoints() const;
  // SIGKILL member i.
  void Kill9(int i);
  bool running(int i);
  std::string Log(int i) const;

 private:
  struct Member {
    std::string name;
    int client_port = 0;
    int peer_port = 0;
    std::unique_ptr<Subprocess> process;
  };
  EtcdCluster() = default;
  TempDir dir_;
  std::vector<Member> members_;
};

}  // namespace formica::testing
