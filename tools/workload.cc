#include "tools/workload.h"

#include <algorithm>

#include "text/listing.h"

namespace cvmstate::tools {
namespace {

constexpr uint64_t kKiB = 1024, kMiB = kKiB * 1024, kGiB = kMiB * 1024;
constexpr uint64_t kPage = 4 * kKiB;

// SplitMix64: small, fast, and the same on every platform.
class Rng {
 public:
  // The seed goes through the finalizer: a plain multiple of the step
  // would make seed k the stream of seed 0 shifted by k draws (seeds 7 and
  // 9 gave the same conversions two draws apart).
  explicit Rng(uint64_t seed) : s_(Finalize(seed ^ 0x632be59bd9b4e019ULL)) {}
  uint64_t Next() { return Finalize(s_ += 0x9e3779b97f4a7c15ULL); }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  uint64_t Between(uint64_t lo, uint64_t hi) { return lo + Below(hi - lo + 1); }
  bool Chance(unsigned percent) { return Below(100) < percent; }

 private:
  static uint64_t Finalize(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t s_;
};

struct Block {
  std::string name;
  uint64_t size;
};

using FlushFn = std::function<void(std::string*)>;
class Writer {
 public:
  Writer(std::string* out, const FlushFn& flush) : out_(out), flush_(flush) {}
  ~Writer() { MaybeFlush(); }
  void Line(const std::string& s) {
    out_->append(s);
    out_->push_back('\n');
    MaybeFlush();
  }
  void MaybeFlush() {
    if (flush_ && out_->size() > (1u << 20)) flush_(out_);
  }
  void Block(const std::string& name, uint64_t size, const char* initial) {
    out_->append("block ").append(name).push_back(' ');
    AppendHex(out_, size);
    out_->append(" initial=").append(initial).push_back('\n');
  }
  void Convert(const char* state, const std::string& name, uint64_t off, uint64_t len) {
    out_->append(state).push_back(' ');
    out_->append(name).push_back(' ');
    AppendHex(out_, off);
    out_->push_back(' ');
    AppendHex(out_, len);
    out_->push_back('\n');
    MaybeFlush();
  }

