// The persistent store: round trips, incremental size, corruption, crashes.
#include "store/checkpoint_store.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <rocksdb/db.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "codec/chunk_codec.h"
#include "codec/state_digest.h"
#include "cvmstate/schema/manifest_generated.h"
#include "process.h"
#include "sanitizer.h"
#include "store/checkpoint_decode.h"
#include "store/store_keys.h"
#include "store/vm_checkpointer.h"
#include "text/listing.h"
#include "text/trace.h"
#include "tools/workload.h"

namespace cvmstate {
namespace {

using testing::MakeTempDir;

std::string Listing(const VmState& vm) {
  std::string s;
  AppendRunListing(vm, &s);
  return s;
}

// Applies a trace held in memory; checkpoint lines call on_checkpoint.
template <typename Fn>
void ApplyTrace(const std::string& trace, VmState* vm, Fn&& on_checkpoint) {
  size_t pos = 0;
  while (pos < trace.size()) {
    size_t nl = trace.find('\n', pos);
    if (nl == std::string::npos) nl = trace.size();
    TraceDirective d;
    ASSERT_TRUE(ParseTraceLine(std::string_view(trace).substr(pos, nl - pos), &d).ok());
    ASSERT_TRUE(ApplyTraceDirective(d, vm).ok());
    if (d.kind == TraceDirective::Kind::kCheckpoint) on_checkpoint();
    pos = nl + 1;
  }
}

std::unique_ptr<CheckpointStore> OpenStore(const std::string& dir) {
  auto s = CheckpointStore::Open(dir);
  EXPECT_TRUE(s.ok()) << s.status().message();
  return std::move(s).value();
}

TEST(CheckpointStoreTest, RoundTripsRandomStatesOfSeveralVms) {
  const std::string dir = MakeTempDir();
  auto store = OpenStore(dir);
  std::mt19937_64 rng(11);
  struct Vm {
    std::string id;
    VmState state;
    std::unique_ptr<VmCheckpointer> cp;
  };
  std::vector<Vm> vms(3);
  for (int v = 0; v < 3; ++v) {
    vms[v].id = "vm-" + std::to_string(v);
    vms[v].cp = std::make_unique<VmCheckpointer>(store.get(), vms[v].id);
    // Sizes that are not chunk multiples, 4 KiB and 2 MiB pages, all initials.
    ASSERT_TRUE(vms[v].state.AddBlock("ram", (uint64_t{3} << 30) + (v + 1) * 40960, 4096, PageState::kPrivate).ok());
    ASSERT_TRUE(vms[v].state.AddBlock("huge", uint64_t{8} << 30, 2 << 20, PageState::kShared).ok());
    ASSERT_TRUE(vms[v].state.AddBlock("small", 1 << 20, 4096, PageState::kDiscarded).ok());
  }
  for (int round = 0; round < 12; ++round) {
    for (auto& vm : vms) {
      BlockTracker* ram = vm.state.Find("ram");
      BlockTracker* huge = vm.state.Find("huge");
      const uint64_t pages = ram->size() / 4096;
      for (int i = 0; i < 3000; ++i) {  // single pages: lists, then dense chunks
        uint64_t p = rng() % (pages / 3);
        ASSERT_TRUE(ram->Convert(p * 4096, 4096, static_cast<PageState>(rng() % 3)).ok());
      }
      for (int i = 0; i < 20; ++i) {  // ranges, whole chunks, stretches
        uint64_t p = rng() % pages, n = 1 + rng() % std::min<uint64_t>(pages - p, 1 << 18);
        ASSERT_TRUE(ram->Convert(p * 4096, n * 4096, static_cast<PageState>(rng() % 3)).ok());
        uint64_t h = rng() % 4096, hn = 1 + rng() % (4096 - h);
        ASSERT_TRUE(huge->Convert(h << 21, hn << 21, static_cast<PageState>(rng() % 3)).ok());
      }
      if (round == 5) {
        ASSERT_TRUE(vm.state.AddBlock("late", 1 << 30, 4096, PageState::kShared).ok());
      }
      if (round > 5) {
        ASSERT_TRUE(vm.state.Find("late")->Convert(0, 8192, PageState::kPrivate).ok());
      }
      auto c = vm.cp->CommitState(vm.state);
      ASSERT_TRUE(c.ok()) << c.status().message();
      EXPECT_EQ(c->sequence, static_cast<uint64_t>(round + 1));
    }
    for (auto& vm : vms) {
      CheckpointInfo info;
      auto loaded = store->Load(vm.id, &info);
      ASSERT_TRUE(loaded.ok()) << loaded.status().message();
      ASSERT_EQ(Listing(loaded.value()), Listing(vm.state)) << vm.id << " round " << round;
      EXPECT_EQ(info.sequence, static_cast<uint64_t>(round + 1));
      EXPECT_EQ(info.digest, ComputeStateDigest(vm.state));
      for (size_t b = 0; b < vm.state.num_blocks(); ++b) {
        for (int s = 0; s < 3; ++s) {
          EXPECT_EQ(loaded->block(b).BytesIn(static_cast<PageState>(s)),
                    vm.state.block(b).BytesIn(static_cast<PageState>(s)));
        }
      }
    }
  }
  auto list = store->ListVms();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list.value(), (std::vector<std::string>{"vm-0", "vm-1", "vm-2"}));
  EXPECT_EQ(store->Load("vm-9").status().code(), Status::Code::kNotFound);
  // A fresh checkpointer replaces what the id held.
  VmState small;
  ASSERT_TRUE(small.AddBlock("x", 1 << 20, 4096, PageState::kShared).ok());
  VmCheckpointer again(store.get(), "vm-1");
  ASSERT_TRUE(again.CommitState(small).ok());
  auto back = store->Load("vm-1");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(Listing(back.value()), "x 0x0 0x100000 shared\n");
}

TEST(CheckpointStoreTest, IncrementalCheckpointIsSmall) {
  // A 64 GiB guest in a realistic state; then 100 page conversions inside
  // one GiB must write at most 1/20 of a full checkpoint.
  std::string trace;
  ASSERT_TRUE(tools::GenerateWorkload("steady", uint64_t{64} << 30, 5, 20000, &trace).ok());
  VmState vm;
  ApplyTrace(trace, &vm, [] {});
  const std::string dir = MakeTempDir();
  auto store = OpenStore(dir);
  VmCheckpointer cp(store.get(), "guest");
  auto full = cp.CommitState(vm);
  ASSERT_TRUE(full.ok());
  std::mt19937_64 rng(3);
  BlockTracker* b = vm.Find("/objects/mem0");
  const uint64_t base = uint64_t{5} << 30;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(b->Convert(base + (rng() % 262144) * 4096, 4096, static_cast<PageState>(rng() % 3)).ok());
  }
  auto inc = cp.CommitState(vm);
  ASSERT_TRUE(inc.ok());
  std::fprintf(stderr, "full checkpoint %llu bytes, incremental after 100 conversions %llu bytes\n",
               static_cast<unsigned long long>(full->bytes), static_cast<unsigned long long>(inc->bytes));
  EXPECT_LE(inc->bytes * 20, full->bytes);
  auto loaded = store->Load("guest");
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(Listing(loaded.value()), Listing(vm));
}

