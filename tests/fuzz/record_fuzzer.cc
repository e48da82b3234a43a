// libFuzzer target: the checkpoint record and manifest decoders, through
// CheckpointStore::Load on an in-memory RocksDB. Each input mutates one
// value of a valid checkpoint: the first byte picks the value (and whether
// to truncate it), the rest is XORed into it.
#include <rocksdb/db.h>
#include <rocksdb/env.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"

namespace {

struct Fixture {
  std::unique_ptr<rocksdb::Env> env;
  std::unique_ptr<cvmstate::CheckpointStore> store;
  std::vector<std::pair<std::string, std::string>> kv;
};

Fixture* Setup() {
  auto* f = new Fixture;
  f->env.reset(rocksdb::NewMemEnv(rocksdb::Env::Default()));
  f->store = std::move(cvmstate::CheckpointStore::Open("/fuzz", false, f->env.get())).value();
  cvmstate::VmState vm;
  (void)vm.AddBlock("ram", uint64_t{1} << 32, 4096, cvmstate::PageState::kPrivate);
  (void)vm.AddBlock("big", uint64_t{1} << 34, 4096, cvmstate::PageState::kDiscarded);
  uint64_t x = 1;
  for (int i = 0; i < 3000; ++i) {  // lists, a dense chunk, stretches
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    uint64_t page = (i < 1500 ? (x >> 20) % 20000 : (x >> 20) % (uint64_t{1} << 20));
    (void)vm.block(i % 2).Convert(page * 4096, 4096 * (1 + (x >> 60)), static_cast<cvmstate::PageState>((x >> 8) % 3));
  }
  cvmstate::VmCheckpointer cp(f->store.get(), "vm");
  (void)cp.CommitState(vm);
  std::unique_ptr<rocksdb::Iterator> it(f->store->db()->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) f->kv.push_back({it->key().ToString(), it->value().ToString()});
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* f = Setup();
  if (size == 0 || f->kv.empty()) return 0;
  const auto& [key, value] = f->kv[data[0] % f->kv.size()];
  std::string bad = value;
  for (size_t i = 1; i < size; ++i) bad[(i - 1) % bad.size()] ^= static_cast<char>(data[i]);
  if ((data[0] & 0x80) && size > 1) bad.resize(bad.size() * data[1] / 256);
  rocksdb::WriteOptions w;
  (void)f->store->db()->Put(w, key, bad);
  auto loaded = f->store->Load("vm");
  (void)f->store->db()->Put(w, key, value);
  return 0;
}
