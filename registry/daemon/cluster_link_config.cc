// ClusterLink's config entries: etcd keys whose mod revision is the entry's
// version; compare-and-set is an etcd transaction.
#include "cluster_link_impl.h"

namespace formica::registry {

absl::StatusOr<mvccpb::Event> ClusterLink::Impl::FirstChange(const std::string& key,
                                                             int64_t revision) {
  grpc::ClientContext context;
  context.AddMetadata("hasleader", "true");
  context.set_wait_for_ready(true);
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.request_timeout));
  auto stream = watch_->Watch(&context);
  pb::WatchRequest request;
  request.mutable_create_request()->set_key(key);
  request.mutable_create_request()->set_start_revision(revision);
  pb::WatchResponse response;
  if (stream->Write(request)) {
    while (stream->Read(&response)) {
      if (response.canceled()) {
        context.TryCancel();
        (void)stream->Finish();
        return absl::FailedPreconditionError(
            absl::StrCat("etcd no longer has the history of '", key, "' from revision ", revision,
                         " (compacted at ", response.compact_revision(), ")"));
      }
      if (response.events_size() > 0) {
        context.TryCancel();
        (void)stream->Finish();
        return response.events(0);
      }
    }
  }
  return EtcdError("watch", stream->Finish());
}

// Config entries as etcd keys: the version is the key's mod revision;
// compare-and-set is an etcd transaction comparing it.
class ClusterLink::Impl::ConfigStore final : public RegistryStore {
 public:
  explicit ConfigStore(Impl* link) : link_(link) {}

