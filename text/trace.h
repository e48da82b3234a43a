// The trace format of SPEC.md section 2: parsing numbers and lines, applying
// directives to a VmState, and reading trace files line by line.
#ifndef CVMSTATE_TRACE_H_
#define CVMSTATE_TRACE_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "tracker/page_state.h"
#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace cvmstate {

// Parses a trace number: decimal, 0x/0X hexadecimal, or decimal with one of
// the suffixes K M G T (x1024^n). Fails (InvalidArgument naming the token)
// on anything else or on a value that does not fit 64 bits.
Result<uint64_t> ParseTraceNumber(std::string_view token);

struct TraceDirective {
  enum class Kind { kEmpty, kBlock, kConvert, kCheckpoint };
  Kind kind = Kind::kEmpty;
  std::string name;
  uint64_t offset = 0;                     // kConvert
  uint64_t size = 0;                       // kBlock: block size; kConvert: range size
  uint64_t page_size = 4096;               // kBlock
  PageState state = PageState::kPrivate;   // kBlock: initial; kConvert: target
};

// Parses one line (its newline removed; a trailing CR is ignored). Checks
// syntax only: token count, numbers, option keys, state names. Blank and
// comment-only lines give kEmpty.
Status ParseTraceLine(std::string_view line, TraceDirective* out);

// For a kConvert directive: the block it names, once its range has been
// checked against that block (SPEC.md section 2). InvalidArgument saying
// what is wrong otherwise (unknown block, alignment, bounds, overflow).
Result<const BlockTracker*> CheckConversion(const TraceDirective& d, const VmState& vm);

// Applies a parsed directive: declares a block or converts a range, with
// every rule of SPEC.md section 2. On error vm is unchanged. kCheckpoint
// and kEmpty do nothing here (the caller owns checkpoints).
Status ApplyTraceDirective(const TraceDirective& d, VmState* vm);

// Parses a whole trace held in memory (a generated workload) into its
// directives, blank and comment lines left out. Syntax only, as
// ParseTraceLine; the first invalid line fails it ("line N: REASON").
Result<std::vector<TraceDirective>> ParseTraceText(std::string_view text);

// Reads a trace file line by line with a bounded buffer: a line longer than
// kMaxLineLength is reported as an invalid line, never buffered whole,
// unless a '#' within its first kMaxLineLength bytes makes the rest a
// comment (skipped unread: comments have no length limit).
class TraceReader {
 public:
  static constexpr size_t kMaxLineLength = 4096;

  TraceReader() = default;
  ~TraceReader();
  TraceReader(const TraceReader&) = delete;
  TraceReader& operator=(const TraceReader&) = delete;

  // Opens path ("-" is standard input). IOError if it cannot be read.
  Status Open(const std::string& path);

  // Reads the next line. Returns false at end of file or on a read error
  // (then read_status() says which). *line stays valid until the next call.
  // A line that is too long yields *too_long = true and an empty view; a
  // long comment line yields its first kMaxLineLength bytes.
  bool Next(std::string_view* line, bool* too_long);
  // Reads and parses the next line: false at end of file or on a read
  // error; otherwise *parsed is OK with *d filled in, or says why the line
  // is invalid (including a line that is too long).
  bool NextDirective(TraceDirective* d, Status* parsed);
  uint64_t line_number() const { return line_number_; }
  const Status& read_status() const { return read_status_; }

 private:
  std::FILE* file_ = nullptr;
  bool owns_ = false;
  std::string line_;
  uint64_t line_number_ = 0;
  Status read_status_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_TRACE_H_
