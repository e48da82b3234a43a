#include "store/commit_record.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tracker/format.h"

namespace cvmstate {
namespace {

constexpr size_t kSlotBytes = 32;
constexpr char kMagic[8] = {'C', 'V', 'M', 'S', 'C', 'O', 'M', 'T'};

uint64_t Checksum(const unsigned char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a: bit rot, not an adversary
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

void Put64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint64_t Get64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct Slot {
  bool valid = false;
  uint64_t sequence = 0, generation = 0;
};

Slot ParseSlot(const unsigned char* p) {
  Slot s;
  if (std::memcmp(p, kMagic, 8) != 0 || Get64(p + 24) != Checksum(p, 24)) return s;
  s.valid = true;
  s.sequence = Get64(p + 8);
  s.generation = Get64(p + 16);
  return s;
}

}  // namespace

CommitRecord::CommitRecord(std::string dir) : path_(std::move(dir) + "/" + kFileName) {}

CommitRecord::~CommitRecord() {
  if (fd_ >= 0) close(fd_);
}

Result<uint64_t> CommitRecord::Read() {
  std::lock_guard<std::mutex> lock(mu_);
  const int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return uint64_t{0};
    return Status::IOError("cannot read " + Quoted(path_) + ": " + std::strerror(errno));
  }
  unsigned char buf[2 * kSlotBytes];
  const ssize_t n = pread(fd, buf, sizeof buf, 0);
  const int err = errno;
  close(fd);
  if (n < 0) return Status::IOError("cannot read " + Quoted(path_) + ": " + std::strerror(err));
  Slot best;
  for (size_t i = 0; i + kSlotBytes <= static_cast<size_t>(n); i += kSlotBytes) {
    Slot s = ParseSlot(buf + i);
    if (s.valid && (!best.valid || s.generation > best.generation)) best = s;
  }
  if (!best.valid) {
    if (n == 0) return uint64_t{0};  // created, never written (a crash right after creation)
    return Status::Corruption("the store's commit record " + Quoted(path_) + " is damaged");
  }
  sequence_ = best.sequence;
  generation_ = best.generation;
  return best.sequence;
}

Status CommitRecord::Record(uint64_t sequence) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sequence <= sequence_) return Status::OK();
  if (fd_ < 0) {
    fd_ = open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) return Status::IOError("cannot write " + Quoted(path_) + ": " + std::strerror(errno));
  }
  unsigned char slot[kSlotBytes] = {};
  std::memcpy(slot, kMagic, 8);
  Put64(slot + 8, sequence);
  Put64(slot + 16, generation_ + 1);
  Put64(slot + 24, Checksum(slot, 24));
  const off_t at = static_cast<off_t>(((generation_ + 1) % 2) * kSlotBytes);
  if (pwrite(fd_, slot, sizeof slot, at) != static_cast<ssize_t>(sizeof slot) || fdatasync(fd_) != 0) {
    return Status::IOError("cannot write " + Quoted(path_) + ": " + std::strerror(errno));
  }
  sequence_ = sequence;
  ++generation_;
  return Status::OK();
}

}  // namespace cvmstate