// Staged records stay invisible until the commit, which then writes only
// what changed since; a stage never committed is replaced by the id's next
// first commit; an id held by a checkpointer is written by no one else.
TEST(CheckpointStoreTest, StagedRecordsAreInvisibleUntilTheCommitWritesTheRest) {
  std::string trace;
  ASSERT_TRUE(tools::GenerateWorkload("steady", uint64_t{64} << 30, 6, 20000, &trace).ok());
  VmState vm;
  ApplyTrace(trace, &vm, [] {});
  const std::string dir = MakeTempDir();
  auto store = OpenStore(dir);
  auto cp = std::make_unique<VmCheckpointer>(store.get(), "guest");
  ASSERT_TRUE(cp->HoldNewVm().ok());
  {
    // Every other writer of the id is refused while it is held.
    VmCheckpointer other(store.get(), "guest");
    EXPECT_EQ(other.HoldNewVm().code(), Status::Code::kAlreadyExists);
    EXPECT_EQ(other.CommitState(vm).status().code(), Status::Code::kAlreadyExists);
    EXPECT_EQ(other.StageState(vm).status().code(), Status::Code::kAlreadyExists);
    EXPECT_EQ(other.DeleteAll().code(), Status::Code::kAlreadyExists);
  }
  EXPECT_EQ(store->CommitNew("guest", vm).status().code(), Status::Code::kAlreadyExists);
  EXPECT_EQ(store->CommitFull("guest", vm, 1).status().code(), Status::Code::kAlreadyExists);
  EXPECT_EQ(store->DeleteVm("guest").code(), Status::Code::kAlreadyExists);
  auto staged = cp->StageState(vm);
  ASSERT_TRUE(staged.ok()) << staged.status().message();
  EXPECT_GT(staged->records, 0u);
  EXPECT_EQ(staged->sequence, 0u);
  EXPECT_FALSE(store->HasVm("guest").value());
  EXPECT_EQ(store->Load("guest").status().code(), Status::Code::kNotFound);
  EXPECT_TRUE(store->ListVms().value().empty());
  // A later round: 100 conversions inside one GiB, staged, then 10 more.
  std::mt19937_64 rng(4);
  BlockTracker* b = vm.Find("/objects/mem0");
  for (int i = 0; i < 110; ++i) {
    if (i == 100) {
      ASSERT_TRUE(cp->StageState(vm).ok());
    }
    ASSERT_TRUE(b->Convert((uint64_t{5} << 30) + (rng() % 262144) * 4096, 4096, static_cast<PageState>(rng() % 3)).ok());
  }
  EXPECT_FALSE(store->HasVm("guest").value());
  auto commit = cp->CommitState(vm);
  ASSERT_TRUE(commit.ok()) << commit.status().message();
  EXPECT_EQ(commit->sequence, 1u);
  EXPECT_LE(commit->bytes * 20, staged->bytes);
  cp.reset();  // ends the hold
  {
    VmCheckpointer again(store.get(), "guest");
    EXPECT_EQ(again.HoldNewVm().code(), Status::Code::kAlreadyExists);  // it exists now
  }
  CheckpointInfo info;
  auto loaded = store->Load("guest", &info);
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_EQ(Listing(loaded.value()), Listing(vm));
  EXPECT_EQ(info.sequence, 1u);
  // A stage that is never committed (a crash, here the store closed under
  // it) leaves nothing a reader sees, and the id's next commit replaces it.
  {
    VmState other;
    ASSERT_TRUE(other.AddBlock("pc.ram", uint64_t{1} << 34, 4096, PageState::kShared).ok());
    for (int i = 0; i < 2000; ++i) {
      ASSERT_TRUE(other.block(0).Convert((rng() % (uint64_t{1} << 22)) * 4096, 4096, PageState::kPrivate).ok());
    }
    VmCheckpointer lost(store.get(), "lost");
    ASSERT_TRUE(lost.HoldNewVm().ok());
    ASSERT_TRUE(lost.StageState(other).ok());
  }
  store.reset();
  store = OpenStore(dir);
  EXPECT_FALSE(store->HasVm("lost").value());
  EXPECT_EQ(store->ListVms().value(), std::vector<std::string>{"guest"});
  VmState small;
  ASSERT_TRUE(small.AddBlock("pc.ram", uint64_t{1} << 34, 4096, PageState::kDiscarded).ok());
  ASSERT_TRUE(small.block(0).Convert(0, 4096, PageState::kShared).ok());
  ASSERT_TRUE(store->CommitNew("lost", small).ok());
  auto back = store->Load("lost");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(Listing(back.value()), Listing(small));
}

