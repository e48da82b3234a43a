#include "store/checkpoint_decode.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "codec/chunk_codec.h"
#include "codec/chunk_walk.h"
#include "codec/state_digest.h"
#include "cvmstate/schema/checkpoint_generated.h"
#include "cvmstate/schema/manifest_generated.h"
#include "store/store_keys.h"
#include "tracker/format.h"

namespace cvmstate {
namespace {

namespace fbs = cvmstate::schema;
using namespace store_format;
constexpr unsigned kChunkShift = CheckpointStore::kChunkShift;
// A stretch is a varint chunk count (at most 10 bytes) and a state byte.
constexpr uint64_t kMaxStretchBytes = 11;

// What one Load needs across blocks: one zstd stream reader and the
// buffers of one chunk record, reused.
struct Decoder {
  const std::string& id;
  const std::string& where;
  ChunkRecordSource* records;
  ZstdStreamReader stretches;
  std::string record;
  std::vector<ChunkRun> runs;
  uint64_t records_read = 0;
};

Result<const fbs::Manifest*> VerifyManifest(const std::string& bytes, const std::string& id, const std::string& where) {
  auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  flatbuffers::Verifier mv(p, bytes.size(), 64, 4u << 20);
  if (!fbs::ManifestBufferHasIdentifier(p) || !fbs::VerifyManifestBuffer(mv)) {
    return Status::Corruption(where + ": the manifest fails verification");
  }
  const fbs::Manifest* m = fbs::GetManifest(p);
  if (m->format_version() != kManifestVersion && m->format_version() != 1) {
    return Status::Corruption(where + ": unknown manifest format version " + std::to_string(m->format_version()));
  }
  if (m->vm() == nullptr || m->vm()->str() != id) return Status::Corruption(where + ": the manifest names another VM");
  if (m->chunk_shift() != kChunkShift) return Status::Corruption(where + ": unsupported chunk size");
  if (m->blocks() == nullptr) return Status::Corruption(where + ": the manifest has no block list");
  return m;
}

// Reads the chunk record at the cursor, checks it belongs at (bi, c) and
// decodes its runs into d->runs. `where` names the chunk for messages.
Status ReadChunkRecord(Decoder* d, uint32_t bi, const std::string& bname, uint64_t c, uint64_t chunk_pages,
                       const std::string& where) {
  ChunkRecordSource* src = d->records;
  if (!src->Valid()) {
    if (!src->status().ok()) return src->status().WithPrefix(where + ": ");
    return Status::Corruption(where + ": record missing");
  }
  if (src->key() != store_keys::ChunkKey(d->id, bi, c)) {
    return Status::Corruption(where + ": record missing or out of place");
  }
  if (src->value().size() > kMaxRecordBytes) return Status::Corruption(where + ": record too large");
  // FlatBuffers needs aligned data; a source's bytes may not be.
  d->record.assign(src->value());
  auto* rb = reinterpret_cast<const uint8_t*>(d->record.data());
  flatbuffers::Verifier rv(rb, d->record.size(), 16, 64);
  if (!fbs::ChunkRecordBufferHasIdentifier(rb) || !fbs::VerifyChunkRecordBuffer(rv)) {
    return Status::Corruption(where + ": record fails verification");
  }
  const fbs::ChunkRecord* r = fbs::GetChunkRecord(rb);
  if (r->format_version() != kFormatVersion || r->vm() == nullptr || r->vm()->str() != d->id || r->block() == nullptr ||
      r->block()->str() != bname || r->block_index() != bi || r->chunk() != c || r->chunk_pages() != chunk_pages ||
      r->encoding() != fbs::ChunkEncoding::RunLengthV1 || r->payload() == nullptr) {
    return Status::Corruption(where + ": record does not match its place");
  }
  // DecodeChunk caps raw_size and the run count by chunk_pages (at most
  // 2^17 pages: 1.4 MB of raw runs) before it allocates anything.
  Status s = DecodeChunk(std::string_view(reinterpret_cast<const char*>(r->payload()->data()), r->payload()->size()),
                         r->raw_size(), chunk_pages, r->runs(), &d->runs);
  if (!s.ok()) return Status::Corruption(where + ": " + s.message());
  return Status::OK();
}

// Applies one stretch of `count` chunks from `chunk` on: a uniform state,
// or the records of each of its chunks.
Status ApplyStretch(Decoder* d, BlockTracker* b, uint32_t bi, const std::string& bwhere, uint64_t chunk, uint64_t count,
                    uint8_t state) {
  const uint64_t pages = BlockPages(*b);
  if (state != kDetailed) {
    // Stretches come in order over a block still in its initial state.
    if (state == static_cast<uint8_t>(b->initial_state())) return Status::OK();
    const uint64_t off = (chunk << kChunkShift) << b->page_shift();
    const uint64_t end = std::min(pages, (chunk + count) << kChunkShift) << b->page_shift();
    Status s = b->Convert(off, end - off, static_cast<PageState>(state));
    if (!s.ok()) return Status::Corruption(bwhere + ": " + s.message());
    return Status::OK();
  }
  for (uint64_t c = chunk; c < chunk + count; ++c) {
    const std::string cwhere = bwhere + ", chunk " + std::to_string(c);
    Status s = ReadChunkRecord(d, bi, b->name(), c, ChunkPagesAt(pages, kChunkShift, c), cwhere);
    if (!s.ok()) return s;
    uint64_t p = c << kChunkShift;
    for (const ChunkRun& cr : d->runs) {
      if (cr.state != b->initial_state()) {
        s = b->Convert(p << b->page_shift(), cr.pages << b->page_shift(), cr.state);
        if (!s.ok()) return Status::Corruption(cwhere + ": " + s.message());
      }
      p += cr.pages;
    }
    ++d->records_read;
    d->records->Next();
  }
  return Status::OK();
}

// Decodes a block's stretches in pieces, checking each as it comes (count,
// bounds, state, maximality) and applying it at once: no list of
// stretches and no whole raw buffer is ever held.
Status DecodeStretches(Decoder* d, const fbs::BlockManifest& bm, BlockTracker* b, uint32_t bi,
                       const std::string& bwhere) {
  const uint64_t chunks = ChunkCount(BlockPages(*b), kChunkShift);
  const uint32_t count = bm.stretch_count();
  if (bm.stretches() == nullptr || count == 0 || count > chunks) {
    return Status::Corruption(bwhere + ": bad chunk stretches");
  }
  if (bm.stretches_raw_size() > uint64_t{count} * kMaxStretchBytes || bm.stretches_raw_size() < uint64_t{count} * 2) {
    return Status::Corruption(bwhere + ": chunk stretches: declared size " + std::to_string(bm.stretches_raw_size()) +
                              " impossible for " + std::to_string(count) + " stretches");
  }
  Status s = d->stretches.Reset(
      std::string_view(reinterpret_cast<const char*>(bm.stretches()->data()), bm.stretches()->size()),
      bm.stretches_raw_size());
  if (!s.ok()) return Status::Corruption(bwhere + ": chunk stretches: " + s.message());
  uint64_t chunk = 0;   // chunks covered so far
  uint32_t k = 0;       // stretches applied so far
  int prev_state = -1;  // of the last stretch applied
  uint64_t varint = 0;  // the chunk count being read
  unsigned shift = 0;   // its next bit
  bool want_state = false;
  for (;;) {
    std::string_view piece;
    s = d->stretches.Next(&piece);
    if (!s.ok()) return Status::Corruption(bwhere + ": chunk stretches: " + s.message());
    if (piece.empty()) break;
    for (char ch : piece) {
      const uint8_t byte = static_cast<uint8_t>(ch);
      if (!want_state) {
        if (shift == 63 && byte > 1) return Status::Corruption(bwhere + ": bad chunk stretch " + std::to_string(k));
        varint |= uint64_t{byte & 0x7fu} << shift;
        if (byte & 0x80) {
          shift += 7;
        } else {
          want_state = true;
        }
        continue;
      }
      if (k >= count || varint == 0 || varint > chunks - chunk) {
        return Status::Corruption(bwhere + ": bad chunk stretch " + std::to_string(k));
      }
      if (byte > kDetailed) return Status::Corruption(bwhere + ": bad chunk stretch state");
      // The writer merges equal neighbours: two in a row are not its work.
      if (byte == prev_state) return Status::Corruption(bwhere + ": chunk stretches are not maximal");
      s = ApplyStretch(d, b, bi, bwhere, chunk, varint, byte);
      if (!s.ok()) return s;
      chunk += varint;
      ++k;
      prev_state = byte;
      varint = 0;
      shift = 0;
      want_state = false;
    }
  }
  if (shift != 0 || want_state || varint != 0) {
    return Status::Corruption(bwhere + ": bad chunk stretch " + std::to_string(k));
  }
  if (k != count || chunk != chunks) return Status::Corruption(bwhere + ": chunk stretches do not cover the block");
  return Status::OK();
}

// Rebuilds block bi from its manifest entry and the records at the cursor
// (which it advances past them).
Result<std::unique_ptr<BlockTracker>> LoadBlock(Decoder* d, const fbs::BlockManifest& bm, uint32_t bi) {
  if (bm.name() == nullptr) return Status::Corruption(d->where + ": block " + std::to_string(bi) + " has no name");
  const std::string bname = bm.name()->str();
  const std::string bwhere = d->where + ", block " + Quoted(bname);
  if (!IsValidPageStateValue(bm.initial())) return Status::Corruption(bwhere + ": invalid initial state");
  // Costs O(1) whatever the size: a run map starts as one run.
  auto created = BlockTracker::Create(bname, bm.size(), bm.page_size(), static_cast<PageState>(bm.initial()));
  if (!created.ok()) return Status::Corruption(bwhere + ": " + created.status().message());
  Status s = DecodeStretches(d, bm, created.value().get(), bi, bwhere);
  if (!s.ok()) return s;
  return std::move(created).value();
}

}  // namespace

Result<VmState> DecodeCheckpoint(const std::string& id, std::string_view manifest, ChunkRecordSource* records,
                                 CheckpointInfo* info) {
  const std::string where = "VM " + Quoted(id);
  if (manifest.size() > kMaxManifestBytes) {
    return Status::Corruption(where + ": manifest of " + std::to_string(manifest.size()) + " bytes is too large");
  }
  // FlatBuffers needs aligned data: a string's heap buffer is.
  const std::string bytes(manifest);
  auto verified = VerifyManifest(bytes, id, where);
  if (!verified.ok()) return verified.status();
  const fbs::Manifest* m = verified.value();
  Decoder d{id, where, records, {}, {}, {}, 0};
  VmState vm;
  // Each block entry takes bytes of the (capped) manifest, and VmState
  // refuses duplicate names: the block count is bounded by the manifest.
  for (uint32_t bi = 0; bi < m->blocks()->size(); ++bi) {
    auto block = LoadBlock(&d, *m->blocks()->Get(bi), bi);
    if (!block.ok()) return block.status();
    Status s = vm.AddBlock(std::move(block).value());
    if (!s.ok()) return Status::Corruption(where + ": " + s.message());
  }
  if (!records->status().ok()) return records->status().WithPrefix(where + ": ");
  if (records->Valid()) return Status::Corruption(where + ": unexpected chunk record");
  const uint64_t digest = m->format_version() == 1 ? ComputeRunListDigest(vm) : ComputeStateDigest(vm);
  if (digest != m->digest()) return Status::Corruption(where + ": state digest mismatch");
  if (info != nullptr) {
    info->vm = id;
    info->sequence = m->sequence();
    info->unix_time = m->unix_time();
    // Today's digest of the state, whichever the manifest's format.
    info->digest = m->format_version() == 1 ? ComputeStateDigest(vm) : digest;
    info->total_runs = m->total_runs();
    info->records = d.records_read;
  }
  return vm;
}

}  // namespace cvmstate
