// Live migration of page state: a source streams a VM's state while the
// guest keeps converting pages (round 0 the full state, then the changes
// since the previous round, the last round being the stop-and-copy), and a
// destination verifies every frame, rebuilds the state and proves it equal
// with the source's digest.
//
// The protocol is transport-agnostic: the source writes bytes to a
// ByteSink and the destination reads from a ByteSource, so a VMM can run it
// over its own migration channel; FdSink/FdSource adapt any file
// descriptor (TCP socket, file, pipe, socketpair). Frames are described in
// schema/migration.fbs. With a pre-shared key every frame is authenticated
// (HMAC-SHA256, per-direction keys derived from a nonce the destination
// draws), so a recorded stream cannot be replayed over the network. Without
// a key frames are checked for integrity, not authenticated: listen only on
// a trusted network.
//
// Thread-safety: one thread per MigrationSource / MigrationDestination.
#ifndef CVMSTATE_MIGRATION_H_
#define CVMSTATE_MIGRATION_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "cvmstate/status.h"
#include "cvmstate/vm_state.h"

namespace cvmstate {

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  // Writes all of data, or fails.
  virtual Status Write(std::string_view data) = 0;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Reads exactly n bytes, or fails (IOError: closed, truncated, timed out).
  virtual Status Read(void* buf, size_t n) = 0;
};

// Writes to a file descriptor it does not own.
class FdSink : public ByteSink {
 public:
  explicit FdSink(int fd) : fd_(fd) {}
  Status Write(std::string_view data) override;

 private:
  int fd_;
};

// Reads from a file descriptor it does not own; each Read waits at most
// timeout_seconds for data to arrive (0: no limit).
class FdSource : public ByteSource {
 public:
  FdSource(int fd, double timeout_seconds) : fd_(fd), timeout_(timeout_seconds) {}
  Status Read(void* buf, size_t n) override;

 private:
  int fd_;
  double timeout_;
};

// Figures of one round as sent or received.
struct RoundStats {
  uint32_t round = 0;
  uint64_t frames = 0;
  uint64_t sections = 0;
  uint64_t runs = 0;
  uint64_t bytes = 0;  // on the wire, frame headers included
};

class MigrationSource {
 public:
  // vm must outlive the source and must not gain blocks while it streams;
  // its change journal is used (an epoch is opened at Begin and at every
  // round).
  MigrationSource(VmState* vm, std::string vm_id, ByteSink* sink);

  // Authenticates every frame with keys derived from `key` (see
  // LoadPskFile) and the stream's nonce. Call before Begin.
  void SetKey(std::string key) { key_ = std::move(key); }
  // Over a network: reads the destination's challenge, the nonce to answer.
  static Result<std::string> ReadChallenge(ByteSource* from);
  // For a stream with no live destination (a file): a fresh nonce.
  static Result<std::string> NewNonce();

  // Sends the answer to the challenge (`nonce`), the hello and round 0:
  // the full state.
  Status Begin(std::string_view nonce);
  // Sends a pre-copy round: the ranges changed since the previous round.
  Result<RoundStats> SendRound();
  // Sends the final round (stop-and-copy: the guest is paused, so what
  // changed last goes now) and the end frame with the state digest.
  Result<RoundStats> Finish();
  // Waits for the destination's acknowledgement: OK once it is ready, or
  // the error it reported (Refused) or met (IOError, Corruption).
  Status AwaitAck(ByteSource* from);

  const std::vector<RoundStats>& rounds() const { return rounds_; }
  uint64_t total_bytes() const { return bytes_; }

 private:
  Result<RoundStats> SendSections(bool full);

  VmState* vm_;
  std::string id_;
  std::string key_;       // derived from the pre-shared key; empty: none
  std::string send_key_, ack_key_;  // per-direction session keys
  ByteSink* sink_;
  uint64_t seq_ = 0;
  uint64_t epoch_ = 0;
  uint64_t bytes_ = 0;
  size_t blocks_ = 0;  // blocks announced in the hello
  std::vector<RoundStats> rounds_;
};

class MigrationDestination {
 public:
  struct Options {
    size_t max_frame_bytes = size_t{8} << 20;  // larger frames end the migration
    uint64_t max_guest_bytes = uint64_t{1} << 46;  // 64 TiB over all blocks
    uint64_t max_blocks = 4096;
    uint64_t max_runs = uint64_t{1} << 23;  // bounds the memory a sender can make us use
    // Called with the VM id from the hello; a non-OK status refuses it
    // (for example because the id already exists in the store).
    std::function<Status(const std::string&)> accept_vm;
    // The key derived from the pre-shared key file: every frame must be
    // authenticated with it. Empty: frames must carry no MAC.
    std::string key;
    // Over a network: the nonce this side sent; the stream must answer it.
    // Empty (a file): the stream's own nonce is taken.
    std::string expected_nonce;
    // Inspection only (dump --stream): read authenticated streams without
    // the key, checking integrity but not authenticity.
    bool ignore_macs = false;
  };
  explicit MigrationDestination(Options options);

  // Reads one whole stream (hello, rounds, end), verifying everything, and
  // returns the rebuilt state, whose digest equals the source's. *vm_id gets
  // the stream's VM id. Any fault ends it with an error naming it.
  Result<VmState> Receive(ByteSource* in, std::string* vm_id);

  // Over a network, before Receive: sends the challenge the source must
  // answer (a fresh nonce; put it in Options::expected_nonce).
  static Status SendChallenge(ByteSink* out, std::string_view nonce);

  // Sends the acknowledgement: ready, or an error with its reason
  // (authenticated when the stream was).
  Status SendAck(ByteSink* out, bool ok, const std::string& reason);

  const std::vector<RoundStats>& rounds() const { return rounds_; }
  uint64_t total_bytes() const { return bytes_; }
  // When the end frame was verified: the start of the guest's downtime.
  std::chrono::steady_clock::time_point end_received() const { return end_received_; }

 private:
  Options opt_;
  std::string ack_key_;  // session key of the answer, once known
  std::vector<RoundStats> rounds_;
  uint64_t bytes_ = 0;
  std::chrono::steady_clock::time_point end_received_{};
};

// Reads a pre-shared key file (16 bytes to 64 KiB, ideally random) and
// derives the key MigrationSource::SetKey and Options::key take.
Result<std::string> LoadPskFile(const std::string& path);

// CRC-32C (Castagnoli) of data, as used in frame headers.
uint32_t Crc32c(const void* data, size_t size);

// "HOST:PORT" (HOST an IPv4 or IPv6 literal in brackets, or a name) to a
// connected TCP socket, retrying for up to retry_seconds while nobody
// listens yet. The caller closes it.
Result<int> TcpConnect(const std::string& host_port, double retry_seconds);
// A listening TCP socket; *bound gets "HOST:PORT" with the real port.
Result<int> TcpListen(const std::string& host_port, std::string* bound);
// Accepts one connection, waiting at most timeout_seconds.
Result<int> TcpAccept(int listen_fd, double timeout_seconds);

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_H_
