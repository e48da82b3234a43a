#include "store/checkpoint_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <ctime>

#include "codec/chunk_codec.h"
#include "codec/chunk_summary.h"
#include "codec/chunk_walk.h"
#include "codec/state_digest.h"
#include "cvmstate/schema/checkpoint_generated.h"
#include "cvmstate/schema/manifest_generated.h"
#include "store/checkpoint_decode.h"
#include "store/commit_record.h"
#include "store/info_log.h"
#include "store/store_keys.h"
#include "tracker/format.h"
#include "tracker/names.h"

namespace cvmstate {
namespace {

namespace fbs = cvmstate::schema;
using namespace store_keys;
// RocksDB's memtable size: large enough for a few thousand commits of
// changed chunks, small enough to bound what a restart replays.
constexpr size_t kWriteBufferBytes = size_t{16} << 20;

constexpr uint32_t kFormatVersion = store_format::kFormatVersion;
static_assert(CheckpointStore::kChunkShift == kDigestChunkShift, "the manifest's stretches are the digest's chunks");

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.IsCorruption()) return Status::Corruption(what + ": " + s.ToString());
  return Status::IOError(what + ": " + s.ToString());
}

Status CheckVmId(const std::string& id) {
  if (IsValidVmId(id)) return Status::OK();
  return Status::InvalidArgument("invalid VM id " + Quoted(id) + " (" + kVmIdRule + ")");
}

}  // namespace

CheckpointStore::CheckpointStore(std::unique_ptr<rocksdb::DB> db, std::unique_ptr<CommitRecord> record,
                                 std::shared_ptr<rocksdb::Logger> log)
    : log_(std::move(log)), db_(std::move(db)), record_(std::move(record)) {}
CheckpointStore::~CheckpointStore() = default;

Result<std::unique_ptr<CheckpointStore>> CheckpointStore::Open(const std::string& dir, bool read_only,
                                                               rocksdb::Env* env) {
  if (dir.empty()) return Status::InvalidArgument("the store directory name is empty");
  // Read before RocksDB recovers: a commit that lands in between can only
  // make the database newer than the record, never older.
  auto record = std::make_unique<CommitRecord>(dir);
  auto recorded = record->Read();
  if (!recorded.ok()) return recorded.status().WithPrefix("cannot open store " + Quoted(dir) + ": ");
  rocksdb::Options o;
  if (env != nullptr) o.env = env;
  o.create_if_missing = !read_only;
  // Many VMs share one database per host: keep file handles bounded.
  o.max_open_files = 256;
  // Values are zstd frames already; a second compression only costs CPU.
  o.compression = rocksdb::kNoCompression;
  o.paranoid_checks = true;
  // A damaged WAL record is an error, not the end of the log; only a torn
  // final write (never acknowledged, as every commit is synced) is dropped.
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  // Our own small log, which a full disk cannot turn into an abort.
  auto log = std::make_shared<InfoLog>(read_only || env != nullptr ? std::string() : dir + "/LOG",
                                       rocksdb::WARN_LEVEL, size_t{1} << 20);
  o.info_log = log;
  o.write_buffer_size = kWriteBufferBytes;
  o.max_total_wal_size = 64 << 20;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = read_only ? rocksdb::DB::OpenForReadOnly(o, dir, &raw) : rocksdb::DB::Open(o, dir, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock file") != std::string::npos) {
      return Status::IOError("store " + Quoted(dir) + " is in use by another process (" + s.ToString() + ")");
    }
    return FromRocks(s, "cannot open store " + Quoted(dir));
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  const uint64_t recovered = db->GetLatestSequenceNumber();
  if (recovered < recorded.value()) {
    return Status::Corruption("store " + Quoted(dir) + " has lost committed checkpoints: its last commit was write " +
                              std::to_string(recorded.value()) + " but the database recovers only to write " +
                              std::to_string(recovered) + " (a damaged write-ahead log); refusing to use it. To "
                              "accept the older state, remove " + Quoted(dir + "/" + CommitRecord::kFileName));
  }
  return std::unique_ptr<CheckpointStore>(new CheckpointStore(std::move(db), std::move(record), std::move(log)));
}