// Flips bytes of stored values through the RocksDB API: every load either
// fails with a reason or returns exactly the committed state.
TEST(CheckpointStoreTest, CorruptedValuesAreRefused) {
  std::string trace;
  ASSERT_TRUE(tools::GenerateWorkload("steady", uint64_t{16} << 30, 8, 4000, &trace).ok());
  VmState vm;
  ApplyTrace(trace, &vm, [] {});
  const std::string want = Listing(vm);
  const std::string dir = MakeTempDir();
  auto store = OpenStore(dir);
  VmCheckpointer cp(store.get(), "g");
  ASSERT_TRUE(cp.CommitState(vm).ok());
  rocksdb::DB* db = store->db();
  std::vector<std::pair<std::string, std::string>> kv;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) kv.push_back({it->key().ToString(), it->value().ToString()});
  ASSERT_GT(kv.size(), 10u);
  std::mt19937_64 rng(1);
  int refused = 0, same = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const auto& [key, value] = kv[rng() % kv.size()];
    std::string bad = value;
    const size_t at = rng() % bad.size();
    bad[at] = static_cast<char>(bad[at] ^ (1 << (rng() % 8)));
    if (trial % 50 == 49) bad.resize(rng() % bad.size());  // truncation too
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, bad).ok());
    auto loaded = store->Load("g");
    if (loaded.ok()) {
      ASSERT_EQ(Listing(loaded.value()), want) << "a corrupted value produced a different state";
      ++same;
    } else {
      EXPECT_EQ(loaded.status().code(), Status::Code::kCorruption) << loaded.status().message();
      EXPECT_NE(loaded.status().message().find("VM 'g'"), std::string::npos);
      ++refused;
    }
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, value).ok());
  }
  EXPECT_GT(refused, 300);  // only a few bytes (times, sequence) are not state
  std::fprintf(stderr, "corrupted values: %d refused, %d harmless\n", refused, same);
  // A missing record and an extra record are corruption too.
  for (const auto& [key, value] : kv) {
    if (key[0] != 'c') continue;
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), key).ok());
    EXPECT_EQ(store->Load("g").status().code(), Status::Code::kCorruption);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, value).ok());
    std::string extra = key;
    extra.back() = static_cast<char>(extra.back() ^ 0x40);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), extra, value).ok());
    EXPECT_FALSE(store->Load("g").ok());
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), extra).ok());
    break;
  }
  EXPECT_TRUE(store->Load("g").ok());
}

