#include "tracker/names.h"

namespace cvmstate {
namespace {

bool IsNameOf(std::string_view s, bool slash_allowed) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == ':' || c == '-' || (slash_allowed && c == '/');
    if (!ok) return false;
  }
  return true;
}

}  // namespace

bool IsValidBlockName(std::string_view name) { return IsNameOf(name, true); }
bool IsValidVmId(std::string_view id) { return IsNameOf(id, false); }

}  // namespace cvmstate
