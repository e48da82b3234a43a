// cvmstate replay TRACE [--db DIR --vm ID] [--impl NAME] [--keep-going] [--quiet] [--vfio ...]
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include "bench/impls.h"
#include "sim/vfio_sim.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
#include "text/listing.h"
#include "text/trace.h"
#include "tools/commands.h"
#include "tools/output.h"
#include "tracker/format.h"
#include "tracker/names.h"
#include "tracker/vm_state.h"

namespace cvmstate::tools {
namespace {

struct ReplayOptions {
  std::string trace;
  std::string impl = "cvmstate";
  bool keep_going = false;
  bool quiet = false;
  std::string vfio;  // "", "granule" or "extent"
  uint64_t vfio_limit = 0;
  std::string vfio_out;
  std::string db;
  std::string vm;
};

// Replays a trace into a VmState (which validates every line and, for the
// cvmstate implementation, holds the state) and, for a baseline, into that
// implementation too.
class Replayer {
 public:
  Replayer(std::unique_ptr<bench::TrackerImpl> impl, std::unique_ptr<VfioContainer> vfio)
      : impl_(std::move(impl)), vfio_(std::move(vfio)) {}

  // Applies one directive; on error nothing changed. *fatal is set when the
  // error is the implementation's limit rather than the line's fault.
  Status Apply(const TraceDirective& d, bool* fatal) {
    *fatal = false;
    switch (d.kind) {
      case TraceDirective::Kind::kBlock: {
        if (vfio_) return AddBlockWithVfio(d);
        Status s = vm_.AddBlock(d.name, d.size, d.page_size, d.state);
        if (!s.ok() || !impl_) return s;
        const BlockTracker* b = vm_.Find(d.name);
        s = impl_->AddBlock(b->size() >> b->page_shift(), d.state);
        *fatal = !s.ok();
        return s;
      }
      case TraceDirective::Kind::kConvert: {
        if (!impl_) return ApplyTraceDirective(d, &vm_);
        auto checked = CheckConversion(d, vm_);
        if (!checked.ok()) return checked.status();
        const BlockTracker* b = checked.value();
        impl_->Assign(static_cast<size_t>(vm_.IndexOf(d.name)), d.offset >> b->page_shift(),
                      (d.offset + d.size) >> b->page_shift(), d.state);
        return Status::OK();
      }
      default:
        return Status::OK();
    }
  }

  // With --vfio every block gets a DMA-mapping listener from its declaration
  // on; a block whose initial mappings the container refuses is not added.
  Status AddBlockWithVfio(const TraceDirective& d) {
    if (vm_.Find(d.name) != nullptr) return Status::InvalidArgument("block '" + d.name + "' is already declared");
    auto block = BlockTracker::Create(d.name, d.size, d.page_size, d.state);
    if (!block.ok()) return block.status();
    std::unique_ptr<DmaMappingListener> l = vfio_->MakeListener(d.name, d.page_size);
    Status s = block.value()->RegisterListener(l.get(), 0, d.size);
    if (!s.ok()) return s;
    vfio_listeners_.push_back(std::move(l));
    return vm_.AddBlock(std::move(block).value());
  }

  // Prints the container's figures, writes its live mappings if asked, and
  // checks that they cover exactly the shared pages.
  Status FinishVfio(const std::string& out_path) {
    const VfioContainer::Stats& st = vfio_->stats();
    std::fprintf(stderr, "vfio: mappings=%" PRIu64 " peak=%" PRIu64 " maps=%" PRIu64 " unmaps=%" PRIu64 "\n",
                 st.mappings, st.peak, st.maps, st.unmaps);
    std::vector<VfioContainer::Mapping> live = vfio_->LiveMappings();
    if (!out_path.empty()) {
      std::FILE* f = std::fopen(out_path.c_str(), "wb");
      if (f == nullptr) return Status::IOError("cannot write --vfio-out file '" + out_path + "'");
      OutputBuffer out(f);
      for (const auto& m : live) {
        std::string* b = out.buffer();
        b->append(m.block).push_back(' ');
        AppendHex(b, m.offset);
        b->push_back(' ');
        AppendHex(b, m.length);
        b->push_back('\n');
        out.MaybeFlush();
      }
      bool ok = out.Flush();
      if (std::fclose(f) != 0 || !ok) return Status::IOError("cannot write --vfio-out file '" + out_path + "'");
    }
    // Self-check: the union of live mappings is exactly the shared pages.
    size_t k = 0;
    for (size_t i = 0; i < vm_.num_blocks(); ++i) {
      const BlockTracker& b = vm_.block(i);
      bool ok = true;
      b.ForEachRun([&](const ByteRun& r) {
        if (r.state != PageState::kShared) return true;
        uint64_t pos = r.offset;
        while (ok && pos < r.offset + r.length) {
          ok = k < live.size() && live[k].block == b.name() && live[k].offset == pos;
          if (ok) pos += live[k++].length;
        }
        ok = ok && pos == r.offset + r.length;
        return ok;
      });
      if (!ok) return Status::Corruption("vfio: live mappings of block '" + b.name() + "' do not cover exactly its shared pages");
    }
    if (k != live.size() || st.violations != 0) {
      return Status::Corruption("vfio: live mappings outside the shared pages, or kernel rules broken");
    }
    return Status::OK();
  }
  bool has_vfio() const { return vfio_ != nullptr; }