TEST(CheckpointStoreTest, CorruptedSstFilesAreRefused) {
  std::string trace;
  ASSERT_TRUE(tools::GenerateWorkload("steady", uint64_t{16} << 30, 9, 4000, &trace).ok());
  VmState vm;
  ApplyTrace(trace, &vm, [] {});
  const std::string want = Listing(vm);
  const std::string dir = MakeTempDir();
  {
    auto store = OpenStore(dir);
    VmCheckpointer cp(store.get(), "g");
    ASSERT_TRUE(cp.CommitState(vm).ok());
    ASSERT_TRUE(store->db()->Flush(rocksdb::FlushOptions()).ok());
  }
  std::vector<std::string> ssts;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".sst") ssts.push_back(e.path());
  }
  ASSERT_FALSE(ssts.empty());
  std::mt19937_64 rng(2);
  int refused = 0;
  for (int trial = 0; trial < 40; ++trial) {
    const std::string& f = ssts[rng() % ssts.size()];
    std::string data = testing::ReadFile(f);
    const std::string original = data;
    // Corrupt the data blocks (the first 90%): the footer's checksums then differ.
    const size_t at = rng() % (data.size() * 9 / 10);
    data[at] = static_cast<char>(data[at] ^ 0x5a);
    testing::WriteFile(f, data);
    auto store = CheckpointStore::Open(dir);
    if (store.ok()) {
      auto loaded = store.value()->Load("g");
      if (loaded.ok()) {
        ASSERT_EQ(Listing(loaded.value()), want);
      } else {
        ++refused;
      }
    } else {
      ++refused;
    }
    store = Status::IOError("closed");
    testing::WriteFile(f, original);
  }
  EXPECT_GT(refused, 20);
}

// A child replays with frequent checkpoints and is killed with SIGKILL at
// random moments: the store always holds exactly one whole checkpoint, never
// older than the last one the child reported.
TEST(CheckpointStoreTest, SurvivesSigkillAtRandomMoments) {
  std::string base;
  ASSERT_TRUE(tools::GenerateWorkload("steady", uint64_t{64} << 30, 12, 30000, &base).ok());
  std::string trace;
  {
    size_t pos = 0, n = 0;
    while (pos < base.size()) {
      size_t nl = base.find('\n', pos);
      std::string line = base.substr(pos, nl - pos);
      pos = nl + 1;
      if (line == "checkpoint") continue;
      trace += line + "\n";
      if (++n % 300 == 0) trace += "checkpoint\n";
    }
  }
  // The digest expected at each checkpoint sequence (the end commits too).
  std::vector<uint64_t> expected{0};
  {
    VmState vm;
    ApplyTrace(trace, &vm, [&] { expected.push_back(ComputeStateDigest(vm)); });
    expected.push_back(ComputeStateDigest(vm));
  }
  const std::string dir = MakeTempDir();
  testing::WriteFile(dir + "/t.trace", trace);
  // Kills land anywhere in a run: scaled to how long an uninterrupted run
  // takes here (a sanitizer build or a loaded machine takes several times
  // longer to reach its first commit).
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(testing::RunCvmstate({"replay", "--quiet", "--db", dir + "/timing", "--vm", "v", dir + "/t.trace"}).exit_code,
            0);
  const uint64_t run_us = std::max<uint64_t>(
      20000, std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
  std::mt19937_64 rng(77);
  int loaded_any = 0, killed_mid_run = 0;
  for (int round = 0; round < 12; ++round) {
    const std::string db = dir + "/db" + std::to_string(round % 3);  // some runs replace an older VM
    int err_pipe[2];
    ASSERT_EQ(pipe(err_pipe), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      dup2(err_pipe[1], 2);
      close(err_pipe[0]);
      execl(testing::CvmstateBinary().c_str(), "cvmstate", "replay", "--quiet", "--db", db.c_str(), "--vm", "v",
            (dir + "/t.trace").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(err_pipe[1]);
    usleep(static_cast<useconds_t>(2000 + rng() % (run_us * 9 / 10)));
    ::kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    killed_mid_run += WIFSIGNALED(status);
    std::string err;
    char buf[4096];
    ssize_t n;
    while ((n = read(err_pipe[0], buf, sizeof buf)) > 0) err.append(buf, static_cast<size_t>(n));
    close(err_pipe[0]);
    uint64_t reported = 0;
    for (size_t p = 0; (p = err.find("checkpoint ", p)) != std::string::npos; ++p) {
      reported = std::max<uint64_t>(reported, std::strtoull(err.c_str() + p + 11, nullptr, 10));
    }
    auto store = CheckpointStore::Open(db);
    ASSERT_TRUE(store.ok()) << store.status().message();
    CheckpointInfo info;
    auto vm = store.value()->Load("v", &info);
    if (!vm.ok()) {
      // Killed before its first commit of this run: only a previous run's
      // state (or nothing) may be there, and nothing may be reported.
      ASSERT_EQ(vm.status().code(), Status::Code::kNotFound) << vm.status().message();
      ASSERT_EQ(reported, 0u);
      continue;
    }
    ++loaded_any;
    if (reported > 0) {
      ASSERT_GE(info.sequence, reported) << "older than the last reported checkpoint";
    }
    ASSERT_LT(info.sequence, expected.size());
    ASSERT_EQ(ComputeStateDigest(vm.value()), expected[info.sequence]) << "checkpoint " << info.sequence;
  }
  EXPECT_GT(loaded_any, 3);
  EXPECT_GT(killed_mid_run, 6) << "the kills should land while the child runs";
  std::fprintf(stderr, "%d of 12 children killed mid-run, %d stores loaded\n", killed_mid_run, loaded_any);
}

TEST(CheckpointStoreTest, ClearErrorsForBadDirectories) {
  const std::string dir = MakeTempDir();
  testing::WriteFile(dir + "/file", "x");
  auto bad = CheckpointStore::Open(dir + "/file");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("cannot open store"), std::string::npos);
  auto first = CheckpointStore::Open(dir + "/db");
  ASSERT_TRUE(first.ok());
  auto second = CheckpointStore::Open(dir + "/db");  // locked by the first
  EXPECT_FALSE(second.ok());
  auto ro = CheckpointStore::Open(dir + "/missing", /*read_only=*/true);
  EXPECT_FALSE(ro.ok());
  VmState vm;
  VmCheckpointer bad_id(first.value().get(), "no/slash");
  EXPECT_EQ(bad_id.CommitState(vm).status().code(), Status::Code::kInvalidArgument);
}

TEST(CheckpointStoreTest, RecordsCountOnlyRecordsWritten) {
  const std::string dir = MakeTempDir();
  auto store = CheckpointStore::Open(dir + "/db");
  ASSERT_TRUE(store.ok());
  VmState vm;
  ASSERT_TRUE(vm.AddBlock("ram", uint64_t{1} << 34, 4096, PageState::kPrivate).ok());
  VmCheckpointer cp(store.value().get(), "g");
  ASSERT_TRUE(vm.block(0).Convert(0, 4096, PageState::kShared).ok());
  auto first = cp.CommitState(vm);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->records, 1u);  // chunk 0 has two runs; the rest is uniform
  // Chunk 0 turns uniform again: its record is deleted, none is written.
  ASSERT_TRUE(vm.block(0).Convert(0, 4096, PageState::kPrivate).ok());
  auto second = cp.CommitState(vm);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->records, 0u);
  CheckpointInfo info;
  ASSERT_TRUE(store.value()->Load("g", &info).ok());
  EXPECT_EQ(info.records, 0u);
}

