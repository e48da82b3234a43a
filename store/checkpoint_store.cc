#include "cvmstate/checkpoint_store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <ctime>

#include "cvmstate/schema/checkpoint_generated.h"
#include "cvmstate/chunk_codec.h"
#include "cvmstate/schema/manifest_generated.h"
#include "cvmstate/state_digest.h"

namespace cvmstate {
namespace {

namespace fbs = cvmstate::schema;

constexpr uint32_t kFormatVersion = 1;
constexpr unsigned kChunkShift = 17;  // 512 MiB of 4 KiB pages a record: fewer, larger records
constexpr size_t kMaxManifestBytes = size_t{64} << 20;
constexpr size_t kMaxRecordBytes = size_t{4} << 20;
constexpr uint8_t kDetailed = 3;  // a stretch of chunks that have records

std::string ManifestKey(const std::string& id) { return "m" + id; }
std::string ChunkPrefix(const std::string& id) { return "c" + id + std::string(1, '\0'); }
std::string ChunkKey(const std::string& id, uint32_t block, uint64_t chunk) {
  std::string k = ChunkPrefix(id);
  for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>(block >> (8 * i)));
  for (int i = 7; i >= 0; --i) k.push_back(static_cast<char>(chunk >> (8 * i)));
  return k;
}
Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.IsCorruption()) return Status::Corruption(what + ": " + s.ToString());
  return Status::IOError(what + ": " + s.ToString());
}

struct Stretch {
  uint64_t chunks;
  uint8_t state;  // PageState value, or kDetailed
};

std::vector<Stretch> BlockStretches(const BlockTracker& b) {
  std::vector<Stretch> v;
  auto add = [&v](uint64_t n, uint8_t s) {
    if (!v.empty() && v.back().state == s) {
      v.back().chunks += n;
    } else {
      v.push_back({n, s});
    }
  };
  const uint64_t chunks = ((b.size() >> b.page_shift()) + (uint64_t{1} << kChunkShift) - 1) >> kChunkShift;
  ForEachChunk(
      b, kChunkShift, 0, chunks, [&](uint64_t a, uint64_t z, PageState s) { add(z - a, static_cast<uint8_t>(s)); },
      [&](uint64_t, const std::vector<ChunkRun>&) { add(1, kDetailed); });
  return v;
}

}  // namespace

bool CheckpointStore::IsValidVmId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

CheckpointStore::CheckpointStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}
CheckpointStore::~CheckpointStore() = default;

Result<std::unique_ptr<CheckpointStore>> CheckpointStore::Open(const std::string& dir, bool read_only,
                                                               rocksdb::Env* env) {
  rocksdb::Options o;
  if (env != nullptr) o.env = env;
  o.create_if_missing = !read_only;
  // Many VMs share one database per host: keep file handles bounded.
  o.max_open_files = 256;
  // Values are zstd frames already; a second compression only costs CPU.
  o.compression = rocksdb::kNoCompression;
  o.paranoid_checks = true;
  // Small logs: an operator's directory should hold the state, not chatter.
  o.info_log_level = rocksdb::WARN_LEVEL;
  o.keep_log_file_num = 2;
  o.max_log_file_size = 1 << 20;
  o.write_buffer_size = 16 << 20;
  o.max_total_wal_size = 64 << 20;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = read_only ? rocksdb::DB::OpenForReadOnly(o, dir, &raw) : rocksdb::DB::Open(o, dir, &raw);
  if (!s.ok()) return FromRocks(s, "cannot open store '" + dir + "'");
  return std::unique_ptr<CheckpointStore>(new CheckpointStore(std::unique_ptr<rocksdb::DB>(raw)));
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
  if (!s.ok()) return FromRocks(s, "cannot read the manifest of VM '" + vm + "'");
  return true;
}

Status CheckpointStore::Write(rocksdb::WriteBatch* batch) {
  rocksdb::WriteOptions w;
  w.sync = true;  // durable before we say "committed"
  rocksdb::Status s = db_->Write(w, batch);
  if (!s.ok()) {
    // A failed WAL write stops RocksDB's writes; once the fault is gone
    // the next checkpoint should work, so try to resume now.
    (void)db_->Resume();
    return FromRocks(s, "cannot commit the checkpoint");
  }
  return Status::OK();
}

