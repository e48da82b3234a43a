// libFuzzer target: the migration frame decoder and stream receiver, with
// and without a key.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "migration/byte_stream.h"
#include "migration/crc32c.h"
#include "migration/destination.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "migration/tcp.h"

namespace {

class Source : public cvmstate::ByteSource {
 public:
  Source(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  cvmstate::Status Read(void* buf, size_t n) override {
    if (n > n_) return cvmstate::Status::IOError("the stream ended");
    std::memcpy(buf, d_, n);
    d_ += n;
    n_ -= n;
    return cvmstate::Status::OK();
  }

 private:
  const uint8_t* d_;
  size_t n_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  cvmstate::MigrationDestination::Options o;
  o.max_runs = 1 << 16;
  o.max_guest_bytes = uint64_t{1} << 40;
  if (data[0] & 1) o.key = std::string(32, 'k');
  Source in(data + 1, size - 1);
  cvmstate::MigrationDestination dest(o);
  std::string id;
  (void)dest.Receive(&in, &id);
  return 0;
}
