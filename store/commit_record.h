// CommitRecord: the write sequence of the store's last commit, kept in a
// small file beside RocksDB's write-ahead log.
//
// RocksDB recovers from a damaged write-ahead log by dropping the damaged
// record and everything after it when the damage looks like a torn tail, so
// one flipped bit could silently roll a VM back to an older checkpoint. The
// store records RocksDB's sequence number after every commit here; on Open,
// a database that recovers to an older sequence than the record has lost
// commits and is refused. The WAL's own checksums catch damage elsewhere
// (the store opens RocksDB with kTolerateCorruptedTailRecords, so only a
// torn final write, which was never acknowledged, is tolerated).
//
// The file holds two slots of 32 bytes, each magic | sequence | generation |
// checksum; commits write them alternately and sync, so a torn write of one
// slot leaves the other, older but valid. Internal to store/.
#ifndef CVMSTATE_STORE_COMMIT_RECORD_H_
#define CVMSTATE_STORE_COMMIT_RECORD_H_

#include <cstdint>
#include <mutex>
#include <string>

#include "tracker/status.h"

namespace cvmstate {

class CommitRecord {
 public:
  static constexpr const char* kFileName = "CVMSTATE-COMMITTED";

  explicit CommitRecord(std::string dir);
  ~CommitRecord();
  CommitRecord(const CommitRecord&) = delete;
  CommitRecord& operator=(const CommitRecord&) = delete;

  // Reads the file: the recorded sequence (0 when there is no file yet).
  // Corruption if the file exists and neither slot is valid.
  Result<uint64_t> Read();
  // Records `sequence` (if above the last one recorded) and syncs it. A
  // commit is already durable in RocksDB when this runs, so a failure here
  // only weakens the next Open's check; it is reported to the caller.
  [[nodiscard]] Status Record(uint64_t sequence);

 private:
  std::mutex mu_;
  const std::string path_;
  int fd_ = -1;
  uint64_t sequence_ = 0, generation_ = 0;
};

}  // namespace cvmstate

#endif  // CVMSTATE_STORE_COMMIT_RECORD_H_
