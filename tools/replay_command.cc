// cvmstate replay TRACE [--impl NAME] [--keep-going] [--quiet]
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "cvmstate/listing.h"
#include "cvmstate/trace.h"
#include "cvmstate/vm_state.h"
#include "impls.h"
#include "output.h"

namespace cvmstate::tools {
namespace {

struct ReplayOptions {
  std::string trace;
  std::string impl = "cvmstate";
  bool keep_going = false;
  bool quiet = false;
};

// Replays a trace into a VmState (which validates every line and, for the
// cvmstate implementation, holds the state) and, for a baseline, into that
// implementation too.
class Replayer {
 public:
  explicit Replayer(std::unique_ptr<bench::TrackerImpl> impl) : impl_(std::move(impl)) {}

  // Applies one directive; on error nothing changed. *fatal is set when the
  // error is the implementation's limit rather than the line's fault.
  Status Apply(const TraceDirective& d, bool* fatal) {
    *fatal = false;
    switch (d.kind) {
      case TraceDirective::Kind::kBlock: {
        Status s = vm_.AddBlock(d.name, d.size, d.page_size, d.state);
        if (!s.ok() || !impl_) return s;
        const BlockTracker* b = vm_.Find(d.name);
        s = impl_->AddBlock(b->size() >> b->page_shift(), d.state);
        *fatal = !s.ok();
        return s;
      }
      case TraceDirective::Kind::kConvert: {
        BlockTracker* b = vm_.Find(d.name);
        if (b == nullptr) {
          return Status::InvalidArgument("unknown block '" + d.name + "' (declare it with a 'block' line first)");
        }
        if (!impl_) return b->Convert(d.offset, d.size, d.state);
        Status s = b->ValidateRange(d.offset, d.size);
        if (!s.ok()) return s;
        impl_->Assign(static_cast<size_t>(vm_.IndexOf(d.name)), d.offset >> b->page_shift(),
                      (d.offset + d.size) >> b->page_shift(), d.state);
        return Status::OK();
      }
      default:
        return Status::OK();
    }
  }

  void WriteListing(OutputBuffer* out) {
    for (size_t i = 0; i < vm_.num_blocks(); ++i) {
      const BlockTracker& b = vm_.block(i);
      if (!impl_) {
        b.ForEachRun([&](const ByteRun& r) {
          AppendListingLine(out->buffer(), b.name(), r.offset, r.length, r.state);
          out->MaybeFlush();
          return true;
        });
        continue;
      }
      struct Ctx {
        OutputBuffer* out;
        const BlockTracker* b;
      } ctx{out, &b};
      impl_->ForEachRun(i, [](void* p, uint64_t begin, uint64_t end, PageState s) {
        auto* c = static_cast<Ctx*>(p);
        unsigned sh = c->b->page_shift();
        AppendListingLine(c->out->buffer(), c->b->name(), begin << sh, (end - begin) << sh, s);
        c->out->MaybeFlush();
      }, &ctx);
    }
  }

 private:
  VmState vm_;
  std::unique_ptr<bench::TrackerImpl> impl_;
};

int RunReplay(const ReplayOptions& o) {
  TraceReader reader;
  Status s = reader.Open(o.trace);
  if (!s.ok()) return Fail(s.message());
  std::unique_ptr<bench::TrackerImpl> impl;
  if (o.impl != "cvmstate") impl = bench::MakeImpl(o.impl);
  Replayer replayer(std::move(impl));
  std::string_view line;
  bool too_long = false;
  while (reader.Next(&line, &too_long)) {
    TraceDirective d;
    if (too_long) {
      s = Status::InvalidArgument("line longer than " + std::to_string(TraceReader::kMaxLineLength) +
                                  " characters");
    } else {
      s = ParseTraceLine(line, &d);
    }
    bool fatal = false;
    if (s.ok()) s = replayer.Apply(d, &fatal);
    if (!s.ok()) {
      std::fprintf(stderr, "%s:%" PRIu64 ": error: %s\n", o.trace.c_str(), reader.line_number(),
                   s.message().c_str());
      if (!o.keep_going || fatal) return 1;
    }
  }
  if (!reader.read_status().ok()) return Fail(o.trace + ": " + reader.read_status().message());
  if (o.quiet) return 0;
  OutputBuffer out(stdout);
  replayer.WriteListing(&out);
  if (!out.Flush()) return Fail("cannot write the listing to standard output");
  return 0;
}

}  // namespace

void AddReplayCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<ReplayOptions>();
  CLI::App* sub = app.add_subcommand(
      "replay",
      "Apply a trace to a fresh state and print the canonical run listing.\n"
      "An invalid line stops the replay (TRACE:LINE: error: REASON, exit 1)\n"
      "unless --keep-going skips it.\n"
      "Example: cvmstate replay guest.trace --keep-going");
  sub->add_option("TRACE", o->trace, "Trace file to replay ('-' for standard input)")->required();
  sub->add_option("--impl", o->impl, "Tracker implementation: cvmstate (default), bitmap, roaring, icl")
      ->check(CLI::IsMember(bench::ImplNames()));
  sub->add_flag("--keep-going", o->keep_going, "Report invalid lines and skip them instead of stopping");
  sub->add_flag("--quiet", o->quiet, "Do not print the run listing");
  sub->callback([o, exit_code] { *exit_code = RunReplay(*o); });
}

}  // namespace cvmstate::tools
