// CRC-32C (Castagnoli), slicing by 8.
#include "migration/crc32c.h"

#include <cstring>

namespace cvmstate {
namespace {

uint32_t kCrcTable[8][256];
bool InitCrc() {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
    kCrcTable[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (int t = 1; t < 8; ++t) kCrcTable[t][i] = (kCrcTable[t - 1][i] >> 8) ^ kCrcTable[0][kCrcTable[t - 1][i] & 0xff];
  }
  return true;
}
const bool kCrcReady = InitCrc();

}  // namespace

uint32_t Crc32c(const void* data, size_t size) {
  (void)kCrcReady;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xffffffffu;
  while (size >= 8) {  // slicing by 8
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = kCrcTable[7][lo & 0xff] ^ kCrcTable[6][(lo >> 8) & 0xff] ^ kCrcTable[5][(lo >> 16) & 0xff] ^
        kCrcTable[4][lo >> 24] ^ kCrcTable[3][hi & 0xff] ^ kCrcTable[2][(hi >> 8) & 0xff] ^
        kCrcTable[1][(hi >> 16) & 0xff] ^ kCrcTable[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size--) c = (c >> 8) ^ kCrcTable[0][(c ^ *p++) & 0xff];
  return c ^ 0xffffffffu;
}

}  // namespace cvmstate