Result<std::vector<std::string>> CheckpointStore::ListVms() const {
  std::vector<std::string> vms;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("m"); it->Valid() && it->key().starts_with("m"); it->Next()) {
    vms.push_back(it->key().ToString().substr(1));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "cannot list VMs");
  return vms;
}

Result<bool> CheckpointStore::HasVm(const std::string& vm) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), ManifestKey(vm), &value);
  if (s.IsNotFound()) return false;
  if (!s.ok()) return FromRocks(s, "cannot read the manifest of VM " + Quoted(vm));
  return true;
}

Status CheckpointStore::Write(rocksdb::WriteBatch* batch, bool commit) {
  rocksdb::WriteOptions w;
  w.sync = true;  // durable before we say "committed"
  rocksdb::Status s = db_->Write(w, batch);
  if (!s.ok()) {
    // A failed WAL write stops RocksDB's writes; once the fault is gone
    // the next checkpoint should work, so try to resume now.
    (void)db_->Resume();
    return FromRocks(s, commit ? "cannot commit the checkpoint" : "cannot write the checkpoint's records");
  }
  if (batch->GetDataSize() > kWriteBufferBytes) {
    // A batch larger than the memtable would be flushed in the background
    // after the next write and compete with the writes that follow for
    // the disk: a destination's last, synced, stage waited up to 30 ms
    // behind the flush of its first. Flushing now keeps the cost in this
    // write. The batch is durable already (in the synced log): a failed
    // flush is a warning, and RocksDB, which stops writing after one, is
    // asked to resume, as after a failed write.
    rocksdb::FlushOptions f;
    f.wait = true;
    rocksdb::Status fs = db_->Flush(f);
    if (!fs.ok()) {
      rocksdb::Warn(log_, "flush after a large write: %s", fs.ToString().c_str());
      (void)db_->Resume();
    }
  }
  if (!commit) return Status::OK();
  // The commit is durable; a record that cannot follow only weakens the
  // next Open's check (the next commit writes it again).
  Status r = record_->Record(db_->GetLatestSequenceNumber());
  if (!r.ok()) rocksdb::Warn(log_, "%s", r.message().c_str());
  return Status::OK();
}

uint64_t CheckpointStore::DeleteAllChunks(rocksdb::WriteBatch* batch, const std::string& id) {
  const auto [from, to] = ChunkKeyRange(id);
  batch->DeleteRange(from, to);
  return from.size() + to.size();
}

