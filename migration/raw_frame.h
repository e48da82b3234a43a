// RawFrame: one frame as read, before its body is interpreted.
#ifndef CVMSTATE_MIGRATION_RAW_FRAME_H_
#define CVMSTATE_MIGRATION_RAW_FRAME_H_

#include <string>

namespace cvmstate::migration_internal {

struct RawFrame {
  std::string body;
  std::string mac;  // empty when the frame is not authenticated
};

}  // namespace cvmstate::migration_internal

#endif  // CVMSTATE_MIGRATION_RAW_FRAME_H_
