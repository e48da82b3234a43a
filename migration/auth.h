// Keys and MACs of authenticated migration streams (OpenSSL's libcrypto:
// HMAC-SHA256, a CSPRNG; nothing home-made).
//
// The pre-shared key file's content K0 gives K = HMAC(K0, "cvmstate psk v1").
// A stream's nonce gives one key per direction,
//   k_sd = HMAC(K, "source to destination" || nonce),
//   k_ds = HMAC(K, "destination to source" || nonce),
// and every frame carries HMAC(k, u64 sequence || body).
#ifndef CVMSTATE_MIGRATION_AUTH_H_
#define CVMSTATE_MIGRATION_AUTH_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "tracker/status.h"

namespace cvmstate::migration_internal {

constexpr size_t kMacBytes = 32;
constexpr size_t kNonceBytes = 32;

std::string Hmac(std::string_view key, std::string_view a, std::string_view b = {});
// The MAC of a frame: HMAC(key, u64 seq little endian || body).
std::string FrameMac(std::string_view key, uint64_t seq, std::string_view body);
bool ConstantTimeEqual(std::string_view a, std::string_view b);
Result<std::string> RandomNonce();

struct SessionKeys {
  std::string source_to_destination, destination_to_source;
};
SessionKeys DeriveSessionKeys(std::string_view key, std::string_view nonce);

}  // namespace cvmstate::migration_internal

#endif  // CVMSTATE_MIGRATION_AUTH_H_