 private:
  std::string* out_;
  const FlushFn& flush_;
};

uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }

// A guest converts pages while running: SWIOTLB and per-vCPU pages shared
// at boot, then DMA buffers shared and unshared all over memory, free-page
// reporting that discards 2-4 MiB and re-accepts it, lazy accept of a
// still-unaccepted tail, and virtio-mem plugging and unplugging 128 MiB.
Status Steady(uint64_t size, Rng& rng, uint64_t ops, Writer& w) {
  if (size < 1 * kGiB) return Status::InvalidArgument("profile 'steady' needs --size of at least 1G");
  const uint64_t vmem = std::max<uint64_t>(AlignDown(size / 8, 128 * kMiB), 128 * kMiB);
  const uint64_t ram = AlignDown(size - vmem, 2 * kMiB);
  const uint64_t node0 = AlignDown(ram / 2, 2 * kMiB), node1 = ram - node0;
  std::vector<Block> rams = {{"/objects/mem0", node0}, {"/objects/mem1", node1}};
  w.Line("# steady confidential VM: DMA churn, free-page reporting, lazy accept, virtio-mem");
  w.Block("pc.bios", 4 * kMiB, "private");
  w.Block(rams[0].name, node0, "private");
  w.Block(rams[1].name, node1, "private");
  w.Block("/objects/vmem0", vmem, "discarded");
  w.Convert("shared", "pc.bios", 4 * kMiB - kPage, kPage);
  // The upper quarter of node 1 is not accepted yet (lazy accept).
  const uint64_t lazy_begin = AlignDown(node1 - node1 / 4, 2 * kMiB);
  w.Convert("discarded", rams[1].name, lazy_begin, node1 - lazy_begin);
  const uint64_t swiotlb_len =
      std::min(std::clamp<uint64_t>(AlignDown(size / 256, 2 * kMiB), 64 * kMiB, 1 * kGiB), node0 / 4);
  const uint64_t swiotlb_at = std::min<uint64_t>(node0 / 2, 2 * kGiB) & ~(2 * kMiB - 1);
  w.Convert("shared", rams[0].name, swiotlb_at, swiotlb_len);
  // A random aligned place for len bytes in block bi that keeps clear of
  // the SWIOTLB pool (the guest never frees or reshares it).
  auto place = [&](uint8_t bi, uint64_t len, uint64_t align) {
    uint64_t off = AlignDown(rng.Below(rams[bi].size - len), align);
    if (bi == 0 && off < swiotlb_at + swiotlb_len && off + len > swiotlb_at) {
      off = AlignDown(swiotlb_at + swiotlb_len + rng.Below(node0 - swiotlb_at - swiotlb_len - len), align);
    }
    return off;
  };
  const uint64_t vcpus = std::clamp<uint64_t>(size / (4 * kGiB), 2, 256);
  for (uint64_t i = 0; i < vcpus; ++i) {
    const Block& b = rams[i % 2];
    w.Convert("shared", b.name, AlignDown(rng.Below(b.size), kPage), kPage);
  }
  struct Range {
    uint8_t block;
    uint64_t off, len;
  };
  std::vector<Range> dma, reported;
  // Live shared DMA buffers: most device DMA of a confidential guest bounces
  // through SWIOTLB, so a few thousand buffers are shared at any time.
  const uint64_t dma_target = std::clamp<uint64_t>(ops / 20, 16, 16384);
  const uint64_t vmem_units = vmem / (128 * kMiB);
  const uint64_t checkpoint_every = std::max<uint64_t>(ops / 8, 1);
  for (uint64_t op = 0; op < ops; ++op) {
    if (op > 0 && op % checkpoint_every == 0) w.Line("checkpoint");
    uint64_t roll = rng.Below(100);
    if (roll < 80) {  // DMA buffers
      bool share = dma.size() < dma_target ? rng.Chance(65) : rng.Chance(35);
      if (share || dma.empty()) {
        uint8_t bi = static_cast<uint8_t>(rng.Below(2));
        uint64_t len = rng.Between(1, 16) * kPage;
        uint64_t off = place(bi, len, kPage);
        dma.push_back({bi, off, len});
        w.Convert("shared", rams[bi].name, off, len);
      } else {
        size_t k = rng.Below(dma.size());
        Range r = dma[k];
        dma[k] = dma.back();
        dma.pop_back();
        w.Convert("private", rams[r.block].name, r.off, r.len);
      }
    } else if (roll < 90) {  // free-page reporting
      uint8_t bi = static_cast<uint8_t>(rng.Below(2));
      uint64_t len = rng.Between(1, 2) * 2 * kMiB;
      uint64_t off = place(bi, len, 2 * kMiB);
      reported.push_back({bi, off, len});
      w.Convert("discarded", rams[bi].name, off, len);
    } else if (roll < 96) {  // re-accept a reported range, or lazily accept 2 MiB
      if (!reported.empty() && rng.Chance(70)) {
        size_t k = rng.Below(reported.size());
        Range r = reported[k];
        reported[k] = reported.back();
        reported.pop_back();
        w.Convert("private", rams[r.block].name, r.off, r.len);
      } else {
        uint64_t off = lazy_begin + AlignDown(rng.Below(node1 - lazy_begin), 2 * kMiB);
        w.Convert("private", rams[1].name, off, 2 * kMiB);
      }
    } else if (roll < 97) {  // virtio-mem plug or unplug
      uint64_t off = rng.Below(vmem_units) * 128 * kMiB;
      w.Convert(rng.Chance(60) ? "private" : "discarded", "/objects/vmem0", off, 128 * kMiB);
    } else if (roll < 98) {  // a device ring (4-16 pages) shared for good
      uint8_t bi = static_cast<uint8_t>(rng.Below(2));
      uint64_t len = rng.Between(4, 16) * kPage;
      w.Convert("shared", rams[bi].name, place(bi, len, kPage), len);
    } else {  // a balloon inflates by 1-8 MiB
      uint8_t bi = static_cast<uint8_t>(rng.Below(2));
      uint64_t len = rng.Between(1, 8) * kMiB;
      uint64_t off = place(bi, len, kMiB);
      reported.push_back({bi, off, len});
      w.Convert("discarded", rams[bi].name, off, len);
    }
  }
  w.Line("checkpoint");
  return Status::OK();
}

// Boot of a TDX/SNP guest: all memory unaccepted; firmware shares a page,
// the kernel shares SWIOTLB at once and a page per vCPU, then accepts memory
// lazily in 2 MiB units, with some sequential sweeps.
Status Boot(uint64_t size, Rng& rng, uint64_t ops, Writer& w) {
  if (size < 256 * kMiB) return Status::InvalidArgument("profile 'boot' needs --size of at least 256M");
  const uint64_t ram = AlignDown(size, 2 * kMiB);
  w.Line("# boot with lazy accept: memory starts unaccepted (discarded)");
  w.Block("pc.bios", 4 * kMiB, "private");
  w.Block("pc.ram", ram, "discarded");
  w.Convert("shared", "pc.bios", 4 * kMiB - kPage, kPage);
  w.Convert("private", "pc.ram", 0, std::min<uint64_t>(ram / 4, 256 * kMiB));  // early accept
  const uint64_t swiotlb = std::clamp<uint64_t>(AlignDown(ram / 64, 2 * kMiB), 2 * kMiB, 1 * kGiB);
  const uint64_t swiotlb_at = AlignDown(ram / 2, 2 * kMiB);
  w.Convert("private", "pc.ram", swiotlb_at, swiotlb);
  w.Convert("shared", "pc.ram", swiotlb_at, swiotlb);
  const uint64_t vcpus = std::clamp<uint64_t>(ram / (2 * kGiB), 1, 256);
  for (uint64_t i = 0; i < vcpus; ++i) {
    uint64_t off = AlignDown(rng.Below(ram / 4), kPage);
    w.Convert("shared", "pc.ram", off, kPage);
  }
  const uint64_t units = ram / (2 * kMiB);
  for (uint64_t op = 0; op < ops; ++op) {
    if (rng.Chance(2)) {  // a sequential sweep by the accept thread
      uint64_t n = rng.Between(8, 256);
      uint64_t u = rng.Below(units);
      n = std::min(n, units - u);
      w.Convert("private", "pc.ram", u * 2 * kMiB, n * 2 * kMiB);
    } else if (rng.Chance(5)) {  // a driver shares a DMA page
      w.Convert("shared", "pc.ram", AlignDown(rng.Below(ram), kPage), kPage);
    } else {
      w.Convert("private", "pc.ram", rng.Below(units) * 2 * kMiB, 2 * kMiB);
    }
  }
  w.Line("checkpoint");
  return Status::OK();
}

// Worst case: random single pages set to random states.
Status Frag(uint64_t size, Rng& rng, uint64_t ops, Writer& w) {
  if (size < 1 * kMiB) return Status::InvalidArgument("profile 'frag' needs --size of at least 1M");
  const uint64_t ram = AlignDown(size, kPage);
  static const char* kStates[] = {"shared", "private", "discarded"};
  w.Line("# worst-case fragmentation: random single pages");
  w.Block("pc.ram", ram, "private");
  const uint64_t pages = ram / kPage;
  for (uint64_t op = 0; op < ops; ++op) {
    w.Convert(kStates[rng.Below(3)], "pc.ram", rng.Below(pages) * kPage, kPage);
  }
  return Status::OK();
}

// Valid conversions with every kind of invalid line mixed in; each invalid
// line ends with a comment naming its kind.
Status Invalid(uint64_t size, Rng& rng, uint64_t ops, Writer& w) {
  if (size < 16 * kMiB) return Status::InvalidArgument("profile 'invalid' needs --size of at least 16M");
  const uint64_t ram = AlignDown(size, 2 * kMiB);
  w.Line("# invalid lines mixed into a valid workload; each ends with '# invalid: KIND'");
  w.Block("pc.ram", ram, "private");
  w.Line("block huge " + std::to_string(64) + "M page=2M initial=shared");
  static const char* kBad[] = {
      "shared pc.ram 0x800 0x1000 # invalid: unaligned offset",
      "private pc.ram 0x1000 0x800 # invalid: unaligned size",
      "shared pc.ram 0x0 0x0 # invalid: zero size",
      "shared pc.ram 0xfffffffffffff000 0x2000 # invalid: overflow",
      "shared nosuchblock 0x0 0x1000 # invalid: unknown block",
      "block pc.ram 4M # invalid: duplicate block",
      "sharde pc.ram 0x0 0x1000 # invalid: unknown directive",
      "shared pc.ram 0x0 # invalid: missing token",
      "shared pc.ram 0x0 0x1000 extra # invalid: extra token",
      "shared pc.ram 0x10000000000000000 0x1000 # invalid: number too big",
      "block odd 12288 page=12288 # invalid: page size not a power of two",
      "block short 6K # invalid: size not a page multiple",
      "private huge 0x100000 0x200000 # invalid: unaligned for a 2M page",
      "block empty 0 # invalid: zero-size block",
      "block s 1M initial=secret # invalid: bad state",
      "shared pc.ram 0x-1 0x1000 # invalid: bad number",
      "block tiny 1M page=2048 # invalid: page too small",
      "block bad@name 1M # invalid: bad name",
      "block big 99999999999T # invalid: suffix overflow",
      "block opt 1M colour=red # invalid: unknown option",
      "block twice 1M page=4K page=4K # invalid: option twice",
      "checkpoint now # invalid: extra token",
      "shared pc.ram 0x0 4k # invalid: lower-case suffix",
      "shared pc.ram 0x 0x1000 # invalid: empty hex",
      "block gigantic 1M page=2G # invalid: page too big",
  };
  const size_t nbad = sizeof(kBad) / sizeof(kBad[0]);
  const uint64_t pages = ram / kPage;
  static const char* kStates[] = {"shared", "private", "discarded"};
  for (uint64_t op = 0; op < ops; ++op) {
    if (op < nbad || rng.Chance(20)) {
      w.Line(kBad[op < nbad ? op : rng.Below(nbad)]);
    } else {
      uint64_t p = rng.Below(pages);
      uint64_t n = std::min<uint64_t>(rng.Between(1, 64), pages - p);
      w.Convert(kStates[rng.Below(3)], "pc.ram", p * kPage, n * kPage);
    }
  }
  return Status::OK();
}

}  // namespace

const std::vector<ProfileInfo>& WorkloadProfiles() {
  static const std::vector<ProfileInfo> kProfiles = {
      {"boot", "boot with lazy accept in 2 MiB units, firmware, SWIOTLB and per-vCPU shared pages"},
      {"steady", "a running guest: DMA churn, free-page reporting, lazy accept, virtio-mem unplug"},
      {"frag", "worst case: random single pages in random states"},
      {"invalid", "valid conversions mixed with every kind of invalid line"},
  };
  return kProfiles;
}

Status GenerateWorkload(const std::string& profile, uint64_t size, uint64_t seed, uint64_t ops,
                        std::string* out, const FlushFn& flush) {
  Rng rng(seed);
  out->append("# cvmstate gen --profile " + profile + " --size " + std::to_string(size) + " --seed " +
              std::to_string(seed) + " --ops " + std::to_string(ops) + "\n");
  Writer w(out, flush);
  if (profile == "steady") return Steady(size, rng, ops, w);
  if (profile == "boot") return Boot(size, rng, ops, w);
  if (profile == "frag") return Frag(size, rng, ops, w);
  if (profile == "invalid") return Invalid(size, rng, ops, w);
  std::string names;
  for (const auto& p : WorkloadProfiles()) names += std::string(names.empty() ? "" : ", ") + p.name;
  return Status::InvalidArgument("unknown profile '" + profile + "' (known: " + names + ")");
}

}  // namespace cvmstate::tools