  absl::StatusOr<uint64_t> NextBootEpoch() override {
    return static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now()));
  }

  absl::StatusOr<StoredConfig> GetConfig(absl::string_view key) override {
    pb::RangeResponse response;
    if (absl::Status st = link_->Range(link_->ConfigKey(key), "", false, &response); !st.ok()) {
      return st;
    }
    StoredConfig entry;
    entry.key = std::string(key);
    if (response.kvs_size() > 0) {
      entry.value = response.kvs(0).value();
      entry.version = static_cast<uint64_t>(response.kvs(0).mod_revision());
      entry.exists = true;
    }
    return entry;
  }

  absl::StatusOr<std::vector<StoredConfig>> ListConfig(absl::string_view prefix) override {
    std::string from = link_->ConfigKey(prefix);
    pb::RangeResponse response;
    if (absl::Status st = link_->Range(from, EtcdPrefixEnd(from), false, &response); !st.ok()) {
      return st;
    }
    size_t strip = link_->ConfigKey("").size();
    std::vector<StoredConfig> out;
    for (const auto& kv : response.kvs()) {
      StoredConfig entry;
      entry.key = kv.key().substr(strip);
      entry.value = kv.value();
      entry.version = static_cast<uint64_t>(kv.mod_revision());
      entry.exists = true;
      out.push_back(std::move(entry));
    }
    return out;
  }

  absl::StatusOr<StoredConfig> PutConfig(absl::string_view key, absl::string_view value,
                                         std::optional<uint64_t> expected_version) override {
    pb::TxnRequest txn;
    std::string etcd_key = link_->ConfigKey(key);
    Guard(&txn, etcd_key, expected_version);
    pb::PutRequest* put = txn.add_success()->mutable_request_put();
    put->set_key(etcd_key);
    put->set_value(std::string(value));
    pb::TxnResponse response;
    bool repeated = false;
    if (absl::Status st = link_->Txn(txn, &response, &repeated); !st.ok()) {
      return st;
    }
    StoredConfig entry;
    entry.key = std::string(key);
    entry.value = std::string(value);
    entry.exists = true;
    if (!response.succeeded()) {
      return RefusedOrOwn(key, etcd_key, std::move(entry), *expected_version, repeated, response);
    }
    entry.version = static_cast<uint64_t>(response.header().revision());
    return entry;
  }

  absl::StatusOr<StoredConfig> DeleteConfig(absl::string_view key,
                                            std::optional<uint64_t> expected_version) override {
    pb::TxnRequest txn;
    std::string etcd_key = link_->ConfigKey(key);
    Guard(&txn, etcd_key, expected_version);
    txn.add_success()->mutable_request_delete_range()->set_key(etcd_key);
    pb::TxnResponse response;
    bool repeated = false;
    if (absl::Status st = link_->Txn(txn, &response, &repeated); !st.ok()) {
      return st;
    }
    if (!response.succeeded()) {
      StoredConfig entry;
      entry.key = std::string(key);
      entry.exists = false;
      return RefusedOrOwn(key, etcd_key, std::move(entry), *expected_version, repeated, response);
    }
    if (response.responses_size() == 0 ||
        response.responses(0).response_delete_range().deleted() == 0) {
      return absl::NotFoundError(absl::StrCat("config key '", key, "' does not exist"));
    }
    StoredConfig entry;
    entry.key = std::string(key);
    entry.version = static_cast<uint64_t>(response.header().revision());
    entry.exists = false;
    return entry;
  }

 private:
  // A compare-and-set refused by its guard: `wanted` with the version of
  // the change that applied it, when that change was this very write
  // (AppliedBefore); otherwise the conflict.
  absl::StatusOr<StoredConfig> RefusedOrOwn(absl::string_view key, const std::string& etcd_key,
                                            StoredConfig wanted, uint64_t expected, bool repeated,
                                            const pb::TxnResponse& response) {
    absl::StatusOr<uint64_t> own = AppliedBefore(etcd_key, wanted, expected, repeated, response);
    if (!own.ok()) {
      return Conflict(key, expected, response);
    }
    wanted.version = *own;
    return wanted;
  }

  // A compare-and-set whose transaction was sent again after an attempt
  // that may have reached etcd, and whose last attempt found the key moved
  // on: if the first change to the key after the expected version is
  // exactly this write (`wanted`: its value, or its deletion), an earlier
  // attempt applied it and lost its reply. Returns that change's version;
  // NOT_FOUND if the key was changed by someone else.
  absl::StatusOr<uint64_t> AppliedBefore(const std::string& etcd_key, const StoredConfig& wanted,
                                         uint64_t expected, bool repeated,
                                         const pb::TxnResponse& conflict) {
    if (!repeated) {
      return absl::NotFoundError("sent once: the conflict is real");
    }
    if (expected != 0 && expected >= static_cast<uint64_t>(conflict.header().revision())) {
      // No change after it exists yet: waiting for one would stall the write.
      return absl::NotFoundError("the expected version is not one the store has reached");
    }
    int64_t from = static_cast<int64_t>(expected) + 1;
    if (expected == 0) {
      // Created by this write? Then the key's current life began with it.
      if (conflict.responses_size() == 0 ||
          conflict.responses(0).response_range().kvs_size() == 0) {
        return absl::NotFoundError("the key does not exist");
      }
      from = conflict.responses(0).response_range().kvs(0).create_revision();
    }
    absl::StatusOr<mvccpb::Event> change = link_->FirstChange(etcd_key, from);
    if (!change.ok()) {
      SPDLOG_WARN("config key '{}': cannot tell whether a repeated write had applied: {}",
                  wanted.key, change.status().ToString());
      return change.status();
    }
    bool same = wanted.exists
                    ? change->type() == mvccpb::Event::PUT && change->kv().value() == wanted.value
                    : change->type() == mvccpb::Event::DELETE;
    if (!same) {
      return absl::NotFoundError("changed by someone else");
    }
    return static_cast<uint64_t>(change->kv().mod_revision());
  }

  // With an expected version, the write happens only if the key is still at
  // it; otherwise the transaction reads the key to name its version.
  static void Guard(pb::TxnRequest* txn, const std::string& etcd_key,
                    std::optional<uint64_t> expected) {
    if (!expected.has_value()) {
      return;
    }
    pb::Compare* cmp = txn->add_compare();
    cmp->set_key(etcd_key);
    cmp->set_result(pb::Compare::EQUAL);
    if (*expected == 0) {
      cmp->set_target(pb::Compare::VERSION);  // a key that does not exist has version 0
      cmp->set_version(0);
    } else {
      cmp->set_target(pb::Compare::MOD);
      cmp->set_mod_revision(static_cast<int64_t>(*expected));
    }
    txn->add_failure()->mutable_request_range()->set_key(etcd_key);
  }

  static absl::Status Conflict(absl::string_view key, uint64_t expected,
                               const pb::TxnResponse& response) {
    uint64_t current = 0;
    if (response.responses_size() > 0 && response.responses(0).response_range().kvs_size() > 0) {
      current = static_cast<uint64_t>(response.responses(0).response_range().kvs(0).mod_revision());
    }
    return absl::FailedPreconditionError(
        absl::StrCat("config key '", key, "' is at version ", current,
                     current == 0 ? " (it does not exist)" : "", ", not the expected ", expected));
  }

  Impl* const link_;
};

std::unique_ptr<RegistryStore> ClusterLink::NewConfigStore() {
  return std::make_unique<Impl::ConfigStore>(impl_.get());
}

}  // namespace formica::registry
