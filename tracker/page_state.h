// PageState: the three states a page of confidential-VM RAM can be in.
#ifndef CVMSTATE_PAGE_STATE_H_
#define CVMSTATE_PAGE_STATE_H_

#include <cstdint>
#include <optional>
#include <string_view>

namespace cvmstate {

// The numeric values are part of the on-disk and on-wire formats: never
// renumber. Two bits hold a state; the value 3 is invalid everywhere.
enum class PageState : uint8_t {
  kShared = 0,     // host-visible; must be DMA-mapped for assigned devices
  kPrivate = 1,    // guest-owned (guest_memfd private); secure migration path
  kDiscarded = 2,  // no backing: unaccepted, ballooned, unplugged, reported free
};

inline constexpr int kNumPageStates = 3;

// "shared", "private" or "discarded".
std::string_view PageStateName(PageState s);

// Parses one of the three names (exact, lower case); nullopt otherwise.
std::optional<PageState> ParsePageState(std::string_view name);

inline bool IsValidPageStateValue(unsigned v) { return v < kNumPageStates; }

}  // namespace cvmstate

#endif  // CVMSTATE_PAGE_STATE_H_
