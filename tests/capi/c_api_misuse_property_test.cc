// The C API under a seeded random sequence of calls over two vms, misuse
// included (NULLs, unknown blocks, bad states, out-of-range and unaligned
// ranges, granularities the state breaks, refusing listeners, handles
// unregistered twice or through the other vm), checked after every call
// against an independent model: per-page states of each block, and per
// listener the pages it must hold mapped (DMA: shared) or private
// (attributes). A refused call must change nothing; an accepted one exactly
// its job; listeners see every change of their section and nothing else.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cvmstate/cvmstate.h"

namespace {

constexpr int kRefusal = -EBUSY;  // what a refusing listener returns

struct BlockModel {
  std::string name;
  uint64_t page;  // page size
  std::vector<uint8_t> st;
  uint64_t bytes() const { return st.size() * page; }
};

struct ListenerModel {
  bool dma = true;
  bool double_discard = false;
  int vm = 0;
  size_t block = 0;
  uint64_t page = 4096, begin = 0, end = 0, gran = 0;  // section [begin, end), bytes
  std::vector<uint8_t> held;  // per page of the block: mapped (DMA) or private (attributes)
  bool refuse = false;        // refuse every refusable call of this step
  int violations = 0;         // calls the protocol forbids
  std::string why;
  long calls = 0;

  void Bad(const std::string& w) {
    ++violations;
    if (why.empty()) why = w;
  }
  bool Tracks(uint8_t state) const {
    return dma ? state == CVMSTATE_SHARED : state == CVMSTATE_PRIVATE;
  }
  int Set(uint64_t off, uint64_t size, bool on) {
    ++calls;
    if (on && refuse) return kRefusal;
    if (size == 0 || off < begin || off + size > end) Bad("call outside the section");
    if (off % gran != 0 || size % gran != 0) Bad("call not aligned to the granularity");
    for (uint64_t p = off / page; p < (off + size) / page && p < held.size(); ++p) {
      if (on && held[p]) Bad("populated twice");
      if (!on && !held[p] && !(dma && double_discard)) Bad("discarded unpopulated");
      held[p] = on;
    }
    return 0;
  }
  static int On(void* o, uint64_t off, uint64_t size) {
    return static_cast<ListenerModel*>(o)->Set(off, size, true);
  }
  static void Off(void* o, uint64_t off, uint64_t size) {
    static_cast<ListenerModel*>(o)->Set(off, size, false);
  }
};

struct Live {
  cvmstate_listener* handle;
  ListenerModel* model;
};

struct Harness {
  std::mt19937_64 rng;
  cvmstate_vm* vms[2] = {nullptr, nullptr};
  std::vector<BlockModel> blocks[2];
  std::deque<std::unique_ptr<ListenerModel>>
      models;  // every listener ever made (opaque pointers stay valid)
  std::vector<Live> live[2];
  std::vector<cvmstate_listener*> stale;  // unregistered handles (freed)
  long accepted = 0, refused = 0;
  // How often each interesting outcome happened (per seed).
  long registered = 0, listener_refusals = 0, granularity_refusals = 0, foreign_or_freed = 0,
       withdrawn = 0;

  explicit Harness(uint64_t seed) : rng(seed) {}
  uint64_t R(uint64_t n) { return n == 0 ? 0 : rng() % n; }
  bool P(int percent) { return static_cast<int>(R(100)) < percent; }

  // The live listener `h` of vm v, or nullptr.
  Live* Find(int v, cvmstate_listener* h) {
    for (Live& l : live[v]) {
      if (l.handle == h) return &l;
    }
    return nullptr;
  }

  // Bytes [a, b) of block bm, all aligned to the view of listener m: every
  // maximal run it tracks inside [a, b) starts and ends on its granularity.
  static bool StateAligned(const BlockModel& bm, const ListenerModel& m) {
    for (uint64_t p = m.begin / bm.page; p < m.end / bm.page; ++p) {
      const bool in = m.Tracks(bm.st[p]);
      const bool prev = p > m.begin / bm.page && m.Tracks(bm.st[p - 1]);
      if (in != prev && (p * bm.page) % m.gran != 0) return false;
    }
    return true;
  }

