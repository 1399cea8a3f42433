// A bidirectional server stream served by one thread of its own, with
// blocking reads and writes, on gRPC's callback API.
//
// gRPC's synchronous API can end a stream only from the handler's return,
// and a thread blocked reading it can be freed only by cancelling the call,
// which replaces the status the handler returns with CANCELLED. Here the
// body's status always reaches the client: StopReading() frees a blocked
// Read() without cancelling, and the status is sent with the stream's
// reads still pending (gRPC ends them).
//
//   grpc::ServerBidiReactor<Req, Resp>* Chat(grpc::CallbackServerContext* ctx) override {
//     return new ThreadedStream<Req, Resp>(ctx, [this](ThreadedStream<Req, Resp>& stream) {
//       ...  // stream.Read(), stream.Write(), from any threads the body joins
//       return grpc::Status(...);
//     });
//   }
//
// The stream deletes itself once gRPC is done with it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <set>
#include <thread>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace formica::dms {

// What a stream offers to a server that stops.
class StoppableReads {
 public:
  virtual ~StoppableReads() = default;
  virtual void StopReading() = 0;
};

// A server's live streams: stopping it frees every blocked Read at once (a
// stream still waiting for its first request too), and each stream that
// starts after reads nothing.
class LiveStreams {
 public:
  // False once stopped.
  bool Add(StoppableReads* stream) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return false;
    streams_.insert(stream);
    return true;
  }
  void Remove(StoppableReads* stream) {
    absl::MutexLock lock(&mu_);
    streams_.erase(stream);
  }
  void StopReading() {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    for (StoppableReads* stream : streams_) stream->StopReading();
  }

 private:
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::set<StoppableReads*> streams_ ABSL_GUARDED_BY(mu_);
};

template <typename Request, typename Response>
class ThreadedStream final : public grpc::ServerBidiReactor<Request, Response>,
                             public StoppableReads {
 public:
  // How long a write pending when the call is cancelled may still report
  // that it finished.
  static constexpr absl::Duration kCancelledWriteGrace = absl::Milliseconds(200);

  using Body = std::function<grpc::Status(ThreadedStream&)>;

  // With `live`, the stream is one of them while its body runs.
  ThreadedStream(grpc::CallbackServerContext* context, Body body, LiveStreams* live = nullptr)
      : context_(context), body_(std::move(body)), live_(live) {
    bool reading = live_ == nullptr || live_->Add(this);
    thread_ = std::thread([this] {
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(&started_));  // thread_ is set: OnDone may join it
      }
      grpc::Status status = body_(*this);
      if (live_ != nullptr) live_->Remove(this);
      {
        absl::MutexLock lock(&mu_);
        stop_reading_ = true;  // a read still pending ends with the call
      }
      this->Finish(status);
    });
    absl::MutexLock lock(&mu_);
    if (!reading) stop_reading_ = true;
    started_ = true;
  }

  grpc::CallbackServerContext* context() const { return context_; }

  // The next request; false once the client has finished writing, the call
  // is cancelled, or StopReading() was called. One reader at a time.
  bool Read(Request* request) {
    absl::MutexLock lock(&mu_);
    if (stop_reading_ || read_failed_) return false;
    if (!read_pending_) {
      read_pending_ = true;
      read_done_ = false;
      this->StartRead(&incoming_);
    }
    auto ready = [this]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return read_done_ || stop_reading_; };
    mu_.Await(absl::Condition(&ready));
    if (!read_done_) return false;  // stopped; the read stays pending
    read_pending_ = false;
    if (read_failed_) return false;
    *request = std::move(incoming_);
    return true;
  }

  // Makes every Read(), now or later, return false; the stream stays open.
  void StopReading() override {
    absl::MutexLock lock(&mu_);
    stop_reading_ = true;
  }

  // Blocks until the response is written; false if the call is broken or
  // cancelled. A write still waiting for the client to take more when the
  // call is cancelled (a client that stopped reading may never take it, and
  // gRPC need not end such a write with the call) is false shortly after
  // the cancellation: whatever gRPC reports first within that grace, which
  // lets a write that did finish just before say so. A false write did not
  // reach the client; later writes are false too. One writer at a time.
  bool Write(const Response& response) {
    absl::MutexLock lock(&mu_);
    if (write_failed_ || write_pending_ || cancelled_) return false;
    outgoing_ = response;
    write_pending_ = true;
    this->StartWrite(&outgoing_);
    auto ended = [this]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !write_pending_ || cancelled_; };
    mu_.Await(absl::Condition(&ended));
    if (write_pending_) {
      auto written = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !write_pending_; };
      mu_.AwaitWithTimeout(absl::Condition(&written), kCancelledWriteGrace);
      if (write_pending_) {
        write_failed_ = true;  // gRPC ends the write with the call
        return false;
      }
    }
    return !write_failed_;
  }

  bool IsCancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    read_done_ = true;
    if (!ok) read_failed_ = true;
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_pending_ = false;
    if (!ok) write_failed_ = true;
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }

  void OnDone() override {
    // The body's thread has called Finish; it ends right after.
    if (thread_.get_id() == std::this_thread::get_id()) {
      thread_.detach();
    } else {
      thread_.join();
    }
    delete this;
  }

 private:
  grpc::CallbackServerContext* const context_;
  Body body_;
  LiveStreams* const live_;
  absl::Mutex mu_;
  Request incoming_;   // gRPC writes it until OnReadDone
  Response outgoing_;  // gRPC reads it until OnWriteDone
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool read_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool read_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_reading_ ABSL_GUARDED_BY(mu_) = false;
  bool write_pending_ ABSL_GUARDED_BY(mu_) = false;  // gRPC holds outgoing_
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace formica::dms