TEST(CheckpointStoreTest, ALongLivedVmsJournalStaysAsSmallAsItsLastChanges) {
  const std::string dir = MakeTempDir();
  auto store = CheckpointStore::Open(dir + "/db");
  ASSERT_TRUE(store.ok());
  VmState vm;
  ASSERT_TRUE(vm.AddBlock("ram", uint64_t{1} << 40, 4096, PageState::kPrivate).ok());
  VmCheckpointer cp(store.value().get(), "g");
  ASSERT_TRUE(cp.CommitState(vm).ok());
  std::mt19937_64 rng(3);
  size_t most = 0;
  for (int c = 0; c < 200; ++c) {
    // Conversions all over the block, each checkpoint in other places.
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(vm.block(0).Convert((rng() % (uint64_t{1} << 28)) * 4096, 4096, PageState::kShared).ok());
    }
    ASSERT_TRUE(cp.CommitState(vm).ok());
    most = std::max(most, vm.block(0).journal().ChangedSince(0).size());
  }
  // What was committed is forgotten: the journal never holds more than one
  // checkpoint's changes (it held all 10,000 before).
  EXPECT_LE(most, 50u);
  auto loaded = store.value()->Load("g");
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_EQ(ComputeStateDigest(loaded.value()), ComputeStateDigest(vm));
}

// What a forked child printed and how it ended.
struct ChildRun {
  int signal = 0;  // the signal that killed it, or 0
  std::string out;
  long max_rss_mb = 0;    // its peak resident memory
  long as_growth_mb = 0;  // how far its address space grew past the start
};

// Runs setup and then fn in a forked child whose address space may grow by
// at most `budget` bytes over what it has after setup (RLIMIT_AS; 0 for no
// cap) and returns what fn returned. Neither returns into the test
// framework.
ChildRun InChild(
    size_t budget, const std::function<std::string()>& fn, const std::function<void()>& setup = [] {}) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::malloc_trim(0);  // what the parent freed is not the child's to count
    // One heap for every thread: RocksDB's threads would otherwise reserve
    // 64 MiB arenas of address space each.
    ::mallopt(M_ARENA_MAX, 1);
    setup();
    ::malloc_trim(0);
    const long page = ::sysconf(_SC_PAGESIZE);
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
      std::fclose(f);
    }
    if (budget > 0) {
      const rlim_t cap = static_cast<rlim_t>(pages) * static_cast<rlim_t>(page) + budget;
      struct rlimit rl {
        cap, cap
      };
      if (::setrlimit(RLIMIT_AS, &rl) != 0) ::_exit(3);
    }
    std::string out;
    try {
      out = fn();
    } catch (const std::bad_alloc&) {
      out = "std::bad_alloc";
    } catch (...) {
      out = "an exception";
    }
    long peak_kb = 0;
    if (FILE* f = std::fopen("/proc/self/status", "r")) {
      char line[256];
      while (std::fgets(line, sizeof line, f)) {
        if (std::sscanf(line, "VmPeak: %ld kB", &peak_kb) == 1) break;
      }
      std::fclose(f);
    }
    // VmPeak may predate setup's end; growth is what came after it.
    peak_kb = std::max(peak_kb, pages * page / 1024);
    out = std::to_string((peak_kb * 1024 - pages * page) >> 20) + " " + out;
    if (::write(fds[1], out.data(), out.size()) != static_cast<ssize_t>(out.size())) ::_exit(4);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int st = 0;
  struct rusage ru {};
  EXPECT_EQ(::wait4(pid, &st, 0, &ru), pid);
  ChildRun r;
  r.max_rss_mb = ru.ru_maxrss / 1024;
  if (WIFSIGNALED(st)) {
    r.signal = WTERMSIG(st);
    return r;
  }
  EXPECT_EQ(WEXITSTATUS(st), 0) << got;
  r.as_growth_mb = std::atol(got.c_str());
  r.out = got.substr(std::min(got.size(), got.find(' ') + 1));
  return r;
}