  // Commits the state to the store, if one is attached, and reports it.
  Status Checkpoint() {
    if (!checkpointer_) return Status::OK();
    auto c = checkpointer_->CommitState(vm_);
    if (!c.ok()) return c.status();
    std::fprintf(stderr, "checkpoint %" PRIu64 " committed: %" PRIu64 " bytes\n", c->sequence, c->bytes);
    return Status::OK();
  }
  void AttachStore(std::unique_ptr<CheckpointStore> store, const std::string& vm) {
    store_ = std::move(store);
    checkpointer_ = std::make_unique<VmCheckpointer>(store_.get(), vm);
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
  std::unique_ptr<bench::TrackerImpl> impl_;
  std::unique_ptr<CheckpointStore> store_;
  std::unique_ptr<VmCheckpointer> checkpointer_;
  std::unique_ptr<VfioContainer> vfio_;
  std::vector<std::unique_ptr<DmaMappingListener>> vfio_listeners_;
  VmState vm_;  // last: destroyed before the listeners it points to
};

int RunReplay(const ReplayOptions& o) {
  TraceReader reader;
  Status s = reader.Open(o.trace);
  if (!s.ok()) return Fail(s.message());
  std::unique_ptr<bench::TrackerImpl> impl;
  if (o.impl != "cvmstate") impl = bench::MakeImpl(o.impl);
  std::unique_ptr<VfioContainer> vfio;
  if (!o.vfio.empty()) {
    vfio = std::make_unique<VfioContainer>(o.vfio == "granule" ? VfioContainer::Mode::kGranule
                                                               : VfioContainer::Mode::kExtent,
                                           o.vfio_limit);
  }
  Replayer replayer(std::move(impl), std::move(vfio));
  if (!o.db.empty()) {
    auto store = CheckpointStore::Open(o.db);
    if (!store.ok()) return Fail(store.status().message());
    replayer.AttachStore(std::move(store).value(), o.vm);
  }
  TraceDirective d;
  while (reader.NextDirective(&d, &s)) {
    bool fatal = false;
    if (s.ok()) s = replayer.Apply(d, &fatal);
    if (s.ok() && d.kind == TraceDirective::Kind::kCheckpoint) {
      s = replayer.Checkpoint();
      fatal = !s.ok();  // the store failed, not the line
    }
    if (!s.ok()) {
      std::fprintf(stderr, "%s:%" PRIu64 ": error: %s\n", o.trace.c_str(), reader.line_number(),
                   Printable(s.message()).c_str());
      if (!o.keep_going || fatal) return 1;
    }
  }
  if (!reader.read_status().ok()) return Fail(o.trace + ": " + reader.read_status().message());
  s = replayer.Checkpoint();  // the end of the trace commits too
  if (!s.ok()) return Fail(s.message());
  if (replayer.has_vfio()) {
    s = replayer.FinishVfio(o.vfio_out);
    if (!s.ok()) return Fail(s.message());
  }
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
  CLI::Option* db = sub->add_option("--db", o->db,
                                    "Attach the persistent store (RocksDB in DIR, created if missing): every\n"
                                    "checkpoint line and the end of the trace commit the state of --vm");
  CLI::Option* vm = sub->add_option("--vm", o->vm, "VM id to commit under (A-Z a-z 0-9 . _ : -)");
  db->needs(vm);
  vm->needs(db);
  CLI::Option* vfio = sub->add_option("--vfio", o->vfio,
                                      "Attach a simulated VFIO type1 listener to every block: granule maps every\n"
                                      "shared page on its own (QEMU today), extent maps each populated section\n"
                                      "whole and cuts it on partial discards (IOMMUFD cut)")
                          ->check(CLI::IsMember({"granule", "extent"}));
  sub->add_option("--vfio-limit", o->vfio_limit, "Most live DMA mappings (type1 default 65535; 0 = no limit)")
      ->needs(vfio);
  sub->add_option("--vfio-out", o->vfio_out, "Write the live mappings to FILE: NAME 0xOFFSET 0xLENGTH, sorted")
      ->needs(vfio);
  sub->callback([o, exit_code, db, vm] {
    if (db->count() != 0 && o->db.empty()) {
      std::fprintf(stderr, "cvmstate: usage error: --db must name a directory\n");
      *exit_code = 2;
      return;
    }
    if (vm->count() != 0 && !IsValidVmId(o->vm)) {
      std::fprintf(stderr, "cvmstate: usage error: invalid --vm %s (%s)\n", Quoted(o->vm).c_str(), kVmIdRule);
      *exit_code = 2;
      return;
    }
    if ((!o->vfio.empty() || !o->db.empty()) && o->impl != "cvmstate") {
      std::fprintf(stderr, "cvmstate: usage error: --vfio and --db need --impl cvmstate (see 'cvmstate replay --help')\n");
      *exit_code = 2;
      return;
    }
    *exit_code = RunReplay(*o);
  });
}

}  // namespace cvmstate::tools
