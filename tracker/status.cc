#include "tracker/status.h"

#include <cstdio>
#include <cstdlib>

namespace cvmstate::status_internal {

void DieOnBadValue(const Status& s) {
  std::fprintf(stderr, "cvmstate: internal error: value() of a failed Result: %s\n", s.message().c_str());
  std::abort();
}

}  // namespace cvmstate::status_internal
