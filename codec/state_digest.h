// The state digest: a 64-bit fingerprint of a VM's page state (block names,
// sizes, page sizes and the state of every page), stored with checkpoints,
// sent with migrations and returned by cvmstate_vm_digest, so that a reader
// can prove it rebuilt exactly the same state. It detects corruption and
// bugs; it is not a MAC. docs/stream-format.md section 4 defines it.
//
// Each block contributes a sum, modulo the prime 2^61 - 1, of one term per
// chunk of 2^kDigestChunkShift pages: the hash of the chunk's runs (cut at
// the chunk's edges) times R^chunk. A sum does not care in which order its
// terms were added, so a summary that knows which chunks changed can keep
// it up to date at the cost of those chunks (codec/chunk_summary.h), and a
// stretch of chunks of one state has a closed form (a geometric series), so
// a block of any size costs O(runs + stretches) to digest whole.
#ifndef CVMSTATE_CODEC_STATE_DIGEST_H_
#define CVMSTATE_CODEC_STATE_DIGEST_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "codec/chunk_codec.h"
#include "tracker/vm_state.h"

namespace cvmstate {

// The sequential mixer the digest is made of.
class StateDigest {
 public:
  void Add(uint64_t x);
  void Add(std::string_view s);
  uint64_t Finish() const;

 private:
  uint64_t a_ = 0x243f6a8885a308d3ULL, b_ = 0x13198a2e03707344ULL, n_ = 0;
};

// Chunks of 2^17 pages, as the store's records (CheckpointStore::kChunkShift).
inline constexpr unsigned kDigestChunkShift = 17;

namespace digest_math {
inline constexpr uint64_t kPrime = (uint64_t{1} << 61) - 1;
uint64_t MulMod(uint64_t a, uint64_t b);
inline uint64_t AddMod(uint64_t a, uint64_t b) {
  const uint64_t s = a + b;  // both < 2^61: no overflow
  return s >= kPrime ? s - kPrime : s;
}
inline uint64_t SubMod(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kPrime - b; }
}  // namespace digest_math

// The hash of one chunk's runs, cut at its edges (pages, state), in
// [0, 2^61 - 1).
uint64_t ChunkRunsHash(const std::vector<ChunkRun>& runs);
// The term of chunk c whose runs hash to h.
uint64_t ChunkTerm(uint64_t c, uint64_t h);
// The sum of the terms of chunks [a, z) of a block of `pages` pages, all of
// state s (the last chunk of the block may be short). O(log z).
uint64_t UniformTerms(uint64_t pages, uint64_t a, uint64_t z, PageState s);

// The block's sum of chunk terms, O(runs + stretches).
uint64_t BlockDigestSum(const BlockTracker& b);
// The digest of vm given each block's sum (sums[i] for block i).
uint64_t CombineStateDigest(const VmState& vm, const std::vector<uint64_t>& sums);
// The digest of every block of vm, O(runs + stretches).
uint64_t ComputeStateDigest(const VmState& vm);

// The digest of store format 1 and stream format 1 (every maximal run
// through one StateDigest, O(runs)), kept to read stores written by them.
uint64_t ComputeRunListDigest(const VmState& vm);

}  // namespace cvmstate

#endif  // CVMSTATE_CODEC_STATE_DIGEST_H_
