// fund::Book — one kind of per-user balance held as TCC resources on a DDS
// data source sharded by user id: the account service's money (table
// accounts, column balance) and the fund service's shares (table holdings,
// column shares) are both a Book. Each row has the available amount, what
// tries have frozen (taken out, awaiting confirm) and what they have noted
// as incoming (awaiting confirm). Every try, confirm and cancel is a local
// transaction on the user's shard together with its barrier row
// (dts::ShardedParticipant), so a repeat, a cancel without its try, or a
// try after its cancel never moves anything twice.
//
//   auto book = Book::Open({.table = "accounts", .column = "balance", ...}, rpc, ds).value();
//   // in a handler served by rpc::Serve, inside the caller's activity:
//   absl::Status st = book->Take(user, 500);   // FAILED_PRECONDITION when short
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "formica/dds/data_source.h"
#include "formica/dts/sharded_participant.h"

namespace formica::rpc {
class Client;
}

namespace fund {

struct BookOptions {
  std::string table;        // "accounts"
  std::string column;       // "balance"
  std::string noun;         // "balance": named in refusals ("insufficient balance")
  std::string participant;  // the registry name of its dts Participant service
  std::string take_action = "take";
  std::string give_action = "give";
};

struct BookTotals {
  int64_t rows = 0;
  int64_t available = 0;
  int64_t frozen = 0;
  int64_t incoming = 0;
};

class Book {
 public:
  // Creates the table when missing. `rpc` and `ds` are borrowed.
  static absl::StatusOr<std::unique_ptr<Book>> Open(BookOptions options, formica::rpc::Client* rpc,
                                                    formica::dds::ShardedDataSource* ds);

  // Try of the take action in the activity of the call being served:
  // freezes `amount` of the user's available amount. FAILED_PRECONDITION
  // "insufficient <noun>" when short, NOT_FOUND for an unknown user; then
  // nothing is frozen. Confirm takes it; cancel puts it back.
  absl::Status Take(int64_t user, int64_t amount);
  // Try of the give action: notes `amount` as incoming. Confirm adds it to
  // the available amount; cancel drops it.
  absl::Status Give(int64_t user, int64_t amount);

  // Gives users 1..`users` a row with `initial` available, leaving existing
  // rows alone; one local transaction per shard. Returns the rows added.
  // `owns` (optional) says which shards are this zone's: others are skipped.
  absl::StatusOr<int64_t> Populate(int64_t users, int64_t initial,
                                   const std::function<bool(int shard)>& owns = nullptr);

  absl::StatusOr<BookTotals> Totals();
  // available + frozen + incoming of one user (NOT_FOUND if none).
  absl::StatusOr<BookTotals> Of(int64_t user);

  formica::dts::ShardedParticipant* participant() { return participant_.get(); }

 private:
  Book(BookOptions options, formica::dds::ShardedDataSource* ds)
      : options_(std::move(options)), ds_(ds) {}
  absl::Status Step(formica::dds::Transaction* tx, const std::string& payload,
                    const std::string& set);

  BookOptions options_;
  formica::dds::ShardedDataSource* ds_;
  std::unique_ptr<formica::dts::ShardedParticipant> participant_;
};

}  // namespace fund