  void ExpectMessage(int rc) {
    if (rc >= 0) return;
    const std::string e = cvmstate_last_error();
    ASSERT_FALSE(e.empty()) << "rc " << rc << " without a message";
    ASSERT_EQ(e.find('\n'), std::string::npos) << e;
  }

  // Everything the model says, checked through the API and the listeners.
  void Check(const std::string& what) {
    for (int v = 0; v < 2; ++v) {
      for (const BlockModel& bm : blocks[v]) {
        std::vector<uint8_t> got(bm.st.size(), 0xff);
        struct Ctx {
          std::vector<uint8_t>* got;
          uint64_t page, next;
          int last;
          bool ok;
        } ctx{&got, bm.page, 0, -1, true};
        const int rc = cvmstate_for_each_run(
            vms[v], bm.name.c_str(), 0, bm.bytes(), -1,
            [](void* o, uint64_t off, uint64_t size, int state) {
              Ctx* c = static_cast<Ctx*>(o);
              if (off != c->next || state == c->last || size == 0)
                c->ok = false;  // contiguous, maximal
              for (uint64_t p = off / c->page; p < (off + size) / c->page; ++p)
                (*c->got)[p] = static_cast<uint8_t>(state);
              c->next = off + size;
              c->last = state;
              return 0;
            },
            &ctx);
        ASSERT_EQ(rc, 0) << what << ": " << cvmstate_last_error();
        ASSERT_TRUE(ctx.ok && ctx.next == bm.bytes())
            << what << ": runs not maximal or not covering";
        ASSERT_EQ(got, bm.st) << what << ": vm " << v << " block " << bm.name;
        // One state at a time: exactly the pages in it, in maximal runs.
        for (int s = 0; s < 3; ++s) {
          struct OfCtx {
            std::vector<uint8_t> seen;
            uint64_t page, next;
            int state;
            bool ok;
          } of{std::vector<uint8_t>(bm.st.size(), 0), bm.page, 0, s, true};
          const int rc_of = cvmstate_for_each_run(
              vms[v], bm.name.c_str(), 0, bm.bytes(), s,
              [](void* o, uint64_t off, uint64_t size, int state) {
                OfCtx* c = static_cast<OfCtx*>(o);
                if (state != c->state || size == 0 || (c->next != 0 && off <= c->next)) c->ok = false;
                for (uint64_t p = off / c->page; p < (off + size) / c->page; ++p) c->seen[p] = 1;
                c->next = off + size;
                return 0;
              },
              &of);
          ASSERT_EQ(rc_of, 0) << what << ": " << cvmstate_last_error();
          ASSERT_TRUE(of.ok) << what << ": runs of state " << s << " not ascending, maximal and in it";
          for (size_t p = 0; p < bm.st.size(); ++p) {
            ASSERT_EQ(of.seen[p], bm.st[p] == s ? 1 : 0) << what << ": state " << s << " page " << p;
          }
        }
      }
      for (const Live& l : live[v]) {
        const ListenerModel& m = *l.model;
        const BlockModel& bm = blocks[v][m.block];
        ASSERT_EQ(m.violations, 0) << what << ": " << m.why;
        for (uint64_t p = 0; p < bm.st.size(); ++p) {
          const uint64_t off = p * bm.page;
          const bool want = off >= m.begin && off < m.end && m.Tracks(bm.st[p]);
          ASSERT_EQ(m.held[p] != 0, want)
              << what << ": listener (" << (m.dma ? "dma" : "attr") << ") page " << p;
        }
      }
    }
  }

  // A range in pages of bm, usually aligned to `unit` pages, sometimes
  // misused.
  void PickRange(const BlockModel& bm, uint64_t* off, uint64_t* size) {
    const uint64_t pages = bm.st.size();
    const uint64_t unit = uint64_t{1} << R(4);
    const uint64_t a = R(pages / unit) * unit;
    const uint64_t n = (1 + R(std::max<uint64_t>(1, (pages - a) / unit))) * unit;
    *off = a * bm.page;
    *size = std::min(n, pages - a) * bm.page;
    const int k = static_cast<int>(R(100));
    if (k < 5)
      *off += 1 + R(bm.page - 1);  // unaligned offset
    else if (k < 8)
      *size += 1 + R(bm.page - 1);  // unaligned size
    else if (k < 11)
      *size = 0;  // empty
    else if (k < 14)
      *size += bm.page * (1 + R(4));  // past the end
    else if (k < 16)
      *off = ~uint64_t{0} - bm.page + 1;  // overflow
  }

