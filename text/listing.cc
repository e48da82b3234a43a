#include "text/listing.h"

namespace cvmstate {

void AppendListingLine(std::string* out, std::string_view name, uint64_t offset, uint64_t length,
                       PageState state) {
  out->append(name);
  out->push_back(' ');
  AppendHex(out, offset);
  out->push_back(' ');
  AppendHex(out, length);
  out->push_back(' ');
  out->append(PageStateName(state));
  out->push_back('\n');
}

void AppendRunListing(const BlockTracker& block, std::string* out) {
  block.ForEachRun([&](const ByteRun& r) {
    AppendListingLine(out, block.name(), r.offset, r.length, r.state);
    return true;
  });
}

void AppendRunListing(const VmState& vm, std::string* out) {
  for (size_t i = 0; i < vm.num_blocks(); ++i) AppendRunListing(vm.block(i), out);
}

}  // namespace cvmstate
