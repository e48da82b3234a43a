// RoundStats: the figures of one migration round, as sent or received.
#ifndef CVMSTATE_MIGRATION_ROUND_STATS_H_
#define CVMSTATE_MIGRATION_ROUND_STATS_H_

#include <cstdint>

namespace cvmstate {

struct RoundStats {
  uint32_t round = 0;
  uint64_t frames = 0;
  uint64_t sections = 0;
  uint64_t runs = 0;
  uint64_t bytes = 0;  // on the wire, frame headers included
};

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_ROUND_STATS_H_
