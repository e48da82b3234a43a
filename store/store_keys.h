// The keys of the store's RocksDB database (docs/store-layout.md):
//   "m" ID                          the manifest of VM ID
//   "c" ID "\0" u32 block u64 chunk  a chunk record (big endian, so that
//                                    a VM's records sort by block, chunk)
// Internal to store/.
#ifndef CVMSTATE_STORE_STORE_KEYS_H_
#define CVMSTATE_STORE_STORE_KEYS_H_

#include <cstdint>
#include <string>
#include <utility>

namespace cvmstate::store_keys {

inline std::string ManifestKey(const std::string& id) { return "m" + id; }
inline std::string ChunkPrefix(const std::string& id) { return "c" + id + std::string(1, '\0'); }
// [first, last) of every chunk record key of id: "c" ID "\0" ... up to
// "c" ID "\1" (ids never hold control bytes).
inline std::pair<std::string, std::string> ChunkKeyRange(const std::string& id) {
  return {ChunkPrefix(id), "c" + id + std::string(1, '\1')};
}
inline std::string ChunkKey(const std::string& id, uint32_t block, uint64_t chunk) {
  std::string k = ChunkPrefix(id);
  for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>(block >> (8 * i)));
  for (int i = 7; i >= 0; --i) k.push_back(static_cast<char>(chunk >> (8 * i)));
  return k;
}

}  // namespace cvmstate::store_keys

#endif  // CVMSTATE_STORE_STORE_KEYS_H_