  // The model's verdict of a range: 0 or -EINVAL.
  static int RangeRc(const BlockModel& bm, uint64_t off, uint64_t size) {
    if (size == 0 || off % bm.page != 0 || size % bm.page != 0) return -EINVAL;
    if (off + size < off || off + size > bm.bytes()) return -EINVAL;
    return 0;
  }

  void Convert(int v) {
    const size_t bi = R(blocks[v].size());
    BlockModel& bm = blocks[v][bi];
    uint64_t off, size;
    PickRange(bm, &off, &size);
    int state = static_cast<int>(R(3));
    const char* name = bm.name.c_str();
    cvmstate_vm* vm = vms[v];
    int want = 0;
    const int k = static_cast<int>(R(100));
    if (k < 2)
      vm = nullptr, want = -EINVAL;
    else if (k < 4)
      name = nullptr, want = -EINVAL;
    else if (k < 6)
      name = "nosuch", want = -ENOENT;
    else if (k < 8)
      state = (k & 1) ? -1 : 3, want = -EINVAL;
    if (want == 0) want = RangeRc(bm, off, size);
    std::vector<ListenerModel*> mine;
    for (Live& l : live[v]) {
      if (l.model->block == bi) mine.push_back(l.model);
    }
    if (want == 0) {
      for (ListenerModel* m : mine) {
        if (m->begin >= off + size || m->end <= off) continue;
        const uint64_t a = std::max(off, m->begin), b = std::min(off + size, m->end);
        if (a % m->gran != 0 || b % m->gran != 0) want = -EINVAL;
      }
    }
    for (ListenerModel* m : mine) m->refuse = P(10);
    if (want == 0) {
      // A listener refuses if it would be told to start tracking a page.
      for (ListenerModel* m : mine) {
        if (!m->refuse || !m->Tracks(static_cast<uint8_t>(state))) continue;
        for (uint64_t p = std::max(off, m->begin) / bm.page;
             p < std::min(off + size, m->end) / bm.page; ++p) {
          if (!m->Tracks(bm.st[p])) want = kRefusal;
        }
      }
    }
    const int rc = cvmstate_convert(vm, name, off, size, state);
    for (ListenerModel* m : mine) m->refuse = false;
    const std::string what = "convert vm " + std::to_string(v) + " " + bm.name + " " +
                             std::to_string(off) + "+" + std::to_string(size) + " to " +
                             std::to_string(state);
    ASSERT_EQ(rc, want) << what << ": " << cvmstate_last_error();
    ExpectMessage(rc);
    if (rc == kRefusal) ++listener_refusals;
    if (rc == -EINVAL &&
        std::string(cvmstate_last_error()).find("granularity") != std::string::npos) {
      ++granularity_refusals;
    }
    if (rc == 0) {
      std::fill(bm.st.begin() + off / bm.page, bm.st.begin() + (off + size) / bm.page,
                static_cast<uint8_t>(state));
    }
    (rc == 0 ? accepted : refused)++;
    Check(what);
  }

