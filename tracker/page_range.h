// PageRange: a range of pages of one block, the unit the change journal
// records and the run map hands over in batches.
#ifndef CVMSTATE_PAGE_RANGE_H_
#define CVMSTATE_PAGE_RANGE_H_

#include <cstdint>

namespace cvmstate {

struct PageRange {
  uint64_t begin;  // first page
  uint64_t end;    // one past the last
};

}  // namespace cvmstate

#endif  // CVMSTATE_PAGE_RANGE_H_