Result<uint64_t> CheckpointStore::PutChunks(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm,
                                            size_t bi, uint64_t c0, uint64_t c1) const {
  const BlockTracker& b = vm.block(bi);
  const uint64_t pages = b.size() >> b.page_shift();
  uint64_t bytes = 0;
  Status err;
  ForEachChunk(
      b, kChunkShift, c0, c1,
      [&](uint64_t a, uint64_t z, PageState) {
        // Uniform chunks need no record: delete what may be there.
        if (z - a > 16) {
          std::string from = ChunkKey(id, static_cast<uint32_t>(bi), a), to = ChunkKey(id, static_cast<uint32_t>(bi), z);
          batch->DeleteRange(from, to);
          bytes += from.size() + to.size();
        } else {
          for (uint64_t c = a; c < z; ++c) {
            std::string k = ChunkKey(id, static_cast<uint32_t>(bi), c);
            batch->Delete(k);
            bytes += k.size();
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
            fb, kFormatVersion, fb.CreateString(id), fb.CreateString(b.name()), static_cast<uint32_t>(bi), c,
            static_cast<uint32_t>(std::min(pages - (c << kChunkShift), uint64_t{1} << kChunkShift)),
            fbs::ChunkEncoding::RunLengthV1, static_cast<uint32_t>(runs.size()), raw,
            fb.CreateVector(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
        fbs::FinishChunkRecordBuffer(fb, rec);
        std::string k = ChunkKey(id, static_cast<uint32_t>(bi), c);
        batch->Put(k, rocksdb::Slice(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize()));
        bytes += k.size() + fb.GetSize();
      });
  if (!err.ok()) return err;
  return bytes;
}

Result<uint64_t> CheckpointStore::PutManifest(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm,
                                              uint64_t sequence) const {
  flatbuffers::FlatBufferBuilder fb;
  std::vector<flatbuffers::Offset<fbs::BlockManifest>> blocks;
  uint64_t total_runs = 0;
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    std::string raw;
    std::vector<Stretch> st = BlockStretches(b);
    for (const Stretch& s : st) {
      PutVarint(&raw, s.chunks);
      raw.push_back(static_cast<char>(s.state));
    }
    std::string z;
    Status zs = ZstdCompress(raw, &z);
    if (!zs.ok()) return zs;
    total_runs += b.CountRuns();
    blocks.push_back(fbs::CreateBlockManifest(
        fb, fb.CreateString(b.name()), b.size(), b.page_size(), static_cast<uint8_t>(b.initial_state()),
        fb.CreateVector(reinterpret_cast<const uint8_t*>(z.data()), z.size()), static_cast<uint32_t>(raw.size()),
        static_cast<uint32_t>(st.size())));
  }
  auto m = fbs::CreateManifest(fb, kFormatVersion, fb.CreateString(id), sequence, kChunkShift,
                               static_cast<uint64_t>(std::time(nullptr)), fb.CreateVector(blocks),
                               ComputeStateDigest(vm), total_runs);
  fbs::FinishManifestBuffer(fb, m);
  const std::string k = ManifestKey(id);
  batch->Put(k, rocksdb::Slice(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize()));
  return k.size() + fb.GetSize();
}

Result<uint64_t> CheckpointStore::CommitFull(const std::string& id, const VmState& vm, uint64_t sequence) {
  if (!IsValidVmId(id)) return Status::InvalidArgument("invalid VM id '" + id + "' (use A-Z a-z 0-9 . _ : -, at most 64)");
  rocksdb::WriteBatch batch;
  const std::string prefix = ChunkPrefix(id), end = "c" + id + std::string(1, '\1');
  batch.DeleteRange(prefix, end);
  uint64_t bytes = prefix.size() + end.size();
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    const uint64_t chunks = ((b.size() >> b.page_shift()) + (uint64_t{1} << kChunkShift) - 1) >> kChunkShift;
    auto r = PutChunks(&batch, id, vm, i, 0, chunks);
    if (!r.ok()) return r.status();
    bytes += r.value();
  }
  auto m = PutManifest(&batch, id, vm, sequence);
  if (!m.ok()) return m.status();
  bytes += m.value();
  Status s = Write(&batch);
  if (!s.ok()) return s;
  return bytes;
}

Status CheckpointStore::DeleteVm(const std::string& id) {
  rocksdb::WriteBatch batch;
  batch.DeleteRange(ChunkPrefix(id), "c" + id + std::string(1, '\1'));
  batch.Delete(ManifestKey(id));
  return Write(&batch);
}

Result<VmState> CheckpointStore::Load(const std::string& id, CheckpointInfo* info) const {
  const std::string where = "VM '" + id + "'";
  std::string value;
  rocksdb::Status rs = db_->Get(rocksdb::ReadOptions(), ManifestKey(id), &value);
  if (rs.IsNotFound()) return Status::NotFound("no checkpoint of VM '" + id + "' in this store");
  if (!rs.ok()) return FromRocks(rs, "cannot read the manifest of " + where);
  if (value.size() > kMaxManifestBytes) return Status::Corruption(where + ": manifest of " + std::to_string(value.size()) + " bytes is too large");
  auto* bytes = reinterpret_cast<const uint8_t*>(value.data());
  flatbuffers::Verifier mv(bytes, value.size(), 64, 4u << 20);
  if (!fbs::ManifestBufferHasIdentifier(bytes) || !fbs::VerifyManifestBuffer(mv)) {
    return Status::Corruption(where + ": the manifest fails verification");
  }
  const fbs::Manifest* m = fbs::GetManifest(bytes);
  if (m->format_version() != kFormatVersion) {
    return Status::Corruption(where + ": unknown manifest format version " + std::to_string(m->format_version()));
  }
  if (m->vm() == nullptr || m->vm()->str() != id) return Status::Corruption(where + ": the manifest names another VM");
  if (m->chunk_shift() != kChunkShift) return Status::Corruption(where + ": unsupported chunk size");
  if (m->blocks() == nullptr) return Status::Corruption(where + ": the manifest has no block list");
  VmState vm;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  const std::string prefix = ChunkPrefix(id);
  it->Seek(prefix);
  uint64_t records = 0;
  std::vector<ChunkRun> runs;
  std::string record;
  for (uint32_t bi = 0; bi < m->blocks()->size(); ++bi) {
    const fbs::BlockManifest* bm = m->blocks()->Get(bi);
    if (bm->name() == nullptr) return Status::Corruption(where + ": block " + std::to_string(bi) + " has no name");
    const std::string bname = bm->name()->str();
    const std::string bwhere = where + ", block '" + bname + "'";
    if (!IsValidPageStateValue(bm->initial())) return Status::Corruption(bwhere + ": invalid initial state");
    auto created = BlockTracker::Create(bname, bm->size(), bm->page_size(), static_cast<PageState>(bm->initial()));
    if (!created.ok()) return Status::Corruption(bwhere + ": " + created.status().message());
    BlockTracker& b = *created.value();
    const uint64_t pages = b.size() >> b.page_shift();
    const uint64_t chunks = (pages + (uint64_t{1} << kChunkShift) - 1) >> kChunkShift;
    // The stretches: capped before zstd runs, then decoded and checked.
    if (bm->stretches() == nullptr || bm->stretch_count() == 0 || bm->stretch_count() > chunks) {
      return Status::Corruption(bwhere + ": bad chunk stretches");
    }
    std::string raw;
    Status zs = ZstdDecompressExact(
        std::string_view(reinterpret_cast<const char*>(bm->stretches()->data()), bm->stretches()->size()),
        bm->stretches_raw_size(), size_t{bm->stretch_count()} * 11, &raw);
    if (!zs.ok()) return Status::Corruption(bwhere + ": chunk stretches: " + zs.message());
    std::string_view in(raw);
    uint64_t chunk = 0;
    for (uint32_t k = 0; k < bm->stretch_count(); ++k) {
      uint64_t count;
      if (!GetVarint(&in, &count) || count == 0 || count > chunks - chunk || in.empty()) {
        return Status::Corruption(bwhere + ": bad chunk stretch " + std::to_string(k));
      }
      const uint8_t st = static_cast<uint8_t>(in.front());
      in.remove_prefix(1);
      if (st > kDetailed) return Status::Corruption(bwhere + ": bad chunk stretch state");
      if (st != kDetailed) {
        const uint64_t off = (chunk << kChunkShift) << b.page_shift();
        const uint64_t end = std::min(pages, (chunk + count) << kChunkShift) << b.page_shift();
        Status s = b.Convert(off, end - off, static_cast<PageState>(st));
        if (!s.ok()) return Status::Corruption(bwhere + ": " + s.message());
        chunk += count;
        continue;
      }
      for (uint64_t c = chunk; c < chunk + count; ++c) {
        const std::string cwhere = bwhere + ", chunk " + std::to_string(c);
        const std::string want = ChunkKey(id, bi, c);
        if (!it->Valid() || !it->key().starts_with(prefix)) {
          if (!it->status().ok()) return FromRocks(it->status(), cwhere);
          return Status::Corruption(cwhere + ": record missing");
        }
        if (it->key().ToString() != want) return Status::Corruption(cwhere + ": record missing or out of place");
        if (it->value().size() > kMaxRecordBytes) return Status::Corruption(cwhere + ": record too large");
        // FlatBuffers needs aligned data; an iterator's slice may not be.
        record = it->value().ToString();
        const std::string& v = record;
        auto* rb = reinterpret_cast<const uint8_t*>(v.data());
        flatbuffers::Verifier rv(rb, v.size(), 16, 64);
        if (!fbs::ChunkRecordBufferHasIdentifier(rb) || !fbs::VerifyChunkRecordBuffer(rv)) {
          return Status::Corruption(cwhere + ": record fails verification");
        }
        const fbs::ChunkRecord* r = fbs::GetChunkRecord(rb);
        const uint64_t chunk_pages = std::min(pages - (c << kChunkShift), uint64_t{1} << kChunkShift);
        if (r->format_version() != kFormatVersion || r->vm() == nullptr || r->vm()->str() != id ||
            r->block() == nullptr || r->block()->str() != bname || r->block_index() != bi || r->chunk() != c ||
            r->chunk_pages() != chunk_pages || r->encoding() != fbs::ChunkEncoding::RunLengthV1 ||
            r->payload() == nullptr) {
          return Status::Corruption(cwhere + ": record does not match its place");
        }
        Status s = DecodeChunk(std::string_view(reinterpret_cast<const char*>(r->payload()->data()), r->payload()->size()),
                               r->raw_size(), chunk_pages, r->runs(), &runs);
        if (!s.ok()) return Status::Corruption(cwhere + ": " + s.message());
        uint64_t p = c << kChunkShift;
        for (const ChunkRun& cr : runs) {
          if (cr.state != b.initial_state()) {
            s = b.Convert(p << b.page_shift(), cr.pages << b.page_shift(), cr.state);
            if (!s.ok()) return Status::Corruption(cwhere + ": " + s.message());
          }
          p += cr.pages;
        }
        ++records;
        it->Next();
      }
      chunk += count;
    }
    if (chunk != chunks || !in.empty()) return Status::Corruption(bwhere + ": chunk stretches do not cover the block");
    Status s = vm.AddBlock(std::move(created).value());
    if (!s.ok()) return Status::Corruption(where + ": " + s.message());
  }
  if (!it->status().ok()) return FromRocks(it->status(), where);
  if (it->Valid() && it->key().starts_with(prefix)) return Status::Corruption(where + ": unexpected chunk record");
  if (ComputeStateDigest(vm) != m->digest()) return Status::Corruption(where + ": state digest mismatch");
  if (info != nullptr) {
    info->vm = id;
    info->sequence = m->sequence();
    info->unix_time = m->unix_time();
    info->digest = m->digest();
    info->total_runs = m->total_runs();
    info->records = records;
  }
  return vm;
}

VmCheckpointer::VmCheckpointer(CheckpointStore* store, std::string vm_id) : store_(store), id_(std::move(vm_id)) {}

Result<VmCheckpointer::Commit> VmCheckpointer::CommitState(VmState& vm) {
  if (!CheckpointStore::IsValidVmId(id_)) {
    return Status::InvalidArgument("invalid VM id '" + id_ + "' (use A-Z a-z 0-9 . _ : -, at most 64)");
  }
  rocksdb::WriteBatch batch;
  Commit c;
  c.sequence = sequence_ + 1;
  if (first_) {
    // The first checkpoint replaces whatever this id held, in the same batch.
    const std::string prefix = ChunkPrefix(id_), end = "c" + id_ + std::string(1, '\1');
    batch.DeleteRange(prefix, end);
    c.bytes += prefix.size() + end.size();
  }
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    const uint64_t chunks = ((b.size() >> b.page_shift()) + (uint64_t{1} << kChunkShift) - 1) >> kChunkShift;
    std::vector<std::pair<uint64_t, uint64_t>> todo;  // chunk ranges to rewrite
    if (first_ || i >= stored_blocks_) {
      todo.push_back({0, chunks});
    } else {
      const unsigned shift = kChunkShift;
      for (const PageRange& r : b.journal().ChangedSince(since_epoch_)) {
        const uint64_t a = r.begin >> shift, z = ((r.end - 1) >> shift) + 1;
        if (!todo.empty() && todo.back().second >= a) {
          todo.back().second = std::max(todo.back().second, z);
        } else {
          todo.push_back({a, z});
        }
      }
    }
    for (const auto& [a, z] : todo) {
      const size_t before = batch.Count();
      auto r = store_->PutChunks(&batch, id_, vm, i, a, z);
      if (!r.ok()) return r.status();
      c.bytes += r.value();
      c.records += batch.Count() - before;
    }
  }
  auto m = store_->PutManifest(&batch, id_, vm, c.sequence);
  if (!m.ok()) return m.status();
  c.bytes += m.value();
  Status s = store_->Write(&batch);
  if (!s.ok()) return s;  // nothing changed here: the next commit retries all
  first_ = false;
  stored_blocks_ = vm.num_blocks();
  since_epoch_ = vm.OpenEpoch();
  sequence_ = c.sequence;
  return c;
}

}  // namespace cvmstate