  void Register(int v) {
    const size_t bi = R(blocks[v].size());
    const BlockModel& bm = blocks[v][bi];
    auto m = std::make_unique<ListenerModel>();
    m->dma = P(60);
    m->double_discard = P(50);
    m->vm = v;
    m->block = bi;
    m->page = bm.page;
    m->held.assign(bm.st.size(), 0);
    const uint64_t gchoice[] = {0,           bm.page,     2 * bm.page, 4 * bm.page,
                                8 * bm.page, 3 * bm.page, bm.page / 2};
    const uint64_t g = gchoice[R(P(90) ? 5 : 7)];
    const uint64_t eg = g == 0 ? bm.page : g;
    uint64_t off, size;
    if (P(85) && eg % bm.page == 0 && eg >= bm.page) {
      const uint64_t units = bm.bytes() / eg;
      const uint64_t a = R(units);
      off = a * eg;
      size = (1 + R(units - a)) * eg;
    } else {
      PickRange(bm, &off, &size);
    }
    m->begin = off;
    m->end = off + size;
    m->gran = eg;
    const char* name = bm.name.c_str();
    cvmstate_vm* vm = vms[v];
    bool null_ops = false, null_out = false;
    int want = 0;
    const int k = static_cast<int>(R(100));
    if (k < 2)
      vm = nullptr, want = -EINVAL;
    else if (k < 4)
      name = nullptr, want = -EINVAL;
    else if (k < 6)
      name = "nosuch", want = -ENOENT;
    else if (k < 7)
      null_ops = true, want = -EINVAL;
    else if (k < 8)
      null_out = true, want = -EINVAL;
    if (want == 0) want = RangeRc(bm, off, size);
    if (want == 0 && (eg < bm.page || (eg & (eg - 1)) != 0)) want = -EINVAL;
    if (want == 0 && (off % eg != 0 || size % eg != 0)) want = -EINVAL;
    if (want == 0 && !StateAligned(bm, *m)) want = -EINVAL;
    m->refuse = P(15);
    if (want == 0 && m->refuse) {
      for (uint64_t p = off / bm.page; p < (off + size) / bm.page; ++p) {
        if (m->Tracks(bm.st[p])) want = kRefusal;
      }
    }
    cvmstate_listener* out = nullptr;
    int rc;
    if (m->dma) {
      const cvmstate_dma_ops ops = {ListenerModel::On, ListenerModel::Off, g,
                                    m->double_discard ? 1 : 0};
      rc = cvmstate_register_dma_listener(vm, name, off, size, null_ops ? nullptr : &ops, m.get(),
                                          null_out ? nullptr : &out);
    } else {
      const cvmstate_attr_ops ops = {ListenerModel::On, ListenerModel::Off, g};
      rc = cvmstate_register_attr_listener(vm, name, off, size, null_ops ? nullptr : &ops, m.get(),
                                           null_out ? nullptr : &out);
    }
    m->refuse = false;
    const std::string what = std::string("register ") + (m->dma ? "dma" : "attr") + " vm " +
                             std::to_string(v) + " " + bm.name + " " + std::to_string(off) + "+" +
                             std::to_string(size) + " g " + std::to_string(g);
    ASSERT_EQ(rc, want) << what << ": " << cvmstate_last_error();
    ExpectMessage(rc);
    if (rc == kRefusal) ++listener_refusals;
    if (rc == -EINVAL &&
        std::string(cvmstate_last_error()).find("granularity") != std::string::npos) {
      ++granularity_refusals;
    }
    if (rc == 0) {
      ++registered;
      ASSERT_NE(out, nullptr);
      live[v].push_back({out, m.get()});
    } else {
      ASSERT_EQ(out, nullptr) << what;
      ASSERT_EQ(std::count(m->held.begin(), m->held.end(), 1), 0)
          << what << ": left notified after a failure";
      ASSERT_EQ(m->violations, 0) << what << ": " << m->why;
    }
    models.push_back(std::move(m));
    (rc == 0 ? accepted : refused)++;
    Check(what);
  }

