// BlockTracker: the page states of one RAM block, addressed in bytes.
//
// Wraps a RunMap with the block's identity (name, size, page size) and the
// validation rules of SPEC.md section 2. A conversion that is invalid, or
// that a listener refuses, changes nothing. Not thread-safe.
#ifndef CVMSTATE_BLOCK_TRACKER_H_
#define CVMSTATE_BLOCK_TRACKER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tracker/change_journal.h"
#include "tracker/listener.h"
#include "tracker/page_state.h"
#include "tracker/run_map.h"
#include "tracker/status.h"

namespace cvmstate {

// A run in bytes.
struct ByteRun {
  uint64_t offset;
  uint64_t length;
  PageState state;
};

class BlockTracker {
 public:
  static constexpr uint64_t kMinPageSize = 4096;
  static constexpr uint64_t kMaxPageSize = uint64_t{1} << 30;

  // Validates the block parameters (name, page size a power of two in
  // [4 KiB, 1 GiB], size a positive multiple of it) and returns a block all
  // in state `initial`, or InvalidArgument saying which rule failed.
  static Result<std::unique_ptr<BlockTracker>> Create(std::string name, uint64_t size,
                                                      uint64_t page_size, PageState initial,
                                                      unsigned chunk_shift = RunMap::kDefaultChunkShift);

  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }
  uint64_t page_size() const { return page_size_; }
  unsigned page_shift() const { return page_shift_; }
  PageState initial_state() const { return initial_; }

  // OK if [offset, offset+size) is a valid conversion range of this block:
  // non-empty, page aligned, no 64-bit overflow, inside the block.
  Status ValidateRange(uint64_t offset, uint64_t size) const;

  // Converts [offset, offset+size) to `state` after ValidateRange, telling
  // the registered listeners (see listener.h for the transaction rules;
  // the part of the range inside each listener's section must be aligned to
  // its granularity) and
  // recording the change in the journal when it is enabled. Pages already in
  // `state` stay as they are and are not notified. On error (invalid range,
  // a listener's granularity, a listener's refusal) nothing changed: not the
  // map, not any listener's view.
  Status Convert(uint64_t offset, uint64_t size, PageState state);

  // Registers `listener` (not owned; it must outlive its registration) for
  // the byte section [offset, offset+size) and replays the section's
  // current state to it. Fails, with nothing registered and nothing left
  // notified, if the section is invalid or not aligned to the listener's
  // granularity, if the section's current state is not (a run the listener
  // would be told of is not aligned to its granularity), if the listener is
  // already registered, or if it refuses the replay.
  Status RegisterListener(StateListener* listener, uint64_t offset, uint64_t size);
  // Withdraws the section from the listener and forgets it. NotFound if it
  // is not registered.
  Status UnregisterListener(StateListener* listener);
  size_t num_listeners() const { return listeners_.size(); }

  // The change journal; records nothing until EnableJournal().
  void EnableJournal() { journal_enabled_ = true; }
  bool journal_enabled() const { return journal_enabled_; }
  ChangeJournal& journal() { return journal_; }
  const ChangeJournal& journal() const { return journal_; }

  // State of the page holding byte `offset`. Requires offset < size().
  PageState StateAt(uint64_t offset) const { return map_.Get(offset >> page_shift_); }

  // Calls fn(const ByteRun&) for each maximal run intersecting the byte
  // section [offset, offset+size) (clipped to it, page aligned inward), in
  // ascending order; fn returns false to stop.
  template <typename Fn>
  void ForEachRun(uint64_t offset, uint64_t size, Fn&& fn) const {
    const unsigned sh = page_shift_;
    map_.ForEachRun(offset >> sh, (offset + size) >> sh, [&](const Run& r) {
      return fn(ByteRun{r.begin << sh, (r.end - r.begin) << sh, r.state});
    });
  }
  template <typename Fn>
  void ForEachRun(Fn&& fn) const { ForEachRun(0, size_, static_cast<Fn&&>(fn)); }
  // The same for the runs in state s only, skipping the others without a
  // step each (RunMap::ForEachRunOf); fn returns false to stop.
  template <typename Fn>
  void ForEachRunOf(PageState s, uint64_t offset, uint64_t size, Fn&& fn) const {
    const unsigned sh = page_shift_;
    map_.ForEachRunOf(s, offset >> sh, (offset + size) >> sh, [&](uint64_t a, uint64_t b) {
      return fn(ByteRun{a << sh, (b - a) << sh, s});
    });
  }

  // Bytes per state, maintained on every conversion (O(1)).
  uint64_t BytesIn(PageState s) const { return pages_in_[static_cast<int>(s)] << page_shift_; }
  uint64_t CountRuns() const { return map_.CountRuns(); }
  // Heap bytes held by the page-state structure.
  size_t MemoryBytes() const { return map_.MemoryBytes(); }
  // Gives back memory the state no longer needs (RunMap::CompactDense);
  // the state is unchanged.
  void CompactMemory() { map_.CompactDense(); }

  const RunMap& map() const { return map_; }

 private:
  BlockTracker(std::string name, uint64_t size, uint64_t page_size, PageState initial, unsigned chunk_shift);

  struct Registration {
    StateListener* listener;
    uint64_t offset, size;
    uint64_t granularity;
  };
  // One notification: what a listener is told.
  struct Change {
    uint64_t offset, size;
    PageState from, to;
  };
  // The changes `r` sees for the changed runs, merged by its View.
  static void Project(const Registration& r, const std::vector<ByteRun>& changed, PageState to,
                      std::vector<Change>* out);
  static void Undo(StateListener* l, const std::vector<Change>& accepted, size_t n);
  // Calls fn(const ByteRun&) for each stretch of [offset, offset+size)
  // the listener sees backed, adjacent runs its View cannot tell apart
  // merged (each with its first run's state). For a listener of one state
  // (DMA, attributes) it walks that state's runs only.
  template <typename Fn>
  void ForEachVisibleRun(const StateListener& l, uint64_t offset, uint64_t size, Fn&& fn) const;
  std::string name_;
  uint64_t size_;
  uint64_t page_size_;
  unsigned page_shift_;
  PageState initial_;
  RunMap map_;
  StateCounts pages_in_{};
  std::vector<Registration> listeners_;
  ChangeJournal journal_;
  bool journal_enabled_ = false;
  // Convert's working vectors, reused so that a conversion does not
  // allocate (one per listener in the last two).
  std::vector<ByteRun> scratch_changed_;
  std::vector<std::vector<Change>> scratch_per_;
  std::vector<std::vector<Change>> scratch_accepted_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_BLOCK_TRACKER_H_
