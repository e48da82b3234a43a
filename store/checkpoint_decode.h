// The decoding half of CheckpointStore::Load, apart from RocksDB so that it
// can be fuzzed on records held in memory (internal to store/ and its tests).
//
// Every byte of a manifest or record is hostile: memory stays bounded by
// what a store can legitimately hold (the manifest and record size caps,
// one chunk's runs, a 64 KiB piece of a block's stretches) plus the state
// being rebuilt, never by a size or count read from a record. The
// stretches are decompressed in pieces and applied to the block as they
// come, so a bogus stream fails after work bounded by what it decoded.
#ifndef CVMSTATE_STORE_CHECKPOINT_DECODE_H_
#define CVMSTATE_STORE_CHECKPOINT_DECODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "codec/chunk_summary.h"
#include "store/checkpoint_store.h"
#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace cvmstate {

namespace store_format {
// Chunk records are format 1. Manifests are format 2 (the state digest of
// codec/state_digest.h); format 1 manifests, whose digest was the run-list
// digest (ComputeRunListDigest), are still read.
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint32_t kManifestVersion = 2;
inline constexpr size_t kMaxManifestBytes = size_t{64} << 20;
inline constexpr size_t kMaxRecordBytes = size_t{4} << 20;
inline constexpr uint8_t kDetailed = ChunkSummary::kDetailed;  // a stretch of chunks that have records
}  // namespace store_format

// The chunk records of one VM in key order (store_keys::ChunkKey), as a
// cursor: Valid() is false past the VM's last record or when reading
// failed, and then status() says why (OK at a plain end).
class ChunkRecordSource {
 public:
  virtual ~ChunkRecordSource() = default;
  virtual bool Valid() const = 0;
  virtual std::string_view key() const = 0;    // requires Valid()
  virtual std::string_view value() const = 0;  // requires Valid()
  virtual void Next() = 0;                     // requires Valid()
  virtual Status status() const = 0;
};

// Verifies the manifest of VM `id` (size, FlatBuffers verifier, meaning),
// rebuilds its state from it and from `records` (every one of which must be
// in its place and used), and checks the state's digest. Corruption naming
// the VM, block and chunk if any byte is wrong; a failed read of `records`
// keeps its code. *info (optional) gets the manifest's figures.
Result<VmState> DecodeCheckpoint(const std::string& id, std::string_view manifest, ChunkRecordSource* records,
                                 CheckpointInfo* info = nullptr);

}  // namespace cvmstate

#endif  // CVMSTATE_STORE_CHECKPOINT_DECODE_H_
