#include "bench/impls.h"

#include <malloc.h>

#if defined(__SANITIZE_ADDRESS__)
// From AddressSanitizer's runtime (sanitizer/allocator_interface.h, which
// not every toolchain package ships).
extern "C" size_t __sanitizer_get_current_allocated_bytes();
#endif

namespace cvmstate::bench {

std::unique_ptr<TrackerImpl> MakeRunMapImpl();
std::unique_ptr<TrackerImpl> MakeBitmapImpl();
std::unique_ptr<TrackerImpl> MakeRoaringImpl();
std::unique_ptr<TrackerImpl> MakeIclImpl();

const std::vector<std::string>& ImplNames() {
  static const std::vector<std::string> kNames = {"cvmstate", "bitmap", "roaring", "icl"};
  return kNames;
}

std::unique_ptr<TrackerImpl> MakeImpl(std::string_view name) {
  if (name == "cvmstate") return MakeRunMapImpl();
  if (name == "bitmap") return MakeBitmapImpl();
  if (name == "roaring") return MakeRoaringImpl();
  if (name == "icl") return MakeIclImpl();
  return nullptr;
}

size_t HeapBytesInUse() {
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer replaces malloc; ask its allocator instead.
  return __sanitizer_get_current_allocated_bytes();
#else
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
#endif
}

}  // namespace cvmstate::bench
