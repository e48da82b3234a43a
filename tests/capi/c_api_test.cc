// The C API through the shared library, as a VMM links it: errno values by
// status code, and checkpointers that never outlive their store.
#include "cvmstate/cvmstate.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "process.h"

namespace {

struct Vm {
  Vm() : vm(cvmstate_vm_new()) {}
  ~Vm() { cvmstate_vm_free(vm); }
  cvmstate_vm* vm;
};

uint64_t Digest(const cvmstate_vm* vm) {
  uint64_t d = 0;
  EXPECT_EQ(cvmstate_vm_digest(vm, &d), 0);
  return d;
}

TEST(CApiTest, ErrnoComesFromTheStatusCodeNotItsMessage) {
  Vm v;
  // A block called "already": an unaligned conversion is -EINVAL, whatever
  // the message says about the block's name.
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "already", 1 << 20, 4096, CVMSTATE_PRIVATE), 0);
  EXPECT_EQ(cvmstate_convert(v.vm, "already", 1, 4096, CVMSTATE_SHARED), -EINVAL) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_vm_add_block(v.vm, "already", 1 << 20, 4096, CVMSTATE_PRIVATE), -EEXIST);
  EXPECT_EQ(cvmstate_convert(v.vm, "nope", 0, 4096, CVMSTATE_SHARED), -ENOENT);
  // Committing a VM id that exists is -EEXIST, by code.
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_store_commit(store, "g", v.vm), 0) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_store_commit(store, "g", v.vm), -EEXIST) << cvmstate_last_error();
  cvmstate_store_close(store);
}

TEST(CApiTest, AClosedStoresCheckpointerIsNeverReused) {
  const std::string dir = cvmstate::testing::MakeTempDir();
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", uint64_t{1} << 34, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0, 1 << 20, CVMSTATE_SHARED), 0);
  for (int round = 0; round < 4; ++round) {
    // Each store lives in its own directory; the allocator may well hand
    // out the same address for the next one.
    const std::string db = dir + "/db" + std::to_string(round);
    cvmstate_store* store = nullptr;
    ASSERT_EQ(cvmstate_store_open(db.c_str(), &store), 0) << cvmstate_last_error();
    ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
    ASSERT_EQ(cvmstate_convert(v.vm, "ram", (uint64_t{1} << 30) * (round + 1), 4096, CVMSTATE_SHARED), 0);
    ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
    cvmstate_vm* loaded = nullptr;
    // The first checkpoint into a new store is a whole one: what it loads
    // is exactly the VM.
    ASSERT_EQ(cvmstate_store_load(store, "g", &loaded), 0) << cvmstate_last_error();
    EXPECT_EQ(Digest(loaded), Digest(v.vm)) << "round " << round;
    cvmstate_vm_free(loaded);
    cvmstate_store_close(store);
  }
}

TEST(CApiTest, AVmFreedBeforeItsStoreLeavesTheStoreUsable) {
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0);
  {
    Vm v;
    ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 30, 4096, CVMSTATE_SHARED), 0);
    ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "a", nullptr), 0);
  }
  Vm w;
  ASSERT_EQ(cvmstate_vm_add_block(w.vm, "ram", 1 << 30, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, w.vm, "b", nullptr), 0) << cvmstate_last_error();
  cvmstate_store_close(store);  // must not touch the freed vm
}

}  // namespace