  void Unregister(int v) {
    // A live handle of either vm, or a freed one; through vm v (or NULL).
    cvmstate_listener* h = nullptr;
    const int k = static_cast<int>(R(100));
    const int other = 1 - v;
    if (k < 55 && !live[v].empty())
      h = live[v][R(live[v].size())].handle;
    else if (k < 75 && !live[other].empty())
      h = live[other][R(live[other].size())].handle;
    else if (!stale.empty())
      h = stale[R(stale.size())];
    else if (!live[v].empty())
      h = live[v][R(live[v].size())].handle;
    cvmstate_vm* vm = P(3) ? nullptr : vms[v];
    std::vector<long> calls;
    for (const auto& m : models) calls.push_back(m->calls);
    Live* l = Find(v, h);
    const int want = vm == nullptr || h == nullptr ? -EINVAL : l != nullptr ? 0 : -ENOENT;
    const int rc = cvmstate_unregister_listener(vm, h);
    const std::string what = "unregister through vm " + std::to_string(v);
    ASSERT_EQ(rc, want) << what << ": " << cvmstate_last_error();
    ExpectMessage(rc);
    if (rc == -ENOENT) ++foreign_or_freed;
    if (rc == 0) {
      ++withdrawn;
      ListenerModel* m = l->model;
      ASSERT_EQ(m->violations, 0) << what << ": " << m->why;
      ASSERT_EQ(std::count(m->held.begin(), m->held.end(), 1), 0)
          << what << ": section not withdrawn";
      live[v].erase(live[v].begin() + (l - live[v].data()));
      stale.push_back(h);
    } else {
      // Nothing was told anything.
      for (size_t i = 0; i < models.size(); ++i) ASSERT_EQ(models[i]->calls, calls[i]) << what;
    }
    // A freed address the allocator hands out again is live again.
    std::erase_if(stale, [&](cvmstate_listener* s) {
      return Find(0, s) != nullptr || Find(1, s) != nullptr;
    });
    (rc == 0 ? accepted : refused)++;
    Check(what);
  }

  void ForEachRun(int v) {
    const BlockModel& bm = blocks[v][R(blocks[v].size())];
    uint64_t off = R(bm.bytes() + 1), size = R(bm.bytes() - off + 1);
    if (P(5)) size = bm.bytes() - off + 1 + R(100);  // past the end
    const int state = static_cast<int>(R(4)) - 1;
    const long stop_at = P(30) ? 1 + static_cast<long>(R(4)) : -1;
    struct Ctx {
      std::vector<std::vector<uint64_t>> got;
      long stop_at;
    } ctx{{}, stop_at};
    const int rc = cvmstate_for_each_run(
        vms[v], bm.name.c_str(), off, size, state,
        [](void* o, uint64_t a, uint64_t n, int s) {
          Ctx* c = static_cast<Ctx*>(o);
          c->got.push_back({a, n, static_cast<uint64_t>(s)});
          return static_cast<long>(c->got.size()) == c->stop_at ? 7 : 0;
        },
        &ctx);
    const std::string what =
        "for_each_run " + bm.name + " " + std::to_string(off) + "+" + std::to_string(size);
    if (off > bm.bytes() || size > bm.bytes() - off) {
      ASSERT_EQ(rc, -EINVAL) << what;
      ASSERT_TRUE(ctx.got.empty());
      return;
    }
    // The model's runs, clipped to [off, off+size) exactly.
    std::vector<std::vector<uint64_t>> want;
    const uint64_t end = off + size;
    uint64_t a = off;
    while (a < end) {
      const uint8_t s = bm.st[a / bm.page];
      uint64_t b = (a / bm.page + 1) * bm.page;
      while (b < end && bm.st[b / bm.page] == s) b += bm.page;
      b = std::min(b, end);
      if (state == -1 || s == state) want.push_back({a, b - a, s});
      a = b;
    }
    int want_rc = 0;
    if (stop_at > 0 && static_cast<long>(want.size()) >= stop_at) {
      want.resize(static_cast<size_t>(stop_at));
      want_rc = 7;
    }
    ASSERT_EQ(rc, want_rc) << what << ": " << cvmstate_last_error();
    ASSERT_EQ(ctx.got, want) << what;
  }

