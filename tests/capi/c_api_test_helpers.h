// What the C API tests share: an owned vm, its digest, and the check of a
// NULL argument's error.
#ifndef CVMSTATE_TESTS_CAPI_C_API_TEST_HELPERS_H_
#define CVMSTATE_TESTS_CAPI_C_API_TEST_HELPERS_H_

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "cvmstate/cvmstate.h"

namespace cvmstate::testing {

struct Vm {
  Vm() : vm(cvmstate_vm_new()) {}
  ~Vm() { cvmstate_vm_free(vm); }
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;
  cvmstate_vm* vm;
};

inline uint64_t Digest(const cvmstate_vm* vm) {
  uint64_t d = 0;
  EXPECT_EQ(cvmstate_vm_digest(vm, &d), 0);
  return d;
}

// rc is a refused NULL argument called `name`.
inline void ExpectNull(int rc, const char* name) {
  EXPECT_EQ(rc, -EINVAL) << name << ": " << cvmstate_last_error();
  EXPECT_EQ(std::string(cvmstate_last_error()), std::string("null argument: ") + name);
}

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_CAPI_C_API_TEST_HELPERS_H_
