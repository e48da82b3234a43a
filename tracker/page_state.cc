#include "tracker/page_state.h"

namespace cvmstate {

std::string_view PageStateName(PageState s) {
  switch (s) {
    case PageState::kShared:
      return "shared";
    case PageState::kPrivate:
      return "private";
    case PageState::kDiscarded:
      return "discarded";
  }
  return "invalid";
}

std::optional<PageState> ParsePageState(std::string_view name) {
  if (name == "shared") return PageState::kShared;
  if (name == "private") return PageState::kPrivate;
  if (name == "discarded") return PageState::kDiscarded;
  return std::nullopt;
}

}  // namespace cvmstate