// How a load in a capped child ended.
struct BoundedLoad {
  int signal = 0;         // the signal that killed it, or 0
  bool returned = false;  // false if it threw (std::bad_alloc) instead
  Status::Code code = Status::Code::kOk;
  std::string message;
  long max_rss_mb = 0;
  long as_growth_mb = 0;
};

// Opens the store at dir read-only in a child, then caps it as InChild
// does and loads `vm`.
BoundedLoad LoadInBoundedChild(const std::string& dir, const std::string& vm, size_t budget) {
  std::unique_ptr<CheckpointStore> store;
  std::string open_error;
  ChildRun c = InChild(
      budget,
      [&]() -> std::string {
        if (!store) return "open failed: " + open_error;
        auto loaded = store->Load(vm);
        return "code " + std::to_string(static_cast<int>(loaded.status().code())) + " " + loaded.status().message();
      },
      [&] {
        // Opening RocksDB is not the load's cost: it comes first.
        auto opened = CheckpointStore::Open(dir, /*read_only=*/true);
        if (opened.ok()) {
          store = std::move(opened).value();
        } else {
          open_error = opened.status().message();
        }
      });
  BoundedLoad r;
  r.signal = c.signal;
  r.max_rss_mb = c.max_rss_mb;
  r.as_growth_mb = c.as_growth_mb;
  r.message = c.out;
  if (c.out.rfind("code ", 0) == 0) {
    r.returned = true;
    r.code = static_cast<Status::Code>(std::atoi(c.out.c_str() + 5));
    r.message = c.out.substr(std::min(c.out.size(), c.out.find(' ', 5) + 1));
  }
  return r;
}

struct CraftedBlock {
  uint64_t size = 0;
  std::string stretches;  // the zstd frame as stored
  uint32_t raw_size = 0;
  uint32_t count = 0;
};

// A manifest that passes the FlatBuffers verifier, with one block "ram"
// (4 KiB pages, initially shared) whose stretch fields say what `b` says.
std::string CraftManifest(const std::string& vm, const CraftedBlock& b, uint64_t digest,
                          uint32_t version = store_format::kManifestVersion) {
  namespace fbs = cvmstate::schema;
  flatbuffers::FlatBufferBuilder fb;
  std::vector<flatbuffers::Offset<fbs::BlockManifest>> blocks;
  blocks.push_back(fbs::CreateBlockManifest(
      fb, fb.CreateString("ram"), b.size, 4096, static_cast<uint8_t>(PageState::kShared),
      fb.CreateVector(reinterpret_cast<const uint8_t*>(b.stretches.data()), b.stretches.size()), b.raw_size, b.count));
  auto m = fbs::CreateManifest(fb, version, fb.CreateString(vm), 1, CheckpointStore::kChunkShift, 0,
                               fb.CreateVector(blocks), digest, 0);
  fbs::FinishManifestBuffer(fb, m);
  return std::string(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize());
}

// A store directory holding only `manifest` as the manifest of VM "g".
std::string StoreWithManifest(const std::string& manifest) {
  const std::string dir = MakeTempDir() + "/db";
  auto store = OpenStore(dir);
  rocksdb::WriteOptions w;
  w.sync = true;
  EXPECT_TRUE(store->db()->Put(w, store_keys::ManifestKey("g"), manifest).ok());
  return dir;
}

// Stretches of one chunk each, alternating shared and private.
std::string AlternatingStretches(uint32_t count) {
  std::string raw;
  raw.reserve(size_t{count} * 2);
  for (uint32_t k = 0; k < count; ++k) {
    raw.push_back(1);
    raw.push_back(static_cast<char>(k % 2 == 0 ? PageState::kShared : PageState::kPrivate));
  }
  return raw;
}