Status CheckpointStore::PutChunks(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm, size_t bi,
                                  uint64_t c0, uint64_t c1, ChunkWrites* out) const {
  const BlockTracker& b = vm.block(bi);
  const uint64_t pages = BlockPages(b);
  const uint32_t block = static_cast<uint32_t>(bi);
  Status err;
  ForEachChunk(
      b, kChunkShift, c0, c1,
      [&](uint64_t a, uint64_t z, PageState) {
        // Uniform chunks need no record: delete what may be there.
        if (z - a > 16) {
          std::string from = ChunkKey(id, block, a), to = ChunkKey(id, block, z);
          batch->DeleteRange(from, to);
          out->bytes += from.size() + to.size();
        } else {
          for (uint64_t c = a; c < z; ++c) {
            std::string k = ChunkKey(id, block, c);
            batch->Delete(k);
            out->bytes += k.size();
          }
        }
      },
      [&](uint64_t c, const std::vector<ChunkRun>& runs) {
        if (!err.ok()) return;
        std::string payload;
        uint32_t raw = 0;
        err = EncodeChunk(runs, &payload, &raw);
        if (!err.ok()) return;
        flatbuffers::FlatBufferBuilder fb(payload.size() + 256);
        auto rec = fbs::CreateChunkRecord(
            fb, kFormatVersion, fb.CreateString(id), fb.CreateString(b.name()), block, c,
            static_cast<uint32_t>(ChunkPagesAt(pages, kChunkShift, c)), fbs::ChunkEncoding::RunLengthV1,
            static_cast<uint32_t>(runs.size()), raw,
            fb.CreateVector(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
        fbs::FinishChunkRecordBuffer(fb, rec);
        std::string k = ChunkKey(id, block, c);
        batch->Put(k, rocksdb::Slice(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize()));
        out->bytes += k.size() + fb.GetSize();
        ++out->records;
      });
  return err;
}

Status CheckpointStore::EncodeStretches(const VmState& vm, const std::vector<ChunkSummary>& summaries,
                                        std::vector<EncodedStretches>* cache) {
  cache->resize(vm.num_blocks());
  std::string raw;
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const ChunkSummary& summary = summaries[i];
    EncodedStretches& e = (*cache)[i];
    if (e.version == summary.stretch_version()) continue;
    uint32_t count = 0;
    summary.EncodeStretches(&raw, &count);
    e.version = ~uint64_t{0};  // until encoded
    Status zs = ZstdCompress(raw, &e.z);
    if (!zs.ok()) return zs;
    e.raw_size = static_cast<uint32_t>(raw.size());
    e.count = count;
    e.version = summary.stretch_version();
  }
  return Status::OK();
}

Result<uint64_t> CheckpointStore::PutManifest(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm,
                                              const std::vector<ChunkSummary>& summaries,
                                              std::vector<EncodedStretches>* cache, uint64_t sequence) const {
  Status encoded = EncodeStretches(vm, summaries, cache);
  if (!encoded.ok()) return encoded;
  flatbuffers::FlatBufferBuilder fb;
  std::vector<flatbuffers::Offset<fbs::BlockManifest>> blocks;
  std::vector<uint64_t> sums;
  uint64_t total_runs = 0;
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    const ChunkSummary& summary = summaries[i];
    const EncodedStretches& e = (*cache)[i];
    total_runs += summary.runs();
    sums.push_back(summary.digest_sum());
    blocks.push_back(fbs::CreateBlockManifest(
        fb, fb.CreateString(b.name()), b.size(), b.page_size(), static_cast<uint8_t>(b.initial_state()),
        fb.CreateVector(reinterpret_cast<const uint8_t*>(e.z.data()), e.z.size()), e.raw_size, e.count));
  }
  auto m = fbs::CreateManifest(fb, store_format::kManifestVersion, fb.CreateString(id), sequence, kChunkShift,
                               static_cast<uint64_t>(std::time(nullptr)), fb.CreateVector(blocks),
                               CombineStateDigest(vm, sums), total_runs);
  fbs::FinishManifestBuffer(fb, m);
  const std::string k = ManifestKey(id);
  batch->Put(k, rocksdb::Slice(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize()));
  return k.size() + fb.GetSize();
}

Result<uint64_t> CheckpointStore::CommitFull(const std::string& id, const VmState& vm, uint64_t sequence) {
  return CommitFullAs(id, vm, sequence, nullptr);
}

Result<uint64_t> CheckpointStore::CommitFullAs(const std::string& id, const VmState& vm, uint64_t sequence,
                                               const void* writer) {
  Status s = CheckVmId(id);
  if (s.ok()) s = CheckWriter(id, writer);
  if (!s.ok()) return s;
  rocksdb::WriteBatch batch;
  ChunkWrites w;
  w.bytes = DeleteAllChunks(&batch, id);
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    s = PutChunks(&batch, id, vm, i, 0, ChunkCount(BlockPages(vm.block(i)), kChunkShift), &w);
    if (!s.ok()) return s;
  }
  std::vector<ChunkSummary> summaries(vm.num_blocks());
  for (size_t i = 0; i < vm.num_blocks(); ++i) summaries[i].Rebuild(vm.block(i));
  std::vector<EncodedStretches> stretches;
  auto m = PutManifest(&batch, id, vm, summaries, &stretches, sequence);
  if (!m.ok()) return m.status();
  s = Write(&batch);
  if (!s.ok()) return s;
  return w.bytes + m.value();
}

