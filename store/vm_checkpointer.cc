#include "store/vm_checkpointer.h"

#include <rocksdb/write_batch.h>

#include <utility>
#include <vector>

#include "codec/chunk_walk.h"
#include "tracker/format.h"
#include "tracker/names.h"

namespace cvmstate {
namespace {

constexpr unsigned kChunkShift = CheckpointStore::kChunkShift;
// The largest batch a checkpointer keeps between commits: a few thousand
// changed chunks' records.
constexpr size_t kKeptBatchBytes = size_t{4} << 20;

// Chunk ranges [a, z) covering the changed page ranges, merged.
std::vector<std::pair<uint64_t, uint64_t>> ChangedChunks(const std::vector<PageRange>& changed) {
  std::vector<std::pair<uint64_t, uint64_t>> todo;
  for (const PageRange& r : changed) {
    const uint64_t a = r.begin >> kChunkShift, z = ((r.end - 1) >> kChunkShift) + 1;
    if (!todo.empty() && todo.back().second >= a) {
      todo.back().second = std::max(todo.back().second, z);
    } else {
      todo.push_back({a, z});
    }
  }
  return todo;
}

}  // namespace

VmCheckpointer::VmCheckpointer(CheckpointStore* store, std::string vm_id) : store_(store), id_(std::move(vm_id)) {}

VmCheckpointer::~VmCheckpointer() {
  if (holds_) store_->Release(id_, this);
}

Status VmCheckpointer::HoldNewVm() {
  if (!IsValidVmId(id_)) return Status::InvalidArgument("invalid VM id " + Quoted(id_) + " (" + kVmIdRule + ")");
  if (holds_) return Status::OK();
  Status s = store_->Hold(id_, this);
  holds_ = s.ok();
  return s;
}

Status VmCheckpointer::DeleteAll() { return store_->DeleteVmAs(id_, this); }

Result<VmCheckpointer::Commit> VmCheckpointer::CommitState(VmState& vm) { return Write(vm, true); }

Result<VmCheckpointer::Commit> VmCheckpointer::StageState(VmState& vm) { return Write(vm, false); }

Result<VmCheckpointer::Commit> VmCheckpointer::Write(VmState& vm, bool with_manifest) {
  if (!IsValidVmId(id_)) return Status::InvalidArgument("invalid VM id " + Quoted(id_) + " (" + kVmIdRule + ")");
  const bool first = !journal_.attached();
  if (!first && journal_.vm() != &vm) {
    return Status::InvalidArgument("a checkpointer commits one VM state; VM " + Quoted(id_) + " was another");
  }
  Status held = store_->CheckWriter(id_, this);
  if (!held.ok()) return held;
  if (batch_ == nullptr) batch_ = std::make_unique<rocksdb::WriteBatch>();
  // Emptied, or dropped if large, whatever this commit's outcome.
  struct Reuse {
    std::unique_ptr<rocksdb::WriteBatch>& batch;
    ~Reuse() {
      if (batch->GetDataSize() > kKeptBatchBytes) {
        batch.reset();
      } else {
        batch->Clear();
      }
    }
  } reuse{batch_};
  rocksdb::WriteBatch& batch = *batch_;
  Commit c;
  c.sequence = with_manifest ? sequence_ + 1 : 0;
  CheckpointStore::ChunkWrites w;
  // The first checkpoint replaces whatever this id held, in the same batch.
  if (first) w.bytes = CheckpointStore::DeleteAllChunks(&batch, id_);
  summaries_.resize(vm.num_blocks());
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    const uint64_t chunks = ChunkCount(BlockPages(b), kChunkShift);
    const bool whole = first || i >= stored_blocks_;
    const auto todo =
        whole ? std::vector<std::pair<uint64_t, uint64_t>>{{0, chunks}} : ChangedChunks(journal_.Changed(b));
    if (whole) summaries_[i].Rebuild(b);
    for (const auto& [a, z] : todo) {
      Status s = store_->PutChunks(&batch, id_, vm, i, a, z, &w);
      if (!s.ok()) return s;
      if (!whole) summaries_[i].Update(b, a, z);
    }
  }
  uint64_t manifest_bytes = 0;
  if (with_manifest) {
    auto m = store_->PutManifest(&batch, id_, vm, summaries_, &stretches_, c.sequence);
    if (!m.ok()) return m.status();
    manifest_bytes = m.value();
  } else {
    // The manifest's stretches now, while the stage is not in anyone's
    // way: the commit that follows re-encodes only what changed since.
    Status s = CheckpointStore::EncodeStretches(vm, summaries_, &stretches_);
    if (!s.ok()) return s;
  }
  Status s = store_->Write(&batch, with_manifest);
  if (!s.ok()) return s;  // nothing changed here: the next commit retries all
  c.bytes = w.bytes + manifest_bytes;
  c.records = w.records;
  if (first) {
    journal_.Attach(&vm);
  } else {
    journal_.Advance();
  }
  stored_blocks_ = vm.num_blocks();
  if (with_manifest) sequence_ = c.sequence;
  return c;
}

}  // namespace cvmstate
