#include "tracker/format.h"

#include <cstdio>

namespace cvmstate {

void AppendHex(std::string* out, uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  char buf[18];
  int n = 0;
  do {
    buf[n++] = kDigits[v & 15];
    v >>= 4;
  } while (v != 0);
  out->append("0x");
  while (n > 0) out->push_back(buf[--n]);
}

std::string Hex(uint64_t v) {
  std::string s;
  AppendHex(&s, v);
  return s;
}

std::string FormatSeconds(double seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", seconds);
  std::string s = buf;
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s + " s";
}

std::string Printable(std::string_view text) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c != 0x7f) {
      out.push_back(ch);
    } else {
      out += "\\x";
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 15]);
    }
  }
  return out;
}

std::string Quoted(std::string_view name) {
  static constexpr char kDigits[] = "0123456789abcdef";
  constexpr size_t kMax = 80;
  std::string out = "'";
  for (size_t i = 0; i < name.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 15]);
    }
  }
  if (name.size() > kMax) out += "...";
  out.push_back('\'');
  return out;
}

}  // namespace cvmstate
