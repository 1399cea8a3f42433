#include "rpc_phase_two_sender.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "formica/common/grpc_status.h"
#include "formica/dts/v1/dts.grpc.pb.h"
#include "formica/rpc/client.h"

namespace formica::dts {

// One confirm or cancel on its own: for participants whose library predates
// PhaseTwoBatch.
void RpcPhaseTwoSender::SendOne(const std::string& participant, size_t index, v1::PhaseTwoItem item,
                                Done done) {
  struct Call {
    bool confirm;
    v1::PhaseTwoRequest request;
    v1::PhaseTwoResponse response;
  };
  auto call = std::make_shared<Call>();
  call->confirm = item.confirm();
  call->request.set_activity_id(item.activity_id());
  call->request.set_action(item.action());
  call->request.set_payload(std::move(*item.mutable_payload()));  // one copy in memory
  rpc::CallOptions opts;
  opts.timeout = call_timeout_;
  opts.idempotent = true;
  opts.context.txn_id = call->request.activity_id();
  calls_.fetch_add(1, std::memory_order_relaxed);
  rpc_->CallAsync(
      participant, opts,
      [call](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
             std::function<void(grpc::Status)> finish) {
        auto stub = v1::Participant::NewStub(channel);
        if (call->confirm) {
          stub->async()->Confirm(ctx, &call->request, &call->response, std::move(finish));
        } else {
          stub->async()->Cancel(ctx, &call->request, &call->response, std::move(finish));
        }
      },
      [call, index, done = std::move(done)](absl::Status status) { done(index, status); });
}

// Confirms and cancels for one participant travel in one round trip.
void RpcPhaseTwoSender::Send(const std::string& participant, std::vector<v1::PhaseTwoItem> items,
                             Done done) {
  bool batches;
  {
    absl::MutexLock lock(&mu_);
    batches = no_batch_.count(participant) == 0;
  }
  if (!batches) {
    for (size_t i = 0; i < items.size(); ++i) SendOne(participant, i, std::move(items[i]), done);
    return;
  }
  struct Call {
    size_t size;
    v1::PhaseTwoBatchRequest request;
    v1::PhaseTwoBatchResponse response;
  };
  auto call = std::make_shared<Call>();
  call->size = items.size();
  for (v1::PhaseTwoItem& item : items) *call->request.add_items() = std::move(item);
  rpc::CallOptions opts;
  opts.timeout = call_timeout_;
  opts.idempotent = true;
  if (call->size == 1) opts.context.txn_id = call->request.items(0).activity_id();
  calls_.fetch_add(call->size, std::memory_order_relaxed);
  rpc_->CallAsync(
      participant, opts,
      [call](const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* ctx,
             std::function<void(grpc::Status)> finish) {
        v1::Participant::NewStub(channel)->async()->PhaseTwoBatch(
            ctx, &call->request, &call->response, std::move(finish));
      },
      [this, call, participant, done = std::move(done)](absl::Status status) {
        // The whole call unimplemented (an undeclared action fails only
        // its item): the participant's library predates PhaseTwoBatch.
        if (absl::IsUnimplemented(status)) {
          SPDLOG_WARN("{} has no PhaseTwoBatch (an older library); calling it per action",
                      participant);
          {
            absl::MutexLock lock(&mu_);
            no_batch_.insert(participant);
          }
          for (size_t i = 0; i < call->size; ++i) {
            SendOne(participant, i, std::move(*call->request.mutable_items(static_cast<int>(i))),
                    done);
          }
          return;
        }
        if (status.ok() && call->response.results_size() != static_cast<int>(call->size)) {
          status = absl::InternalError(absl::StrCat("the participant answered ",
                                                    call->response.results_size(), " of ",
                                                    call->size, " items"));
        }
        for (size_t i = 0; i < call->size; ++i) {
          absl::Status item = status;
          if (status.ok()) {
            const v1::PhaseTwoResult& r = call->response.results(static_cast<int>(i));
            item = r.code() == 0 ? absl::OkStatus() : StatusFromCode(r.code(), r.message());
          }
          done(i, item);
        }
      });
}

}  // namespace formica::dts
