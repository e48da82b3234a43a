#include "cvmstate/listing.h"

namespace cvmstate {

void AppendHex(std::string* out, uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  char buf[18];
  int n = 0;
  do {
    buf[n++] = kDigits[v & 15];
    v >>= 4;
  } while (v != 0);
  out->append("0x");
  while (n > 0) out->push_back(buf[--n]);
}

std::string Hex(uint64_t v) {
  std::string s;
  AppendHex(&s, v);
  return s;
}

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