Result<uint64_t> CheckpointStore::CommitNew(const std::string& id, const VmState& vm) {
  // Held while it checks and writes: no other new VM of this id between.
  const char token = 0;
  Status s = CheckVmId(id);
  if (s.ok()) s = Hold(id, &token);
  if (!s.ok()) return s;
  auto r = CommitFullAs(id, vm, 1, &token);
  Release(id, &token);
  return r;
}

namespace {

Status BeingReceived(const std::string& id) {
  return Status::AlreadyExists("VM " + Quoted(id) + " is being received into the store");
}

}  // namespace

Status CheckpointStore::Hold(const std::string& id, const void* holder) {
  std::lock_guard<std::mutex> lock(held_mu_);
  if (held_.count(id) != 0) return BeingReceived(id);
  auto has = HasVm(id);
  if (!has.ok()) return has.status();
  if (has.value()) return Status::AlreadyExists("VM " + Quoted(id) + " already exists in the store");
  held_.emplace(id, holder);
  return Status::OK();
}

void CheckpointStore::Release(const std::string& id, const void* holder) {
  std::lock_guard<std::mutex> lock(held_mu_);
  auto it = held_.find(id);
  if (it != held_.end() && it->second == holder) held_.erase(it);
}

Status CheckpointStore::CheckWriter(const std::string& id, const void* writer) const {
  std::lock_guard<std::mutex> lock(held_mu_);
  auto it = held_.find(id);
  return it != held_.end() && it->second != writer ? BeingReceived(id) : Status::OK();
}

Status CheckpointStore::DeleteVm(const std::string& id) { return DeleteVmAs(id, nullptr); }

Status CheckpointStore::DeleteVmAs(const std::string& id, const void* writer) {
  Status s = CheckWriter(id, writer);
  if (!s.ok()) return s;
  rocksdb::WriteBatch batch;
  DeleteAllChunks(&batch, id);
  batch.Delete(ManifestKey(id));
  return Write(&batch);
}

namespace {

// A VM's chunk records through a RocksDB iterator, for DecodeCheckpoint.
class RocksRecordSource final : public ChunkRecordSource {
 public:
  RocksRecordSource(rocksdb::DB* db, const std::string& id)
      : it_(db->NewIterator(rocksdb::ReadOptions())), prefix_(ChunkPrefix(id)) {
    it_->Seek(prefix_);
  }
  bool Valid() const override { return it_->Valid() && it_->key().starts_with(prefix_); }
  std::string_view key() const override { return it_->key().ToStringView(); }
  std::string_view value() const override { return it_->value().ToStringView(); }
  void Next() override { it_->Next(); }
  Status status() const override { return it_->status().ok() ? Status::OK() : FromRocks(it_->status(), "cannot read the chunk records"); }

 private:
  std::unique_ptr<rocksdb::Iterator> it_;
  std::string prefix_;
};

}  // namespace

Result<VmState> CheckpointStore::Load(const std::string& id, CheckpointInfo* info) const {
  const std::string where = "VM " + Quoted(id);
  // Pinned, not copied: the decoder checks the size before it copies.
  rocksdb::PinnableSlice manifest;
  rocksdb::Status rs = db_->Get(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), ManifestKey(id), &manifest);
  if (rs.IsNotFound()) return Status::NotFound("no checkpoint of " + where + " in this store");
  if (!rs.ok()) return FromRocks(rs, "cannot read the manifest of " + where);
  RocksRecordSource records(db_.get(), id);
  return DecodeCheckpoint(id, manifest.ToStringView(), &records, info);
}

}  // namespace cvmstate
