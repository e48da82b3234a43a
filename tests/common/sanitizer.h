// Whether the tests run in an AddressSanitizer build: such a build reserves
// terabytes of shadow address space up front, keeps freed memory in a
// quarantine and crashes instead of throwing std::bad_alloc, so address
// space caps and resident-memory bounds mean something else there.
#ifndef CVMSTATE_TESTS_COMMON_SANITIZER_H_
#define CVMSTATE_TESTS_COMMON_SANITIZER_H_

namespace cvmstate::testing {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_COMMON_SANITIZER_H_
