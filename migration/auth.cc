#include "migration/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>


namespace cvmstate {
namespace migration_internal {

std::string Hmac(std::string_view key, std::string_view a, std::string_view b) {
  unsigned char out[EVP_MAX_MD_SIZE];
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  EVP_MAC_CTX* ctx = mac ? EVP_MAC_CTX_new(mac) : nullptr;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0), OSSL_PARAM_construct_end()};
  size_t n = 0;
  bool ok = ctx != nullptr && EVP_MAC_init(ctx, reinterpret_cast<const unsigned char*>(key.data()), key.size(), params) &&
            EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(a.data()), a.size()) &&
            EVP_MAC_update(ctx, reinterpret_cast<const unsigned char*>(b.data()), b.size()) &&
            EVP_MAC_final(ctx, out, &n, sizeof out);
  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(mac);
  // A failure yields an empty MAC, which never matches a real one.
  return std::string(reinterpret_cast<const char*>(out), ok ? n : 0);
}

std::string FrameMac(std::string_view key, uint64_t seq, std::string_view body) {
  char s[8];
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(seq >> (8 * i));
  return Hmac(key, std::string_view(s, 8), body);
}

bool ConstantTimeEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Result<std::string> RandomNonce() {
  std::string n(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(n.data()), static_cast<int>(n.size())) != 1) {
    return Status::IOError("cannot draw a random nonce");
  }
  return n;
}

SessionKeys DeriveSessionKeys(std::string_view key, std::string_view nonce) {
  return {Hmac(key, "source to destination", nonce), Hmac(key, "destination to source", nonce)};
}

}  // namespace migration_internal

}  // namespace cvmstate
