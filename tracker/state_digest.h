// StateDigest: a 64-bit fingerprint of a VM's page state (block names,
// sizes, page sizes and every run), stored with checkpoints and sent with
// migrations so that the reader can prove it rebuilt exactly the same
// state. It detects corruption and bugs; it is not a MAC.
#ifndef CVMSTATE_STATE_DIGEST_H_
#define CVMSTATE_STATE_DIGEST_H_

#include <cstdint>
#include <string_view>

#include "tracker/vm_state.h"

namespace cvmstate {

class StateDigest {
 public:
  void Add(uint64_t x);
  void Add(std::string_view s);
  uint64_t Finish() const;

 private:
  uint64_t a_ = 0x243f6a8885a308d3ULL, b_ = 0x13198a2e03707344ULL, n_ = 0;
};

// The digest of every block of vm, O(runs).
uint64_t ComputeStateDigest(const VmState& vm);

}  // namespace cvmstate

#endif  // CVMSTATE_STATE_DIGEST_H_
