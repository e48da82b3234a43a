// The names cvmstate accepts: RAM block names (as QEMU's RAMBlock idstr)
// and VM ids (keys in the store, ids in migration streams).
#ifndef CVMSTATE_TRACKER_NAMES_H_
#define CVMSTATE_TRACKER_NAMES_H_

#include <string_view>

namespace cvmstate {

// [A-Za-z0-9._:/-]{1,64}
bool IsValidBlockName(std::string_view name);
// [A-Za-z0-9._:-]{1,64}: a block name without '/'.
bool IsValidVmId(std::string_view id);

// For messages: what a valid name looks like.
inline constexpr const char* kBlockNameRule = "1 to 64 characters from A-Z a-z 0-9 . _ : / -";
inline constexpr const char* kVmIdRule = "1 to 64 characters from A-Z a-z 0-9 . _ : -";

}  // namespace cvmstate

#endif  // CVMSTATE_TRACKER_NAMES_H_
