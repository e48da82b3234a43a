// Formatting shared by error messages and the text outputs built on the
// core: hexadecimal numbers and quoted names.
#ifndef CVMSTATE_TRACKER_FORMAT_H_
#define CVMSTATE_TRACKER_FORMAT_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace cvmstate {

// Appends "0x" and v in lowercase hexadecimal without leading zeros.
void AppendHex(std::string* out, uint64_t v);
// The same as a string, for messages.
std::string Hex(uint64_t v);

// Seconds for a message: "30 s", "0.5 s", "1.25 s" (no trailing zeros).
std::string FormatSeconds(double seconds);

// 'name' for a one-line message: bytes outside printable ASCII (newlines,
// NULs, ...) become \xNN, and a name longer than 80 bytes is cut with "...".
std::string Quoted(std::string_view name);

// text with every control byte (NUL, newline, ...) written as \xNN: a
// message that reaches a terminal or a log stays one whole line.
std::string Printable(std::string_view text);

}  // namespace cvmstate

#endif  // CVMSTATE_TRACKER_FORMAT_H_
