// libFuzzer target: the checkpoint decoder (DecodeCheckpoint) on records
// held in memory, around RocksDB, so that every run is cheap and the
// manifest's claims (sizes, counts, stretches) are reached directly.
//
// The first byte picks the mode:
//   even: the rest is a checkpoint as stored: u32 length + manifest bytes,
//         then (u32 key length, key, u32 value length, value) records;
//         the seeds are real checkpoints.
//   odd:  the rest chooses the fields of a manifest that passes the
//         FlatBuffers verifier (block sizes, page sizes, stretch counts,
//         declared sizes, the stretches themselves) and chunk records for
//         its detailed chunks, each field sometimes wrong.
// Any outcome is fine but a crash, a hang or unbounded memory.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "codec/chunk_codec.h"
#include "cvmstate/schema/checkpoint_generated.h"
#include "cvmstate/schema/manifest_generated.h"
#include "store/checkpoint_decode.h"
#include "store/store_keys.h"

namespace {

namespace fbs = cvmstate::schema;
using cvmstate::ChunkRun;
using cvmstate::PageState;

const std::string kVm = "vm";

class Bytes {
 public:
  Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool empty() const { return n_ == 0; }
  uint8_t U8() { return n_ ? (--n_, *d_++) : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{U8()} << (8 * i);
    return v;
  }
  uint64_t U64() { return uint64_t{U32()} | uint64_t{U32()} << 32; }
  std::string Take(size_t k) {
    k = std::min(k, n_);
    std::string s(reinterpret_cast<const char*>(d_), k);
    d_ += k, n_ -= k;
    return s;
  }

 private:
  const uint8_t* d_;
  size_t n_;
};

class MemorySource final : public cvmstate::ChunkRecordSource {
 public:
  explicit MemorySource(const std::map<std::string, std::string>& kv) {
    const std::string prefix = cvmstate::store_keys::ChunkPrefix(kVm);
    for (auto it = kv.lower_bound(prefix); it != kv.end() && it->first.starts_with(prefix); ++it) {
      records_.push_back(&*it);
    }
  }
  bool Valid() const override { return at_ < records_.size(); }
  std::string_view key() const override { return records_[at_]->first; }
  std::string_view value() const override { return records_[at_]->second; }
  void Next() override { ++at_; }
  cvmstate::Status status() const override { return cvmstate::Status::OK(); }

