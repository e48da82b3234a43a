// Synthetic confidential-VM workloads for `cvmstate gen` and the demo.
#ifndef CVMSTATE_TOOLS_WORKLOAD_H_
#define CVMSTATE_TOOLS_WORKLOAD_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tracker/status.h"

namespace cvmstate::tools {

// The profile names `gen --profile` accepts, with a one-line description each.
struct ProfileInfo {
  const char* name;
  const char* what;
};
const std::vector<ProfileInfo>& WorkloadProfiles();

// Appends a trace of `ops` operations of `profile` for a guest of `size`
// bytes to *out. The same arguments always give the same trace. If `flush`
// is set it is called whenever *out holds over 1 MiB (it should write and
// clear it), so a long trace needs no more memory than that.
// InvalidArgument for an unknown profile or a size too small for it.
Status GenerateWorkload(const std::string& profile, uint64_t size, uint64_t seed, uint64_t ops,
                        std::string* out, const std::function<void(std::string*)>& flush = nullptr);

}  // namespace cvmstate::tools

#endif  // CVMSTATE_TOOLS_WORKLOAD_H_
