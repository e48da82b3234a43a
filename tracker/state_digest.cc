#include "tracker/state_digest.h"

namespace cvmstate {
namespace {

inline uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

void StateDigest::Add(uint64_t x) {
  ++n_;
  a_ = Mix(a_ ^ x) + n_;
  b_ = Mix(b_ + x * 0x9e3779b97f4a7c15ULL) ^ a_;
}

void StateDigest::Add(std::string_view s) {
  Add(s.size());
  uint64_t w = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    w = (w << 8) | static_cast<unsigned char>(s[i]);
    if (i % 8 == 7) Add(w), w = 0;
  }
  Add(w);
}

uint64_t StateDigest::Finish() const { return Mix(a_ ^ Mix(b_ ^ n_)); }

uint64_t ComputeStateDigest(const VmState& vm) {
  StateDigest d;
  d.Add(vm.num_blocks());
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    d.Add(b.name());
    d.Add(b.size());
    d.Add(b.page_size());
    b.map().ForEachRun([&d](const Run& r) {
      d.Add(r.begin);
      d.Add(r.end);
      d.Add(static_cast<uint64_t>(r.state));
      return true;
    });
  }
  return d.Finish();
}

}  // namespace cvmstate
