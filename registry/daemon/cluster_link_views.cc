// ClusterLink's operator views, read from etcd.
#include "cluster_link_impl.h"

namespace formica::registry {

absl::Status ClusterLink::Impl::GetService(const std::string& service, v1::ServiceSnapshot* out) {
  pb::RangeResponse response;
  std::string prefix = ServicePrefix(service);
  if (absl::Status st = Range(prefix, EtcdPrefixEnd(prefix), false, &response); !st.ok()) {
    return st;
  }
  if (response.kvs_size() == 0) {
    return absl::NotFoundError(
        absl::StrCat("service '", service, "' has no instances in the cluster"));
  }
  out->set_service(service);
  out->set_version(static_cast<uint64_t>(response.header().revision()));
  for (const auto& kv : response.kvs()) {
    (void)out->add_instances()->ParseFromString(kv.value());
  }
  return absl::OkStatus();
}

absl::Status ClusterLink::Impl::ListServices(v1::ListServicesResponse* out) {
  pb::RangeResponse response;
  std::string prefix = absl::StrCat(options_.prefix, "svc/");
  if (absl::Status st = Range(prefix, EtcdPrefixEnd(prefix), true, &response); !st.ok()) {
    return st;
  }
  std::map<std::string, std::pair<uint64_t, uint32_t>> services;  // version, instances
  for (const auto& kv : response.kvs()) {
    std::string service;
    std::string address;
    if (ParseInstanceKey(kv.key(), &service, &address)) {
      auto& s = services[service];
      s.first = std::max(s.first, static_cast<uint64_t>(kv.mod_revision()));
      ++s.second;
    }
  }
  for (const auto& [name, s] : services) {
    v1::ServiceSummary* summary = out->add_services();
    summary->set_service(name);
    summary->set_version(s.first);
    summary->set_instances(s.second);
  }
  return absl::OkStatus();
}

absl::Status ClusterLink::Impl::Describe(v1::ClusterInfo* out) {
  out->set_mode("cluster");
  out->set_cluster(options_.cluster_name);
  pb::RangeResponse members;
  std::string prefix = absl::StrCat(options_.prefix, "member/");
  if (absl::Status st = Range(prefix, EtcdPrefixEnd(prefix), false, &members); !st.ok()) {
    return st;
  }
  out->set_etcd_revision(members.header().revision());
  for (const auto& kv : members.kvs()) {
    v1::ClusterNode* node = out->add_nodes();
    if (node->ParseFromString(kv.value())) {
      node->set_self(node->id() == options_.node_id);
    }
  }
  pb::MemberListRequest list_request;
  pb::MemberListResponse list;
  if (absl::Status st =
          Call("member list", &pb::Cluster::Stub::MemberList, cluster_.get(), list_request, &list);
      !st.ok()) {
    return st;
  }
  pb::StatusRequest status_request;
  pb::StatusResponse status;
  uint64_t leader = 0;
  if (Call("status", &pb::Maintenance::Stub::Status, maintenance_.get(), status_request, &status)
          .ok()) {
    leader = status.leader();
  }
  for (const pb::Member& m : list.members()) {
    v1::EtcdMember* member = out->add_etcd_members();
    member->set_id(m.id());
    member->set_name(m.name());
    for (const std::string& url : m.clienturls()) {
      member->add_client_urls(url);
    }
    member->set_leader(m.id() == leader);
  }
  return absl::OkStatus();
}

}  // namespace formica::registry
