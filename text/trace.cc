#include "text/trace.h"

#include <cerrno>
#include <cstring>

#include "tracker/format.h"
#include "tracker/names.h"

namespace cvmstate {
namespace {

Status BadNumber(std::string_view tok, const char* why) {
  return Status::InvalidArgument("invalid number '" + std::string(tok) + "': " + why);
}

// Splits on spaces and tabs, dropping a '#' comment. At most kMax tokens are
// kept; *count says how many there were.
constexpr size_t kMaxTokens = 8;
size_t Tokenize(std::string_view line, std::string_view* toks) {
  size_t hash = line.find('#');
  if (hash != std::string_view::npos) line = line.substr(0, hash);
  size_t n = 0, i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) {
      if (n < kMaxTokens) toks[n] = line.substr(start, i - start);
      ++n;
    }
  }
  return n;
}

}  // namespace

Result<uint64_t> ParseTraceNumber(std::string_view tok) {
  if (tok.empty()) return BadNumber(tok, "empty");
  uint64_t v = 0;
  if (tok.size() >= 2 && tok[0] == '0' && (tok[1] == 'x' || tok[1] == 'X')) {
    std::string_view digits = tok.substr(2);
    if (digits.empty()) return BadNumber(tok, "no hexadecimal digits after 0x");
    for (char c : digits) {
      unsigned d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else return BadNumber(tok, "not a hexadecimal digit");
      if (v >> 60) return BadNumber(tok, "does not fit in 64 bits");
      v = (v << 4) | d;
    }
    return v;
  }
  unsigned shift = 0;
  std::string_view digits = tok;
  switch (tok.back()) {
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    case 'T': shift = 40; break;
    default: break;
  }
  if (shift) digits.remove_suffix(1);
  if (digits.empty()) return BadNumber(tok, "no digits before the suffix");
  for (char c : digits) {
    if (c < '0' || c > '9') {
      return BadNumber(tok, "expected decimal digits with an optional K/M/G/T suffix, or 0x hex");
    }
    unsigned d = c - '0';
    if (v > (UINT64_MAX - d) / 10) return BadNumber(tok, "does not fit in 64 bits");
    v = v * 10 + d;
  }
  if (shift && (v >> (64 - shift)) != 0) return BadNumber(tok, "does not fit in 64 bits with its suffix");
  return v << shift;
}

Status ParseTraceLine(std::string_view line, TraceDirective* out) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::string_view t[kMaxTokens];
  const size_t n = Tokenize(line, t);
  *out = TraceDirective{};
  if (n == 0) return Status::OK();
  const std::string_view verb = t[0];
  if (verb == "checkpoint") {
    if (n != 1) return Status::InvalidArgument("'checkpoint' takes no arguments");
    out->kind = TraceDirective::Kind::kCheckpoint;
    return Status::OK();
  }
  if (verb == "block") {
    if (n < 3) return Status::InvalidArgument("'block' needs NAME SIZE [page=PAGE_SIZE] [initial=STATE]");
    if (n > 5) return Status::InvalidArgument("'block' takes at most two options (page=, initial=)");
    out->kind = TraceDirective::Kind::kBlock;
    out->name = std::string(t[1]);
    if (!IsValidBlockName(t[1])) {
      return Status::InvalidArgument("invalid block name " + Quoted(out->name) + " (" + kBlockNameRule + ")");
    }
    auto size = ParseTraceNumber(t[2]);
    if (!size.ok()) return size.status();
    out->size = size.value();
    bool have_page = false, have_initial = false;
    for (size_t i = 3; i < n; ++i) {
      size_t eq = t[i].find('=');
      std::string_view key = t[i].substr(0, eq);
      std::string_view value = eq == std::string_view::npos ? std::string_view() : t[i].substr(eq + 1);
      if (eq == std::string_view::npos) {
        return Status::InvalidArgument("expected key=value, got '" + std::string(t[i]) + "'");
      }
      if (key == "page") {
        if (have_page) return Status::InvalidArgument("option 'page' given twice");
        have_page = true;
        auto ps = ParseTraceNumber(value);
        if (!ps.ok()) return ps.status();
        out->page_size = ps.value();
      } else if (key == "initial") {
        if (have_initial) return Status::InvalidArgument("option 'initial' given twice");
        have_initial = true;
        auto st = ParsePageState(value);
        if (!st) {
          return Status::InvalidArgument("invalid state '" + std::string(value) +
                                         "' (use shared, private or discarded)");
        }
        out->state = *st;
      } else {
        return Status::InvalidArgument("unknown block option '" + std::string(key) +
                                       "' (known: page, initial)");
      }
    }
    return Status::OK();
  }
  auto state = ParsePageState(verb);
  if (!state) {
    return Status::InvalidArgument("unknown directive '" + std::string(verb) +
                                   "' (expected block, shared, private, discarded or checkpoint)");
  }
  if (n != 4) {
    // Appended piece by piece: GCC 12's -Wrestrict misreads "x" + std::string
    // (its bug 105329) in optimised builds.
    std::string msg(1, '\'');
    msg.append(verb);
    msg += "' needs exactly NAME OFFSET SIZE, got ";
    msg += std::to_string(n - 1);
    msg += n == 2 ? " argument" : " arguments";
    return Status::InvalidArgument(msg);
  }
  out->kind = TraceDirective::Kind::kConvert;
  out->state = *state;
  out->name = std::string(t[1]);
  auto off = ParseTraceNumber(t[2]);
  if (!off.ok()) return off.status();
  auto size = ParseTraceNumber(t[3]);
  if (!size.ok()) return size.status();
  out->offset = off.value();
  out->size = size.value();
  return Status::OK();
}

