#include "service_table.h"

#include <google/protobuf/util/message_differencer.h>

#include "registry_store.h"

namespace formica::registry {

bool SameInstance(const v1::Instance& a, const v1::Instance& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

Msg ConfigMessage(const StoredConfig& stored) {
  auto message = std::make_shared<v1::ServerMessage>();
  v1::ConfigEntry* entry = message->mutable_config();
  entry->set_key(stored.key);
  entry->set_value(stored.value);
  entry->set_version(stored.version);
  entry->set_exists(stored.exists);
  return message;
}

}  // namespace formica::registry
