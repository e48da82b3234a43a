// The canonical run listing of SPEC.md section 3:
//   NAME 0xOFFSET 0xLENGTH STATE
// one line a maximal run, blocks in declaration order, offsets ascending.
#ifndef CVMSTATE_LISTING_H_
#define CVMSTATE_LISTING_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "tracker/block_tracker.h"
#include "tracker/format.h"
#include "tracker/vm_state.h"

namespace cvmstate {

// Appends one listing line: "NAME 0xOFFSET 0xLENGTH STATE\n".
void AppendListingLine(std::string* out, std::string_view name, uint64_t offset, uint64_t length,
                       PageState state);

// Appends the listing lines of one block / of every block to *out.
void AppendRunListing(const BlockTracker& block, std::string* out);
void AppendRunListing(const VmState& vm, std::string* out);

}  // namespace cvmstate

#endif  // CVMSTATE_LISTING_H_