  // cvmstate_get_runs over the same kind of range, resumed a buffer at a
  // time until it says no more remain: exactly for_each_run's runs of the
  // state, whatever the buffer's size.
  void GetRuns(int v) {
    const BlockModel& bm = blocks[v][R(blocks[v].size())];
    uint64_t off = R(bm.bytes() + 1), size = R(bm.bytes() - off + 1);
    if (P(5)) size = bm.bytes() - off + 1 + R(100);  // past the end
    const int state = P(10) ? (P(50) ? -1 : 3) : static_cast<int>(R(3));
    const size_t capacity = P(5) ? 0 : 1 + R(P(50) ? 3 : 300);
    const std::string what = "get_runs " + bm.name + " " + std::to_string(off) + "+" + std::to_string(size) +
                             " state " + std::to_string(state) + " capacity " + std::to_string(capacity);
    std::vector<cvmstate_range> buf(capacity + 1, cvmstate_range{7, 7});
    size_t n = 99;
    int rc = cvmstate_get_runs(vms[v], bm.name.c_str(), off, size, state, buf.data(), capacity, &n);
    if (off > bm.bytes() || size > bm.bytes() - off || state < 0 || state > 2 || capacity == 0) {
      ASSERT_EQ(rc, -EINVAL) << what;
      ASSERT_EQ(n, 0u) << what;
      ExpectMessage(rc);
      for (const cvmstate_range& r : buf) ASSERT_TRUE(r.offset == 7 && r.size == 7) << what << ": wrote on error";
      return;
    }
    std::vector<std::vector<uint64_t>> want, got;
    const uint64_t end = off + size;
    for (uint64_t a = off; a < end;) {
      const uint8_t s = bm.st[a / bm.page];
      uint64_t b = (a / bm.page + 1) * bm.page;
      while (b < end && bm.st[b / bm.page] == s) b += bm.page;
      b = std::min(b, end);
      if (s == state) want.push_back({a, b - a, s});
      a = b;
    }
    for (int calls = 0;; ++calls) {
      ASSERT_TRUE(rc == 0 || rc == 1) << what << ": " << rc << " " << cvmstate_last_error();
      ASSERT_LE(n, capacity) << what;
      ASSERT_TRUE(buf[capacity].offset == 7 && buf[capacity].size == 7) << what << ": wrote past capacity";
      // More remain only with the buffer full.
      if (rc == 1) {
        ASSERT_EQ(n, capacity) << what;
      }
      for (size_t i = 0; i < n; ++i) got.push_back({buf[i].offset, buf[i].size, static_cast<uint64_t>(state)});
      if (rc == 0) break;
      ASSERT_LT(got.size(), want.size()) << what << ": says more remain after the last run";
      ASSERT_LE(calls, static_cast<int>(want.size())) << what << ": does not end";
      const uint64_t next = buf[n - 1].offset + buf[n - 1].size;
      rc = cvmstate_get_runs(vms[v], bm.name.c_str(), next, end - next, state, buf.data(), capacity, &n);
    }
    ASSERT_EQ(got, want) << what;
  }

  void Misc(int v) {
    const BlockModel& bm = blocks[v][R(blocks[v].size())];
    const int k = static_cast<int>(R(8));
    int rc = 0, want = 0;
    if (k == 0) {
      const uint64_t off = R(bm.bytes() + bm.page);
      rc = cvmstate_state_at(vms[v], bm.name.c_str(), off);
      want = off < bm.bytes() ? bm.st[off / bm.page] : -EINVAL;
    } else if (k == 1) {
      rc = cvmstate_state_at(P(50) ? nullptr : vms[v], P(50) ? nullptr : "nosuch", 0);
      want = rc == -ENOENT ? -ENOENT : -EINVAL;
      ASSERT_TRUE(rc == -EINVAL || rc == -ENOENT);
    } else if (k == 2) {
      // Adding a block that exists, or with a bad name (the model's blocks
      // stay as they are).
      const char* names[] = {bm.name.c_str(), "bad\nname", "", nullptr};
      const int i = static_cast<int>(R(4));
      rc = cvmstate_vm_add_block(vms[v], names[i], 1 << 20, 4096, CVMSTATE_SHARED);
      want = i == 0 ? -EEXIST : -EINVAL;
    } else if (k == 3) {
      rc = cvmstate_vm_add_block(vms[v], "fresh", 1 << 20, 4096, P(50) ? 3 : -1);
      want = -EINVAL;
    } else if (k == 4) {
      uint64_t d = 0;
      rc = cvmstate_vm_digest(P(50) ? nullptr : vms[v], P(50) ? nullptr : &d);
      want = rc == 0 ? 0 : -EINVAL;
    } else if (k == 5) {
      rc = cvmstate_for_each_run(vms[v], bm.name.c_str(), 0, bm.page, P(50) ? 5 : -1, nullptr,
                                 nullptr);
      want = -EINVAL;
    } else if (k == 6) {
      // v1: the range's one state or mixed, against the model's pages.
      const uint64_t off = R(bm.bytes() + 1), size = R(bm.bytes() - off + 2);
      int state = -2;
      rc = cvmstate_range_state(vms[v], bm.name.c_str(), off, size, &state);
      if (size == 0 || size > bm.bytes() - off) {
        want = -EINVAL;
      } else {
        int expect = -1;
        for (uint64_t p = off / bm.page; p <= (off + size - 1) / bm.page; ++p) {
          expect = expect == -1 || expect == bm.st[p] ? static_cast<int>(bm.st[p]) : static_cast<int>(CVMSTATE_MIXED);
        }
        ASSERT_EQ(state, expect) << bm.name << " " << off << "+" << size;
      }
    } else {
      // v1: every block's bytes in each state, against the model.
      uint32_t count = 0;
      ASSERT_EQ(cvmstate_vm_block_count(vms[v], &count), 0);
      ASSERT_EQ(count, blocks[v].size());
      const uint32_t index = static_cast<uint32_t>(R(count + 1));
      cvmstate_block_info info{};
      info.struct_size = sizeof info;
      rc = cvmstate_vm_block_info(vms[v], index, &info);
      if (index == count) {
        want = -ENOENT;
      } else {
        const BlockModel& b = blocks[v][index];
        uint64_t bytes[3] = {0, 0, 0};
        for (uint8_t st : b.st) bytes[st] += b.page;
        ASSERT_EQ(std::string(info.name), b.name);
        ASSERT_EQ(info.size, b.bytes());
        for (int st = 0; st < 3; ++st) ASSERT_EQ(info.bytes[st], bytes[st]) << b.name << " state " << st;
      }
    }
    ASSERT_EQ(rc, want) << "misc " << k << ": " << cvmstate_last_error();
    ExpectMessage(rc);
    Check("misc " + std::to_string(k));
  }

