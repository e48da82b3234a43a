// Byte counts for people: "512 B", "1.5 MiB", "4.0 TiB".
#ifndef CVMSTATE_TOOLS_HUMAN_BYTES_H_
#define CVMSTATE_TOOLS_HUMAN_BYTES_H_

#include <string>

namespace cvmstate::tools {

// One decimal past the unit, none for plain bytes; with whole_plain, none
// either when the value is a whole number of its unit ("4 TiB").
std::string HumanBytes(double bytes, bool whole_plain = false);

}  // namespace cvmstate::tools

#endif  // CVMSTATE_TOOLS_HUMAN_BYTES_H_