// The sizes and counts of a manifest are claims: a 200-byte record that
// claims 2^32 stretches and a frame of 4 GiB must be refused without
// allocating what it claims (it took 4.2 GB and 9 s, and here aborted with
// bad_alloc under the cap).
TEST(CheckpointStoreTest, ClaimedStretchSizesAllocateNothing) {
  // A zstd frame header that declares 2^32-1 bytes (single segment, 4-byte
  // content size, checksum on) and then ends.
  std::string frame = "\x28\xb5\x2f\xfd";
  frame.push_back('\xa4');
  frame.append("\xff\xff\xff\xff", 4);
  CraftedBlock b;
  b.size = uint64_t{1} << 62;  // 2^33 chunks: the claimed count fits
  b.stretches = frame;
  b.raw_size = 0xffffffffu;
  b.count = 0xffffffffu / 11 + 1;
  const std::string manifest = CraftManifest("g", b, 0);
  EXPECT_LT(manifest.size(), 256u);
  BoundedLoad r = LoadInBoundedChild(StoreWithManifest(manifest), "g", size_t{256} << 20);
  ASSERT_EQ(r.signal, 0) << "the load died by signal " << r.signal;
  ASSERT_TRUE(r.returned) << r.message;
  EXPECT_EQ(r.code, Status::Code::kCorruption) << r.message;
  EXPECT_NE(r.message.find("chunk stretches"), std::string::npos) << r.message;
  std::fprintf(stderr, "claimed 4 GiB of stretches: %s (peak %ld MB)\n", r.message.c_str(), r.max_rss_mb);

  // A real frame of 2000 bytes declared as 2002, holding one stretch
  // more than declared, or cut short.
  const std::string raw = AlternatingStretches(1000);
  std::string z;
  ASSERT_TRUE(ZstdCompress(raw, &z).ok());
  struct Case {
    uint32_t raw_size, count;
    size_t cut;
  } cases[] = {{2002, 1000, 0}, {2000, 999, 0}, {2000, 1000, 1}};
  for (const Case& k : cases) {
    b.size = uint64_t{1000} << (CheckpointStore::kChunkShift + 12);
    b.stretches = z.substr(0, z.size() - k.cut);
    b.raw_size = k.raw_size;
    b.count = k.count;
    r = LoadInBoundedChild(StoreWithManifest(CraftManifest("g", b, 0)), "g", size_t{256} << 20);
    ASSERT_EQ(r.signal, 0);
    ASSERT_TRUE(r.returned) << r.message;
    EXPECT_EQ(r.code, Status::Code::kCorruption) << r.message;
  }
}

// A valid manifest of under 1 KB that holds 2^21 alternating stretches
// (the 5.8 KB one of 2^25 took 1.4 GB to load): the state it describes has
// 2^21 runs, and loading it may cost that state's run map, not a list of
// stretches and the raw stream besides. A stream that goes wrong at its
// very end is refused within the same bound, and so is one whose checksum
// fails.
TEST(CheckpointStoreTest, ManyStretchesCostOnlyTheRunMap) {
  constexpr uint32_t count = uint32_t{1} << 21;
  constexpr unsigned kChunkBytesShift = CheckpointStore::kChunkShift + 12;
  CraftedBlock b;
  b.size = uint64_t{count} << kChunkBytesShift;
  b.count = count;
  {
    const std::string raw = AlternatingStretches(count);
    ASSERT_TRUE(ZstdCompress(raw, &b.stretches).ok());
    b.raw_size = static_cast<uint32_t>(raw.size());
  }
  // The state it describes, built in a child so that its memory is not
  // left in this process's heap.
  ChildRun ref = InChild(0, [&] {
    auto block = BlockTracker::Create("ram", b.size, 4096, PageState::kShared);
    if (!block.ok()) return std::string("cannot create");
    for (uint64_t k = 1; k < count; k += 2) {
      if (!block.value()->Convert(k << kChunkBytesShift, uint64_t{1} << kChunkBytesShift, PageState::kPrivate).ok()) {
        return std::string("cannot convert");
      }
    }
    const size_t mb = block.value()->MemoryBytes() >> 20;
    VmState vm;
    if (!vm.AddBlock(std::move(block).value()).ok()) return std::string("cannot add");
    return std::to_string(ComputeStateDigest(vm)) + " " + std::to_string(mb);
  });
  ASSERT_EQ(ref.signal, 0);
  const uint64_t digest = std::strtoull(ref.out.c_str(), nullptr, 10);
  const size_t runmap_mb = std::strtoull(ref.out.c_str() + ref.out.find(' '), nullptr, 10);
  const std::string manifest = CraftManifest("g", b, digest);

  // The run map and 48 MiB besides (its own growth by doubling, zstd's
  // window): this decoder takes the run map and 34 MB here, the old one
  // 63 MB, a vector of every stretch and the raw stream besides.
  // An AddressSanitizer build also keeps what the directory's doublings
  // freed in its quarantine (256 MiB at most) and pads every allocation.
  const size_t budget =
      testing::kAddressSanitizer ? ((2 * runmap_mb + 48) << 20) + (size_t{256} << 20) : (runmap_mb + 48) << 20;
  std::fprintf(stderr, "manifest of %zu bytes, %u stretches; run map %zu MiB, budget %zu MiB\n", manifest.size(), count,
               runmap_mb, budget >> 20);
  BoundedLoad r = LoadInBoundedChild(StoreWithManifest(manifest), "g", budget);
  ASSERT_EQ(r.signal, 0) << "the load died by signal " << r.signal;
  ASSERT_TRUE(r.returned) << r.message;
  EXPECT_EQ(r.code, Status::Code::kOk) << r.message;
  std::fprintf(stderr, "valid: loaded, peak RSS %ld MB, address space +%ld MB\n", r.max_rss_mb, r.as_growth_mb);

  // The last stretch says "shared" twice in a row (not maximal).
  {
    std::string bad = AlternatingStretches(count);
    bad.back() = bad[bad.size() - 3];
    CraftedBlock c = b;
    ASSERT_TRUE(ZstdCompress(bad, &c.stretches).ok());
    r = LoadInBoundedChild(StoreWithManifest(CraftManifest("g", c, digest)), "g", budget);
  }
  ASSERT_EQ(r.signal, 0);
  ASSERT_TRUE(r.returned) << r.message;
  EXPECT_EQ(r.code, Status::Code::kCorruption) << r.message;
  std::fprintf(stderr, "bad last stretch: %s (address space +%ld MB)\n", r.message.c_str(), r.as_growth_mb);

  // A flipped checksum byte (the frame's last four bytes).
  CraftedBlock c = b;
  c.stretches.back() = static_cast<char>(c.stretches.back() ^ 1);
  r = LoadInBoundedChild(StoreWithManifest(CraftManifest("g", c, digest)), "g", budget);
  ASSERT_EQ(r.signal, 0);
  ASSERT_TRUE(r.returned) << r.message;
  EXPECT_EQ(r.code, Status::Code::kCorruption) << r.message;
  EXPECT_NE(r.message.find("chunk stretches"), std::string::npos) << r.message;
}

