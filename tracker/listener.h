// Listeners: components that must follow every page-state change of a
// section of a RAM block (VFIO DMA mappings, KVM memory attributes, ...).
//
// Protocol (enforced by BlockTracker):
//  * Registering replays the section's current state as changes from
//    `discarded` (no backing); if the listener refuses one, the ones it
//    accepted are undone and nothing stays registered.
//  * A conversion notifies per maximal changed run (never per page), merged
//    as far as the listener's View() cannot tell them apart, clipped to the
//    section. Notifications a listener may refuse (MayRefuse) are delivered
//    first, before the run map changes; if any listener refuses, every
//    notification already accepted is undone with its inverse, the map is
//    left exactly as it was, and the caller gets the refusal. The others are
//    delivered after the map changed and cannot fail.
//  * Unregistering withdraws the section: one call for the whole section if
//    WithdrawWholeSection(), otherwise one per run.
// Listeners must not call back into the tracker that notifies them. The
// caller owns listeners and must unregister them before destroying them.
#ifndef CVMSTATE_LISTENER_H_
#define CVMSTATE_LISTENER_H_

#include <cstdint>
#include <string>

#include "tracker/page_state.h"
#include "tracker/status.h"

namespace cvmstate {

// The general form: sees (range, old state, new state).
class StateListener {
 public:
  virtual ~StateListener() = default;

  // A short name for error messages ("vfio", "kvm-attributes", ...).
  virtual std::string name() const { return "listener"; }

  // Bytes; a power of two. Registration sections, the section's state at
  // registration (every run the listener would be told of), and the part of
  // a conversion inside the section must be aligned to it, or they are
  // refused up front. 0 means the block's page size.
  virtual uint64_t granularity() const { return 0; }

  // What the listener can tell apart: two states with equal views look the
  // same to it, and changes between them are not delivered.
  virtual int View(PageState s) const { return static_cast<int>(s); }

  // Whether a change from -> to may be refused. Refusable changes are
  // delivered before the map changes; an undo of an accepted one (its
  // inverse) must succeed.
  virtual bool MayRefuse(PageState from, PageState to) const {
    (void)from;
    (void)to;
    return true;
  }

  // Byte range [offset, offset+size) of the block changes from `from` to
  // `to` (with merged runs, `from` is the first run's state; all merged runs
  // have the same View). Non-OK refuses the conversion (only honoured when
  // MayRefuse(from, to)).
  virtual Status OnChange(uint64_t offset, uint64_t size, PageState from, PageState to) = 0;

  // If true, unregistering delivers one OnChange(section, discarded,
  // discarded) through OnWithdrawSection instead of one change per run.
  virtual bool WithdrawWholeSection() const { return false; }
  virtual void OnWithdrawSection(uint64_t offset, uint64_t size) {
    (void)offset;
    (void)size;
  }
};

// A DMA-mapping listener, as QEMU's RamDiscardListener: it cares whether a
// page is shared (populated, must be DMA-mapped) or not.
class DmaMappingListener : public StateListener {
 public:
  // Maps [offset, offset+size); may refuse (for example at a mapping limit).
  virtual Status NotifyPopulate(uint64_t offset, uint64_t size) = 0;
  // Unmaps [offset, offset+size); cannot fail.
  virtual void NotifyDiscard(uint64_t offset, uint64_t size) = 0;
  // True if NotifyDiscard accepts ranges that are not (all) populated, so a
  // whole section can be withdrawn in one call.
  virtual bool accepts_double_discard() const { return false; }

  std::string name() const override { return "dma"; }
  int View(PageState s) const final { return s == PageState::kShared; }
  bool MayRefuse(PageState, PageState to) const final { return to == PageState::kShared; }
  Status OnChange(uint64_t offset, uint64_t size, PageState, PageState to) final {
    if (to == PageState::kShared) return NotifyPopulate(offset, size);
    NotifyDiscard(offset, size);
    return Status::OK();
  }
  bool WithdrawWholeSection() const final { return accepts_double_discard(); }
  void OnWithdrawSection(uint64_t offset, uint64_t size) final { NotifyDiscard(offset, size); }
};

// A memory-attribute listener, as KVM_SET_MEMORY_ATTRIBUTES: it cares
// whether a page is private or not.
class MemoryAttributeListener : public StateListener {
 public:
  // Marks [offset, offset+size) private; may refuse.
  virtual Status SetPrivate(uint64_t offset, uint64_t size) = 0;
  // Clears the private attribute of [offset, offset+size); cannot fail.
  virtual void ClearPrivate(uint64_t offset, uint64_t size) = 0;

  std::string name() const override { return "memory-attributes"; }
  int View(PageState s) const final { return s == PageState::kPrivate; }
  bool MayRefuse(PageState, PageState to) const final { return to == PageState::kPrivate; }
  Status OnChange(uint64_t offset, uint64_t size, PageState, PageState to) final {
    if (to == PageState::kPrivate) return SetPrivate(offset, size);
    ClearPrivate(offset, size);
    return Status::OK();
  }
};

// A discard listener, as the memory backend of a VMM that frees what the
// guest gives up (QEMU's RamDiscardManager under a balloon or virtio-mem):
// it cares whether a page has backing (shared or private) or none
// (discarded), and frees the memory of pages that lose it.
class DiscardListener : public StateListener {
 public:
  // [offset, offset+size) gets backing again (leaves discarded); may refuse
  // (no memory to back it).
  virtual Status NotifyPopulate(uint64_t offset, uint64_t size) = 0;
  // [offset, offset+size) became discarded: its backing may be freed.
  virtual void NotifyDiscard(uint64_t offset, uint64_t size) = 0;

  std::string name() const override { return "discard"; }
  int View(PageState s) const final { return s != PageState::kDiscarded; }
  bool MayRefuse(PageState, PageState to) const final { return to != PageState::kDiscarded; }
  Status OnChange(uint64_t offset, uint64_t size, PageState, PageState to) final {
    if (to != PageState::kDiscarded) return NotifyPopulate(offset, size);
    NotifyDiscard(offset, size);
    return Status::OK();
  }
};

}  // namespace cvmstate

#endif  // CVMSTATE_LISTENER_H_
