#include "absl/strings/str_cat.h"
#include "backend.h"
#include "dds_metrics.h"

namespace formica::dds {

ConnectionPool::ConnectionPool(Backend* backend, std::string name, std::string target,
                               bool read_only, int size, absl::Duration wait)
    : backend_(backend),
      name_(std::move(name)),
      target_(std::move(target)),
      read_only_(read_only),
      size_(size),
      wait_(wait) {}

ConnectionPool::~ConnectionPool() = default;

void ConnectionPool::Lease::Release() {
  if (pool_ != nullptr && c_ != nullptr) pool_->Return(std::move(c_));
  c_.reset();
}

absl::StatusOr<ConnectionPool::Lease> ConnectionPool::Acquire() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto ready = [this] { return !idle_.empty() || open_ < size_; };
    if (!ready()) {
      ++waiting_;
      bool got = freed_.wait_for(lock, absl::ToChronoNanoseconds(wait_), ready);
      --waiting_;
      CountPoolWait(name_, !got);
      if (!got) {
        return absl::ResourceExhaustedError(absl::StrCat("database ", name_, ": all ", size_,
                                                         " connections stayed busy for ",
                                                         absl::FormatDuration(wait_)));
      }
    }
    if (!idle_.empty()) {
      std::unique_ptr<Connection> c = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(c));
    }
    ++open_;
  }
  absl::StatusOr<std::unique_ptr<Connection>> c = backend_->Connect(name_, target_, read_only_);
  if (!c.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    --open_;
    if (waiting_ > 0) freed_.notify_one();
    return c.status();
  }
  return Lease(this, *std::move(c));
}

void ConnectionPool::Return(std::unique_ptr<Connection> c) {
  std::lock_guard<std::mutex> lock(mu_);
  if (c->broken()) {
    --open_;
  } else {
    idle_.push_back(std::move(c));
  }
  if (waiting_ > 0) freed_.notify_one();
}

}  // namespace formica::dds