// Stores written by the first release hold manifests of format 1, whose
// digest is the run-list digest: they still load (checked against that
// digest), and report today's digest of the state they hold.
TEST(CheckpointStoreTest, FormatOneManifestsStillLoad) {
  VmState vm;
  ASSERT_TRUE(vm.AddBlock(BlockTracker::Create("ram", uint64_t{1} << 33, 4096, PageState::kPrivate).value()).ok());
  std::mt19937_64 rng(5);
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(vm.block(0).Convert((rng() % (uint64_t{1} << 21)) * 4096, 4096 * (1 + rng() % 100),
                                    static_cast<PageState>(rng() % 3)).ok());
  }
  const std::string dir = MakeTempDir() + "/db";
  auto store = OpenStore(dir);
  ASSERT_TRUE(store->CommitFull("g", vm, 1).ok());
  // The manifest again, as format 1 with the given digest.
  std::string bytes;
  ASSERT_TRUE(store->db()->Get(rocksdb::ReadOptions(), store_keys::ManifestKey("g"), &bytes).ok());
  auto rewrite = [&](uint32_t version, uint64_t digest) {
    namespace fbs = cvmstate::schema;
    const fbs::Manifest* m = fbs::GetManifest(bytes.data());
    EXPECT_EQ(m->format_version(), store_format::kManifestVersion);
    EXPECT_EQ(m->digest(), ComputeStateDigest(vm));
    EXPECT_EQ(m->total_runs(), vm.block(0).CountRuns());
    const fbs::BlockManifest* bm = m->blocks()->Get(0);
    flatbuffers::FlatBufferBuilder fb;
    std::vector<flatbuffers::Offset<fbs::BlockManifest>> blocks;
    blocks.push_back(fbs::CreateBlockManifest(
        fb, fb.CreateString(bm->name()->str()), bm->size(), bm->page_size(), bm->initial(),
        fb.CreateVector(bm->stretches()->data(), bm->stretches()->size()), bm->stretches_raw_size(),
        bm->stretch_count()));
    auto out = fbs::CreateManifest(fb, version, fb.CreateString("g"), m->sequence(), m->chunk_shift(), m->unix_time(),
                                   fb.CreateVector(blocks), digest, m->total_runs());
    fbs::FinishManifestBuffer(fb, out);
    rocksdb::WriteOptions w;
    w.sync = true;
    ASSERT_TRUE(store->db()
                    ->Put(w, store_keys::ManifestKey("g"),
                          rocksdb::Slice(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize()))
                    .ok());
  };
  rewrite(1, ComputeRunListDigest(vm));
  CheckpointInfo info;
  auto loaded = store->Load("g", &info);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(ComputeStateDigest(loaded.value()), ComputeStateDigest(vm));
  EXPECT_EQ(info.digest, ComputeStateDigest(vm));
  // Format 1 with today's digest, or today's format with the old one: the
  // version decides which digest is checked.
  rewrite(1, ComputeStateDigest(vm));
  auto wrong = store->Load("g");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("state digest mismatch"), std::string::npos) << wrong.status().ToString();
  rewrite(store_format::kManifestVersion, ComputeRunListDigest(vm));
  wrong = store->Load("g");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("state digest mismatch"), std::string::npos) << wrong.status().ToString();
  rewrite(3, ComputeStateDigest(vm));
  wrong = store->Load("g");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("unknown manifest format version 3"), std::string::npos);
}

}  // namespace
}  // namespace cvmstate