Result<const BlockTracker*> CheckConversion(const TraceDirective& d, const VmState& vm) {
  const BlockTracker* b = vm.Find(d.name);
  if (b == nullptr) {
    return Status::InvalidArgument("unknown block '" + d.name + "' (declare it with a 'block' line first)");
  }
  Status s = b->ValidateRange(d.offset, d.size);
  if (!s.ok()) return s;
  return b;
}

Status ApplyTraceDirective(const TraceDirective& d, VmState* vm) {
  switch (d.kind) {
    case TraceDirective::Kind::kBlock:
      return vm->AddBlock(d.name, d.size, d.page_size, d.state);
    case TraceDirective::Kind::kConvert: {
      auto b = CheckConversion(d, *vm);
      if (!b.ok()) return b.status();
      return vm->Find(d.name)->Convert(d.offset, d.size, d.state);
    }
    default:
      return Status::OK();
  }
}

TraceReader::~TraceReader() {
  if (owns_ && file_ != nullptr) std::fclose(file_);
}

Status TraceReader::Open(const std::string& path) {
  if (path == "-") {
    file_ = stdin;
    owns_ = false;
    return Status::OK();
  }
  file_ = std::fopen(path.c_str(), "rb");
  if (file_ == nullptr) {
    return Status::IOError("cannot open trace '" + path + "': " + std::strerror(errno));
  }
  owns_ = true;
  return Status::OK();
}

bool TraceReader::Next(std::string_view* line, bool* too_long) {
  *too_long = false;
  line_.clear();
  if (file_ == nullptr) return false;
  int c;
  bool any = false, in_comment = false;
  while ((c = getc_unlocked(file_)) != EOF) {
    any = true;
    if (c == '\n') break;
    if (line_.size() < kMaxLineLength) {
      line_.push_back(static_cast<char>(c));
      if (c == '#') in_comment = true;
    } else if (!in_comment) {
      *too_long = true;  // the rest of a comment is skipped, not an error
    }
  }
  if (std::ferror(file_)) {
    read_status_ = Status::IOError(std::string("read error: ") + std::strerror(errno));
    return false;
  }
  if (!any) return false;
  ++line_number_;
  *line = *too_long ? std::string_view() : std::string_view(line_);
  return true;
}

bool TraceReader::NextDirective(TraceDirective* d, Status* parsed) {
  std::string_view line;
  bool too_long = false;
  if (!Next(&line, &too_long)) return false;
  *d = TraceDirective{};
  *parsed = too_long ? Status::InvalidArgument("line longer than " + std::to_string(kMaxLineLength) + " characters")
                     : ParseTraceLine(line, d);
  return true;
}

}  // namespace cvmstate

namespace cvmstate {

Result<std::vector<TraceDirective>> ParseTraceText(std::string_view text) {
  std::vector<TraceDirective> out;
  uint64_t line = 0;
  while (!text.empty()) {
    ++line;
    const size_t nl = text.find('\n');
    const std::string_view l = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    TraceDirective d;
    const std::string_view head = l.substr(0, TraceReader::kMaxLineLength);
    Status s = l.size() > head.size() && head.find('#') == std::string_view::npos
                   ? Status::InvalidArgument("line longer than " + std::to_string(TraceReader::kMaxLineLength))
                   : ParseTraceLine(head, &d);
    if (!s.ok()) return s.WithPrefix("line " + std::to_string(line) + ": ");
    if (d.kind != TraceDirective::Kind::kEmpty) out.push_back(std::move(d));
  }
  return out;
}

}  // namespace cvmstate
