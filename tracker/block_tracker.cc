#include "tracker/block_tracker.h"

#include <algorithm>
#include <bit>

#include "tracker/format.h"
#include "tracker/names.h"

namespace cvmstate {
Result<std::unique_ptr<BlockTracker>> BlockTracker::Create(std::string name, uint64_t size,
                                                           uint64_t page_size, PageState initial,
                                                           unsigned chunk_shift) {
  if (!IsValidBlockName(name)) {
    return Status::InvalidArgument("invalid block name " + Quoted(name) + " (" + kBlockNameRule + ")");
  }
  if (!std::has_single_bit(page_size) || page_size < kMinPageSize || page_size > kMaxPageSize) {
    return Status::InvalidArgument("page size " + Hex(page_size) +
                                   " of block '" + name + "' is not a power of two from 4K to 1G");
  }
  if (size == 0) return Status::InvalidArgument("block '" + name + "' has size 0");
  if (size % page_size != 0) {
    return Status::InvalidArgument("size " + Hex(size) + " of block '" + name +
                                   "' is not a multiple of its page size " + Hex(page_size));
  }
  return std::unique_ptr<BlockTracker>(
      new BlockTracker(std::move(name), size, page_size, initial, chunk_shift));
}

BlockTracker::BlockTracker(std::string name, uint64_t size, uint64_t page_size, PageState initial,
                           unsigned chunk_shift)
    : name_(std::move(name)),
      size_(size),
      page_size_(page_size),
      page_shift_(static_cast<unsigned>(std::countr_zero(page_size))),
      initial_(initial),
      map_(size >> page_shift_, initial, chunk_shift) {
  pages_in_[static_cast<int>(initial)] = size >> page_shift_;
}

Status BlockTracker::ValidateRange(uint64_t offset, uint64_t size) const {
  if (size == 0) return Status::InvalidArgument("empty range (size 0) in block '" + name_ + "'");
  const uint64_t mask = page_size_ - 1;
  if (offset & mask) {
    return Status::InvalidArgument("offset " + Hex(offset) + " is not a multiple of the page size " +
                                   Hex(page_size_) + " of block '" + name_ + "'");
  }
  if (size & mask) {
    return Status::InvalidArgument("size " + Hex(size) + " is not a multiple of the page size " +
                                   Hex(page_size_) + " of block '" + name_ + "'");
  }
  if (offset + size < offset) {
    return Status::InvalidArgument("range " + Hex(offset) + "+" + Hex(size) + " overflows 64 bits");
  }
  if (offset + size > size_) {
    return Status::InvalidArgument("range [" + Hex(offset) + ", " + Hex(offset + size) +
                                   ") ends past the end of block '" + name_ + "' (size " + Hex(size_) +
                                   ")");
  }
  return Status::OK();
}

Status BlockTracker::Convert(uint64_t offset, uint64_t size, PageState state) {
  Status s = ValidateRange(offset, size);
  if (!s.ok()) return s;
  const uint64_t end = offset + size;
  // Scratch kept between calls: a conversion allocates nothing once the
  // vectors have grown (listeners never call back in, so none is in use).
  std::vector<ByteRun>& changed = scratch_changed_;
  changed.clear();
  std::vector<std::vector<Change>>& per = scratch_per_;
  if (per.size() != listeners_.size()) per.resize(listeners_.size());
  for (auto& v : per) v.clear();
  if (!listeners_.empty()) {
    for (const Registration& r : listeners_) {
      if (r.offset >= end || r.offset + r.size <= offset) continue;
      // Only the part inside the section matters: the listener never sees
      // the rest, and the section itself is aligned to the granularity.
      const uint64_t a = std::max(offset, r.offset), b = std::min(end, r.offset + r.size);
      if (((a | b) & (r.granularity - 1)) != 0) {  // a power of two (RegisterListener)
        return Status::InvalidArgument("conversion [" + Hex(offset) + ", " + Hex(end) + ") of block '" + name_ +
                                       "' is not aligned, in [" + Hex(a) + ", " + Hex(b) + "), to the " +
                                       Hex(r.granularity) + " granularity of listener '" + r.listener->name() + "'");
      }
    }
    ForEachRun(offset, size, [&](const ByteRun& r) {
      if (r.state != state) changed.push_back(r);
      return true;
    });
    if (changed.empty()) return Status::OK();
    for (size_t i = 0; i < listeners_.size(); ++i) Project(listeners_[i], changed, state, &per[i]);
    // Refusable notifications first, while the map is unchanged.
    std::vector<std::vector<Change>>& accepted = scratch_accepted_;
    if (accepted.size() != listeners_.size()) accepted.resize(listeners_.size());
    for (auto& v : accepted) v.clear();
    for (size_t i = 0; i < listeners_.size(); ++i) {
      StateListener* l = listeners_[i].listener;
      for (const Change& c : per[i]) {
        if (!l->MayRefuse(c.from, c.to)) continue;
        Status st = l->OnChange(c.offset, c.size, c.from, c.to);
        if (st.ok()) {
          accepted[i].push_back(c);
          continue;
        }
        for (size_t k = i + 1; k-- > 0;) Undo(listeners_[k].listener, accepted[k], accepted[k].size());
        return Status::Refused("listener '" + l->name() + "' refused converting [" + Hex(c.offset) + ", " +
                               Hex(c.offset + c.size) + ") of block '" + name_ + "' to " +
                               std::string(PageStateName(state)) + ": " + st.message());
      }
    }
  }
  StateCounts moved{};
  map_.Assign(offset >> page_shift_, end >> page_shift_, state, &moved);
  uint64_t total = 0;
  for (int k = 0; k < kNumPageStates; ++k) {
    pages_in_[k] -= moved[k];
    total += moved[k];
  }
  pages_in_[static_cast<int>(state)] += total;
  // Then the notifications that cannot fail.
  for (size_t i = 0; i < listeners_.size(); ++i) {
    StateListener* l = listeners_[i].listener;
    for (const Change& c : per[i]) {
      if (!l->MayRefuse(c.from, c.to)) (void)l->OnChange(c.offset, c.size, c.from, c.to);
    }
  }
  if (journal_enabled_ && total > 0) {
    if (changed.empty()) {
      journal_.Record(offset >> page_shift_, end >> page_shift_);
    } else {
      for (const ByteRun& r : changed) journal_.Record(r.offset >> page_shift_, (r.offset + r.length) >> page_shift_);
    }
  }
  return Status::OK();
}

void BlockTracker::Project(const Registration& r, const std::vector<ByteRun>& changed, PageState to,
                           std::vector<Change>* out) {
  const uint64_t sb = r.offset, se = r.offset + r.size;
  StateListener* l = r.listener;
  const int vto = l->View(to);
  for (const ByteRun& run : changed) {
    const uint64_t a = std::max(run.offset, sb), b = std::min(run.offset + run.length, se);
    if (a >= b || l->View(run.state) == vto) continue;
    if (!out->empty()) {
      Change& last = out->back();
      if (last.offset + last.size == a && l->View(last.from) == l->View(run.state)) {
        last.size += b - a;
        continue;
      }
    }
    out->push_back({a, b - a, run.state, to});
  }
}

void BlockTracker::Undo(StateListener* l, const std::vector<Change>& accepted, size_t n) {
  // The inverse of an accepted change must succeed; its status is moot.
  for (size_t k = n; k-- > 0;) (void)l->OnChange(accepted[k].offset, accepted[k].size, accepted[k].to, accepted[k].from);
}

template <typename Fn>
void BlockTracker::ForEachVisibleRun(const StateListener& l, uint64_t offset, uint64_t size, Fn&& fn) const {
  const int vnone = l.View(PageState::kDiscarded);
  const bool shared = l.View(PageState::kShared) != vnone, priv = l.View(PageState::kPrivate) != vnone;
  if (shared != priv) {
    // DMA and attribute listeners: the runs of one state, maximal already.
    ForEachRunOf(shared ? PageState::kShared : PageState::kPrivate, offset, size, [&](const ByteRun& r) {
      fn(r);
      return true;
    });
    return;
  }
  bool have = false;
  ByteRun pending{};
  ForEachRun(offset, size, [&](const ByteRun& r) {
    const int v = l.View(r.state);
    if (v == vnone) return true;
    if (have && pending.offset + pending.length == r.offset && l.View(pending.state) == v) {
      pending.length += r.length;
      return true;
    }
    if (have) fn(static_cast<const ByteRun&>(pending));
    pending = r;
    have = true;
    return true;
  });
  if (have) fn(static_cast<const ByteRun&>(pending));
}

Status BlockTracker::RegisterListener(StateListener* listener, uint64_t offset, uint64_t size) {
  if (listener == nullptr) return Status::InvalidArgument("null listener");
  for (const Registration& r : listeners_) {
    if (r.listener == listener) {
      return Status::InvalidArgument("listener '" + listener->name() + "' is already registered on block '" + name_ + "'");
    }
  }
  Status s = ValidateRange(offset, size);
  if (!s.ok()) return s;
  uint64_t g = listener->granularity();
  if (g == 0) g = page_size_;
  if (!std::has_single_bit(g) || g < page_size_) {
    return Status::InvalidArgument("granularity " + Hex(g) + " of listener '" + listener->name() +
                                   "' is not a power of two of at least the page size " + Hex(page_size_));
  }
  if (offset % g != 0 || size % g != 0) {
    return Status::InvalidArgument("section [" + Hex(offset) + ", " + Hex(offset + size) + ") of block '" + name_ +
                                   "' is not aligned to the " + Hex(g) + " granularity of listener '" +
                                   listener->name() + "'");
  }
  // Replay the section as changes from "no backing".
  std::vector<Change> replay;
  ForEachVisibleRun(*listener, offset, size, [&](const ByteRun& r) {
    replay.push_back({r.offset, r.length, PageState::kDiscarded, r.state});
  });
  // The state must already be aligned to the granularity in the listener's
  // view: a listener of 2 MiB mappings cannot be told of a 4 KiB run. (Once
  // registered, aligned conversions keep it so.)
  for (const Change& c : replay) {
    if (c.offset % g != 0 || c.size % g != 0) {
      return Status::InvalidArgument("the state of block '" + name_ + "' in [" + Hex(c.offset) + ", " +
                                     Hex(c.offset + c.size) + ") is not aligned to the " + Hex(g) +
                                     " granularity of listener '" + listener->name() + "'");
    }
  }
  for (size_t i = 0; i < replay.size(); ++i) {
    const Change& c = replay[i];
    Status st = listener->OnChange(c.offset, c.size, c.from, c.to);
    if (!st.ok()) {
      Undo(listener, replay, i);
      return Status::Refused("listener '" + listener->name() + "' refused the replay of [" + Hex(c.offset) + ", " +
                             Hex(c.offset + c.size) + ") of block '" + name_ + "': " + st.message());
    }
  }
  listeners_.push_back({listener, offset, size, g});
  return Status::OK();
}

Status BlockTracker::UnregisterListener(StateListener* listener) {
  auto it = std::find_if(listeners_.begin(), listeners_.end(),
                         [listener](const Registration& r) { return r.listener == listener; });
  if (it == listeners_.end()) return Status::NotFound("listener is not registered on block '" + name_ + "'");
  const Registration r = *it;
  listeners_.erase(it);
  if (listener->WithdrawWholeSection()) {
    listener->OnWithdrawSection(r.offset, r.size);
    return Status::OK();
  }
  std::vector<Change> withdraw;
  ForEachVisibleRun(*listener, r.offset, r.size, [&](const ByteRun& run) {
    withdraw.push_back({run.offset, run.length, run.state, PageState::kDiscarded});
  });
  for (const Change& c : withdraw) (void)listener->OnChange(c.offset, c.size, c.from, c.to);
  return Status::OK();
}

}  // namespace cvmstate