  void Run(int steps) {
    for (int v = 0; v < 2; ++v) {
      vms[v] = cvmstate_vm_new();
      ASSERT_NE(vms[v], nullptr);
      blocks[v] = {{"r0", 4096, std::vector<uint8_t>(64, CVMSTATE_PRIVATE)},
                   {"r1", 8192, std::vector<uint8_t>(32, CVMSTATE_SHARED)}};
      for (const BlockModel& bm : blocks[v]) {
        ASSERT_EQ(cvmstate_vm_add_block(vms[v], bm.name.c_str(), bm.bytes(), bm.page, bm.st[0]), 0);
      }
    }
    for (int step = 0; step < steps && !::testing::Test::HasFatalFailure(); ++step) {
      const int v = static_cast<int>(R(2));
      const int k = static_cast<int>(R(100));
      SCOPED_TRACE("step " + std::to_string(step));
      if (k < 45)
        Convert(v);
      else if (k < 60)
        Register(v);
      else if (k < 75)
        Unregister(v);
      else if (k < 84)
        ForEachRun(v);
      else if (k < 90)
        GetRuns(v);
      else
        Misc(v);
    }
    // The rest die with their vms.
    for (int v = 0; v < 2; ++v) cvmstate_vm_free(vms[v]);
  }
};

TEST(CApiMisusePropertyTest, RandomCallsAgainstAModel) {
  long accepted = 0, refused = 0;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Harness h(seed);
    h.Run(2000);
    if (HasFatalFailure()) return;
    accepted += h.accepted;
    refused += h.refused;
    std::printf(
        "seed %llu: %ld accepted, %ld refused; %ld registered, %ld withdrawn, %ld listener "
        "refusals, "
        "%ld granularity refusals, %ld foreign or freed handles\n",
        static_cast<unsigned long long>(seed), h.accepted, h.refused, h.registered, h.withdrawn,
        h.listener_refusals, h.granularity_refusals, h.foreign_or_freed);
    EXPECT_GT(h.registered, 20);
    EXPECT_GT(h.listener_refusals, 5);
    EXPECT_GT(h.granularity_refusals, 5);
    EXPECT_GT(h.foreign_or_freed, 20);
  }
  // The sequence exercised both sides.
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(refused, 1000);
}

}  // namespace