 private:
  std::vector<const std::pair<const std::string, std::string>*> records_;
  size_t at_ = 0;
};

void Decode(const std::string& manifest, const std::map<std::string, std::string>& kv) {
  MemorySource src(kv);
  cvmstate::CheckpointInfo info;
  auto vm = cvmstate::DecodeCheckpoint(kVm, manifest, &src, &info);
  // For a person reading what an input does: CVMSTATE_FUZZ_VERBOSE=1.
  static const bool verbose = std::getenv("CVMSTATE_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s\n", vm.ok() ? "loaded" : vm.status().message().c_str());
}

void StoredMode(Bytes in) {
  const std::string manifest = in.Take(in.U32());
  std::map<std::string, std::string> kv;
  while (!in.empty()) {
    std::string k = in.Take(in.U32());
    kv[k] = in.Take(in.U32());
  }
  Decode(manifest, kv);
}

// A chunk record for (block bi, chunk c) of `pages` pages, runs chosen by
// the input; sometimes with a wrong field.
std::string FuzzRecord(Bytes* in, const std::string& bname, uint32_t bi, uint64_t c, uint64_t pages) {
  std::vector<ChunkRun> runs;
  uint64_t left = pages;
  const unsigned nruns = 2 + in->U8() % 30;
  for (unsigned i = 0; i < nruns && left > 0; ++i) {
    uint64_t len = i + 1 == nruns ? left : std::min<uint64_t>(left, 1 + in->U32() % std::max<uint64_t>(pages / 4, 1));
    PageState s = static_cast<PageState>(in->U8() % 3);
    if (!runs.empty() && runs.back().state == s) s = static_cast<PageState>((static_cast<unsigned>(s) + 1) % 3);
    runs.push_back({len, s});
    left -= len;
  }
  if (left > 0) runs.push_back({left, static_cast<PageState>((static_cast<unsigned>(runs.back().state) + 1) % 3)});
  std::string payload;
  uint32_t raw = 0;
  if (!cvmstate::EncodeChunk(runs, &payload, &raw).ok()) return {};
  const uint8_t flaw = in->U8();
  uint32_t nr = static_cast<uint32_t>(runs.size());
  if (flaw == 1) nr = in->U32();
  if (flaw == 2) raw = in->U32();
  if (flaw == 3 && !payload.empty()) payload[in->U8() % payload.size()] ^= static_cast<char>(in->U8() | 1);
  if (flaw == 4) payload = in->Take(in->U8());
  flatbuffers::FlatBufferBuilder fb;
  auto rec =
      fbs::CreateChunkRecord(fb, flaw == 5 ? 2 : 1, fb.CreateString(kVm), fb.CreateString(bname), bi, c,
                             flaw == 6 ? in->U32() : static_cast<uint32_t>(pages), fbs::ChunkEncoding::RunLengthV1, nr,
                             raw, fb.CreateVector(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  fbs::FinishChunkRecordBuffer(fb, rec);
  return std::string(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize());
}

void StructuredMode(Bytes in) {
  constexpr unsigned kShift = cvmstate::CheckpointStore::kChunkShift;
  flatbuffers::FlatBufferBuilder fb;
  std::vector<flatbuffers::Offset<fbs::BlockManifest>> blocks;
  std::map<std::string, std::string> kv;
  const unsigned nblocks = 1 + in.U8() % 3;
  size_t records = 0;
  for (uint32_t bi = 0; bi < nblocks; ++bi) {
    std::string name = "b";  // an append, not "b" + ...: GCC 12 -Wrestrict false positive (bug 105329)
    name += std::to_string(bi % (2 + in.U8() % 4));  // sometimes a duplicate
    const unsigned page_shift = 12 + in.U8() % 20;
    // Pages: small, or up to the whole 64-bit space.
    uint64_t pages = (in.U8() & 1) ? 1 + in.U32() % (uint64_t{4} << kShift) : in.U64() >> page_shift;
    const uint64_t size = (in.U8() == 7) ? in.U64() : pages << page_shift;
    const uint8_t initial = in.U8() % 5;
    const uint64_t chunks = (pages >> kShift) + ((pages & ((uint64_t{1} << kShift) - 1)) != 0);
    // The stretches, as varint counts and states chosen by the input.
    std::string raw;
    uint32_t count = 0;
    uint64_t covered = 0;
    const unsigned nst = in.U8();
    for (unsigned k = 0; k < nst && covered < chunks; ++k) {
      const uint8_t sel = in.U8();
      uint64_t n = (sel & 0x80) ? chunks - covered : 1 + in.U32() % std::max<uint64_t>(chunks - covered, 1);
      if (sel == 0xff) n = in.U64();
      const uint8_t st = (sel & 0x40) ? 3 : sel % 4;
      cvmstate::PutVarint(&raw, n);
      raw.push_back(static_cast<char>(st));
      ++count;
      if (st == 3 && records < 64) {
        for (uint64_t c = covered; c < covered + n && c < chunks && records < 64; ++c, ++records) {
          const uint64_t cp = std::min(pages - (c << kShift), uint64_t{1} << kShift);
          kv[cvmstate::store_keys::ChunkKey(kVm, bi, c)] = FuzzRecord(&in, name, bi, c, cp);
        }
      }
      covered += n;
    }
    const uint8_t flaw = in.U8();
    if (flaw == 1) raw += in.Take(in.U8());
    std::string z;
    if (!cvmstate::ZstdCompress(raw, &z).ok()) return;
    uint32_t raw_size = static_cast<uint32_t>(raw.size());
    if (flaw == 2) raw_size = in.U32();
    if (flaw == 3) count = in.U32();
    if (flaw == 4 && !z.empty()) z[in.U8() % z.size()] ^= static_cast<char>(in.U8() | 1);
    if (flaw == 5) z = in.Take(in.U8());
    blocks.push_back(fbs::CreateBlockManifest(fb, fb.CreateString(name), size, uint64_t{1} << page_shift, initial,
                                              fb.CreateVector(reinterpret_cast<const uint8_t*>(z.data()), z.size()),
                                              raw_size, count));
  }
  // A stray record now and then.
  if (in.U8() == 9) kv[cvmstate::store_keys::ChunkKey(kVm, in.U8() % 4, in.U8())] = in.Take(in.U8());
  auto m = fbs::CreateManifest(fb, 1, fb.CreateString(kVm), 1, kShift, 0, fb.CreateVector(blocks), in.U64(), 0);
  fbs::FinishManifestBuffer(fb, m);
  Decode(std::string(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize()), kv);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Bytes in(data + 1, size - 1);
  if (data[0] % 2 == 0) {
    StoredMode(in);
  } else {
    StructuredMode(in);
  }
  return 0;
}
