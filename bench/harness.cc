#include "bench/harness.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <new>
#include <thread>

#include "bench/impls.h"
#include "sim/host_listeners.h"
#include "text/trace.h"
#include "tracker/journal_reader.h"
#include "tracker/vm_state.h"

namespace cvmstate::bench {
namespace {

using Clock = std::chrono::steady_clock;

double NsSince(Clock::time_point t0) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Lookup {
  uint32_t block;
  uint64_t page;
};

struct RunRecord {
  uint32_t block;
  uint64_t begin, end;
  PageState state;
  bool operator==(const RunRecord& o) const {
    return block == o.block && begin == o.begin && end == o.end && state == o.state;
  }
};

std::vector<RunRecord> Listing(const TrackerImpl& impl, size_t nblocks) {
  struct Ctx {
    std::vector<RunRecord>* v;
    uint32_t block;
  };
  std::vector<RunRecord> v;
  for (size_t b = 0; b < nblocks; ++b) {
    Ctx ctx{&v, static_cast<uint32_t>(b)};
    impl.ForEachRun(b, [](void* p, uint64_t a, uint64_t e, PageState s) {
      auto* c = static_cast<Ctx*>(p);
      c->v->push_back({c->block, a, e, s});
    }, &ctx);
  }
  return v;
}

// demo's checkpoint cadence (a checkpoint every eighth of its 100,000
// conversions).
constexpr uint64_t kConversionsPerCheckpoint = 12500;

// The listener path itself, on the caller's thread.
void RunListenerPath(const ParsedTrace& trace, double* ns_out, std::string* failure) {
  HostListeners host;  // declared first, gone last: vm never holds a listener already freed
  VmState vm;
  for (const BenchBlock& b : trace.blocks) {
    Status s = vm.AddBlock(b.name, b.pages << b.page_shift, uint64_t{1} << b.page_shift, b.initial);
    if (s.ok()) s = host.Attach(&vm.block(vm.num_blocks() - 1));
    if (!s.ok()) {
      *failure = "the listener path: " + s.message();
      return;
    }
  }
  // The journal on and read as a checkpointing VMM has it: a reader (the
  // checkpointer's) takes every block's changes and moves on every
  // kConversionsPerCheckpoint conversions, as `demo` does; reading is timed
  // with the conversions.
  JournalReader checkpointer;
  checkpointer.Attach(&vm);
  uint64_t since_checkpoint = 0;
  auto t0 = Clock::now();
  for (const BenchOp& op : trace.ops) {
    BlockTracker& t = vm.block(op.block);
    const unsigned sh = t.page_shift();
    (void)t.Convert(op.begin << sh, (op.end - op.begin) << sh, op.state);
    if (++since_checkpoint == kConversionsPerCheckpoint) {
      for (size_t i = 0; i < vm.num_blocks(); ++i) (void)checkpointer.Changed(vm.block(i));
      checkpointer.Advance();
      since_checkpoint = 0;
    }
  }
  *ns_out = trace.ops.empty() ? 0 : NsSince(t0) / static_cast<double>(trace.ops.size());
  std::vector<uint64_t> mapped(vm.num_blocks(), 0);
  for (const VfioContainer::Mapping& m : host.vfio().LiveMappings()) {
    mapped[static_cast<size_t>(vm.IndexOf(m.block))] += m.length;
  }
  for (size_t i = 0; i < vm.num_blocks() && failure->empty(); ++i) {
    const BlockTracker& t = vm.block(i);
    if (mapped[i] != t.BytesIn(PageState::kShared) ||
        host.attributes(i).private_bytes() != t.BytesIn(PageState::kPrivate)) {
      *failure = "the listeners of block " + t.name() + " disagree with its state after the replay";
    }
  }
}

// ns per conversion of the trace through the tracker with its journal and
// a VMM's two listeners on every block (see ImplResult::apply_listeners_ns).
// *failure says why the path could not run (out of memory, a block or a
// listener refused) or names a block whose listeners' final view differs
// from its state (mapped bytes against shared bytes, private bytes against
// private).
double ListenerPathNs(const ParsedTrace& trace, std::string* failure) {
  double ns = 0;
  // Its own thread, as the replays: the heap it leaves behind is freed
  // before the next implementation is measured. An exception must not
  // leave the thread (std::terminate): out of memory is caught there.
  std::thread runner([&] {
    try {
      RunListenerPath(trace, &ns, failure);
    } catch (const std::bad_alloc&) {
      *failure = "out of memory on the listener path";
    }
  });
  runner.join();
  return ns;
}

}  // namespace

Status ParseTraceFile(const std::string& path, ParsedTrace* out) {
  TraceReader reader;
  Status s = reader.Open(path);
  if (!s.ok()) return s;
  VmState vm;
  TraceDirective d;
  while (reader.NextDirective(&d, &s)) {
    if (s.ok() && d.kind == TraceDirective::Kind::kBlock) {
      s = vm.AddBlock(d.name, d.size, d.page_size, d.state);
      if (s.ok()) {
        const BlockTracker* b = vm.Find(d.name);
        out->blocks.push_back({d.name, b->size() >> b->page_shift(), b->page_shift(), d.state});
      }
    } else if (s.ok() && d.kind == TraceDirective::Kind::kConvert) {
      auto checked = CheckConversion(d, vm);
      s = checked.status();
      if (checked.ok()) {
        const BlockTracker* b = checked.value();
        out->ops.push_back({static_cast<uint32_t>(vm.IndexOf(d.name)), d.state, d.offset >> b->page_shift(),
                            (d.offset + d.size) >> b->page_shift()});
      }
    }
    if (!s.ok()) {
      if (out->skipped_lines++ == 0) out->first_error = std::to_string(reader.line_number()) + ": " + s.message();
    }
  }
  return reader.read_status();
}

Result<BenchReport> RunBench(const ParsedTrace& trace, int repeat) {
  repeat = std::max(repeat, 1);
  BenchReport report;
  report.ops = trace.ops.size();
  // The same random lookups for every implementation.
  uint64_t total_pages = 0;
  for (const auto& b : trace.blocks) total_pages += b.pages;
  std::vector<Lookup> lookups;
  if (total_pages > 0) {
    lookups.resize(1 << 20);
    uint64_t x = 0x243f6a8885a308d3ULL;
    for (auto& l : lookups) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      uint64_t p = x % total_pages;
      uint32_t b = 0;
      while (p >= trace.blocks[b].pages) p -= trace.blocks[b++].pages;
      l = {b, p};
    }
  }
  std::vector<RunRecord> reference;
  bool have_reference = false;
  struct Samples {
    ImplResult r;
    std::vector<double> apply, lookup, scan;
  };
  std::vector<Samples> all(ImplNames().size());
  for (size_t k = 0; k < all.size(); ++k) all[k].r.name = ImplNames()[k];
  // Rounds, each measuring every implementation once: a slow spell of the
  // machine (this kind of VM has them, tens of milliseconds to seconds
  // long) then falls on all of them alike instead of on one
  // implementation's every repeat, and the medians' ratios compare like
  // with like.
  for (int rep = 0; rep < repeat; ++rep) {
    for (Samples& x : all) {
      ImplResult& r = x.r;
      const std::string& name = r.name;
      std::vector<double>& apply = x.apply;
      std::vector<double>& lookup = x.lookup;
      std::vector<double>& scan = x.scan;
      if (!r.supported) continue;
      // Build and replay on a thread of its own: when it ends, glibc hands
      // the chunks cached in its thread cache back to the arena, so the
      // heap counter sees exactly what the structure still holds.
      std::unique_ptr<TrackerImpl> impl;
      double ns = 0;
      const size_t heap0 = HeapBytesInUse();
      // An exception must not leave the thread (std::terminate): it is
      // caught there and carried out.
      bool out_of_memory = false;
      std::thread builder([&] {
        try {
          // Builds the blocks and, if timed, replays the trace into
          // them; false if a block is refused (the implementation cannot
          // hold the trace).
          auto build = [&](bool timed) {
            impl.reset();  // what the last build held is freed first
            impl = MakeImpl(name);
            for (const auto& b : trace.blocks) {
              Status s = impl->AddBlock(b.pages, b.initial);
              if (!s.ok()) {
                r.supported = false;
                r.why_unsupported = s.message();
                return false;
              }
            }
            auto t0 = Clock::now();
            for (const BenchOp& op : trace.ops) impl->Assign(op.block, op.begin, op.end, op.state);
            if (timed) ns += NsSince(t0);
            return true;
          };
          // One untimed replay first, so that the timed ones find this
          // thread's heap mapped already (glibc may still give some of
          // it back between replays). The bitmap maps and touches its
          // memory when a block is declared, outside the timer; the others
          // allocate as the trace fragments, inside it, and on this kind
          // of virtual machine the first touch of a page costs 9-80 us
          // (tens of times a bare host's): a cold replay of a
          // 200,000-conversion `frag` trace took 72 page faults and twice
          // the time of a replay after an untimed one, which took 0 to 8.
          // Then replays, each into new blocks, until 20 ms of them (at
          // most 16): one replay of a short trace is under a millisecond,
          // a few timer ticks' worth of noise.
          if (!build(false)) return;
          int replays = 0;
          do {
            if (!build(true)) return;
            ++replays;
          } while (ns < 2e7 && replays < 16);
          ns /= replays;
          impl->Finish();
        } catch (const std::bad_alloc&) {
          impl.reset();  // frees what it got
          out_of_memory = true;
        }
      });
      builder.join();
      if (out_of_memory) {
        return Status::Refused("out of memory in the " + name + (name == ImplNames()[0] ? "" : " baseline"));
      }
      if (!r.supported) continue;
      r.bytes = HeapBytesInUse() - heap0;
      apply.push_back(trace.ops.empty() ? 0 : ns / static_cast<double>(trace.ops.size()));
      auto t0 = Clock::now();

      unsigned sum = 0;
      for (const Lookup& l : lookups) sum += static_cast<unsigned>(impl->Get(l.block, l.page));
      lookup.push_back(lookups.empty() ? 0 : NsSince(t0) / static_cast<double>(lookups.size()));
      if (sum == 0xffffffffu) std::fputs("", stderr);  // keeps the loop from being optimised away

      struct Count {
        uint64_t runs = 0, pages = 0;
      } count;
      int scans = 0;
      t0 = Clock::now();
      do {
        count = Count{};
        for (size_t b = 0; b < trace.blocks.size(); ++b) {
          impl->ForEachSharedRun(b, [](void* p, const PageSpan* runs, size_t n) {
            // Summed in a local: a store to *c could alias runs[], and
            // would be repeated a run.
            uint64_t pages = 0;
            for (size_t i = 0; i < n; ++i) pages += runs[i].end - runs[i].begin;
            auto* c = static_cast<Count*>(p);
            c->runs += n;
            c->pages += pages;
          }, &count);
        }
        ++scans;
      } while (NsSince(t0) < 2e7 && scans < 1000);  // at least 20 ms of scanning
      scan.push_back(NsSince(t0) / scans);
      r.shared_runs = count.runs;

      if (rep == 0) {
        std::vector<RunRecord> listing = Listing(*impl, trace.blocks.size());
        r.runs = listing.size();
        if (!have_reference) {
          reference = std::move(listing);
          have_reference = true;
        } else if (!(listing == reference) && report.agree) {
          report.agree = false;
          size_t i = 0;
          while (i < listing.size() && i < reference.size() && listing[i] == reference[i]) ++i;
          char buf[256];
          if (i < reference.size()) {
            const RunRecord& w = reference[i];
            std::snprintf(buf, sizeof buf, "%s differs from %s at run %zu (block %s, page %" PRIu64 ")",
                          name.c_str(), ImplNames()[0].c_str(), i, trace.blocks[w.block].name.c_str(), w.begin);
          } else {
            std::snprintf(buf, sizeof buf, "%s has %zu runs, %s has %zu", name.c_str(), listing.size(),
                          ImplNames()[0].c_str(), reference.size());
          }
          report.disagreement = buf;
        }
      }
    }
  }
  // After the replays, not between them: its tables come and go on the
  // heap the replays measure.
  std::vector<double> listeners;
  for (int rep = 0; rep < repeat && all[0].r.supported; ++rep) {
    std::string failure;
    listeners.push_back(ListenerPathNs(trace, &failure));
    if (failure.rfind("out of memory", 0) == 0) return Status::Refused(failure);
    if (!failure.empty() && report.agree) {
      report.agree = false;
      report.disagreement = failure;
    }
  }
  for (Samples& x : all) {
    ImplResult& r = x.r;
    r.apply_ns = Median(x.apply);
    r.lookup_ns = Median(x.lookup);
    r.scan_shared_ns = Median(x.scan);
    if (&x == &all[0]) r.apply_listeners_ns = Median(listeners);
    report.impls.push_back(std::move(r));
  }
  return report;
}

}  // namespace cvmstate::bench
