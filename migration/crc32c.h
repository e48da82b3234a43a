// CRC-32C (Castagnoli), the checksum of every migration frame header.
#ifndef CVMSTATE_MIGRATION_CRC32C_H_
#define CVMSTATE_MIGRATION_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace cvmstate {

uint32_t Crc32c(const void* data, size_t size);

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_CRC32C_H_
