// libFuzzer target: the trace parser and the rules applying a line.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "text/trace.h"
#include "tracker/vm_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cvmstate::VmState vm;
  (void)vm.AddBlock("pc.ram", uint64_t{1} << 36, 4096, cvmstate::PageState::kPrivate);
  (void)vm.AddBlock("huge", uint64_t{1} << 30, 2 << 20, cvmstate::PageState::kShared);
  std::string_view in(reinterpret_cast<const char*>(data), size);
  int lines = 0;
  while (!in.empty() && lines++ < 256) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in.remove_prefix(nl == std::string_view::npos ? in.size() : nl + 1);
    cvmstate::TraceDirective d;
    if (cvmstate::ParseTraceLine(line, &d).ok()) (void)cvmstate::ApplyTraceDirective(d, &vm);
  }
  return 0;
}
