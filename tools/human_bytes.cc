#include "tools/human_bytes.h"

#include <cmath>
#include <cstdio>

namespace cvmstate::tools {

std::string HumanBytes(double b, bool whole_plain) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  const bool plain = u == 0 || (whole_plain && b == std::floor(b));
  char buf[32];
  std::snprintf(buf, sizeof buf, plain ? "%.0f %s" : "%.1f %s", b, kUnits[u]);
  return buf;
}

}  // namespace cvmstate::tools
