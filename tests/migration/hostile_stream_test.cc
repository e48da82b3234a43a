// Hostile senders against a real `cvmstate migrate recv`: small streams
// that claim or carry millions of runs, and streams a valid VM must be able
// to send (many blocks, no blocks). The receiver must refuse early, within
// its memory budget, with one line and an untouched store.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "codec/state_digest.h"
#include "crafted_stream.h"
#include "migration/destination.h"
#include "migration/source.h"
#include "process.h"
#include "sanitizer.h"
#include "tracker/vm_state.h"

namespace cvmstate {
namespace {

using testing::AlternatingRuns;
using testing::CraftedBlock;
using testing::CraftedStream;
using testing::MakeTempDir;
using testing::ProcessResult;
using testing::RunCvmstate;
using testing::WriteFile;

using testing::kAddressSanitizer;

struct Received {
  ProcessResult run;
  std::string dir;
};

Received Receive(const std::string& stream, std::vector<std::string> extra = {}) {
  Received r;
  const std::string tmp = MakeTempDir();
  WriteFile(tmp + "/stream", stream);
  r.dir = tmp + "/db";
  std::vector<std::string> args = {"migrate", "recv", "--from-file", tmp + "/stream", "--db", r.dir};
  args.insert(args.end(), extra.begin(), extra.end());
  r.run = RunCvmstate(args);
  return r;
}

constexpr uint64_t kChunkPages = 65536;  // the run map's chunk

// Every chunk of a 64 TiB guest made dense (513 runs, then one
// run to the chunk's end): 16 KiB of run map per 514 runs.
std::string DenseEverywhereStream(int chunks) {
  CraftedStream s;
  s.Hello("g", {{"ram", uint64_t{64} << 40}}, 2);
  std::vector<ChunkRun> runs = AlternatingRuns(513);
  runs.push_back({kChunkPages - 513, PageState::kPrivate});
  for (int c = 0; c < chunks; ++c) {
    s.Section(c * kChunkPages, runs);
    if (s.raw_bytes() > (size_t{3} << 20)) s.FlushSections(0, 0);
  }
  s.FlushSections(0, 0);
  s.RoundEnd(0);
  s.End(1, 0, 2);
  return s.bytes();
}

TEST(HostileStreamTest, AStreamThatBuildsDenseChunksEverywhereStopsAtTheMemoryBudget) {
  // 6 KB that would make 65,536 dense chunks (1 GiB of run map; the
  // receiver reached 1 GB before this budget existed).
  const std::string stream = DenseEverywhereStream(65536);
  ASSERT_LT(stream.size(), 8000u);
  struct Case {
    std::vector<std::string> args;
    long max_rss_mb;  // budget + the process's own (RocksDB, one frame in flight)
    const char* says;
  } cases[] = {
      {{},
       (MigrationDestination::kDefaultMaxRuns * MigrationDestination::kStateBytesPerRun >> 20) + 24 + 80,
       "the state being received needs more memory than this destination's budget (280 MiB for max_runs 4194304)"},
      // A small budget is crossed in the first frame.
      {{"--max-runs", "100000"}, 6 + 24 + 80, "frame 2 (sections): section "},
  };
  for (const Case& c : cases) {
    Received r = Receive(stream, c.args);
    EXPECT_EQ(r.run.signal, 0);
    EXPECT_EQ(r.run.exit_code, 1) << r.run.err;
    EXPECT_NE(r.run.err.find(c.says), std::string::npos) << r.run.err;
    EXPECT_NE(r.run.err.find("needs more memory than this destination's budget"), std::string::npos) << r.run.err;
    EXPECT_EQ(std::count(r.run.err.begin(), r.run.err.end(), '\n'), 1) << r.run.err;
    EXPECT_FALSE(std::filesystem::exists(r.dir)) << "a failed recv leaves no store where there was none";
    if (!kAddressSanitizer) {
      EXPECT_LT(r.run.max_rss_kb >> 10, c.max_rss_mb) << r.run.err;
    }
  }
}

TEST(HostileStreamTest, AStateLargerThanTheDestinationAcceptsIsRefusedAtTheHello) {
  CraftedStream s;
  s.Hello("g", {{"ram", uint64_t{1} << 40}}, MigrationDestination::kDefaultMaxRuns + 1);
  s.Section(0, AlternatingRuns(kChunkPages));
  s.FlushSections(0, 0);
  Received r = Receive(s.bytes());
  EXPECT_EQ(r.run.exit_code, 1) << r.run.err;
  EXPECT_NE(r.run.err.find("frame 1: the source holds 4194305 runs, more runs than this destination accepts"),
            std::string::npos)
      << r.run.err;
  // With a larger --max-runs the same stream goes on (and fails later: it has no end).
  r = Receive(s.bytes(), {"--max-runs", "5000000"});
  EXPECT_EQ(r.run.exit_code, 1);
  EXPECT_EQ(r.run.err.find("frame 1:"), std::string::npos) << r.run.err;
}

TEST(HostileStreamTest, ASectionOfMoreRunsThanASourceSendsIsRefused) {
  CraftedStream s;
  s.Hello("g", {{"ram", uint64_t{1} << 40}}, 2);
  s.Section(0, AlternatingRuns(2 * kChunkPages));  // 131,072 runs in one section
  s.FlushSections(0, 0);
  Received r = Receive(s.bytes());
  EXPECT_EQ(r.run.exit_code, 1) << r.run.err;
  EXPECT_NE(r.run.err.find("frame 2 (sections): section 0: bad run count"), std::string::npos) << r.run.err;
}

// Over pre-copy rounds a chunk can go dense and then thin out page by page
// (each page its own section, as the journal sends it): the destination
// gives that memory back rather than refuse a stream whose state never
// held more runs than it accepts.
TEST(HostileStreamTest, ChunksThinnedOverTheRoundsDoNotExhaustTheBudget) {
  constexpr int kRounds = 8;
  constexpr uint64_t kDenseRuns = 601;  // past the list limit: a dense chunk
  VmState expect;
  ASSERT_TRUE(expect.AddBlock("ram", 64 * kChunkPages * 4096, 4096, PageState::kPrivate).ok());
  CraftedStream s;
  s.Hello("g", {{"ram", 64 * kChunkPages * 4096, 4096, PageState::kPrivate}}, kDenseRuns);
  for (uint32_t round = 0; round < kRounds; ++round) {
    if (round > 0) {  // the previous round's chunk thins out, one page a section
      const uint64_t prev = (round - 1) * kChunkPages;
      for (uint64_t k = 0; k < kDenseRuns / 2; ++k) {
        s.Section(prev + 2 * k, {{1, PageState::kPrivate}});
        ASSERT_TRUE(expect.block(0).Convert((prev + 2 * k) * 4096, 4096, PageState::kPrivate).ok());
      }
    }
    const uint64_t at = round * kChunkPages;
    std::vector<ChunkRun> runs = AlternatingRuns(kDenseRuns);
    s.Section(at, runs);
    for (uint64_t k = 0; k < kDenseRuns; ++k) {
      ASSERT_TRUE(expect.block(0).Convert((at + k) * 4096, 4096, runs[k].state).ok());
    }
    s.FlushSections(round, 0);
    s.RoundEnd(round);
  }
  const uint64_t runs = expect.block(0).CountRuns();
  s.End(kRounds, ComputeStateDigest(expect), runs);
  MigrationDestination::Options o;
  o.max_runs = runs + 100;  // the budget holds three dense chunks; eight went dense
  ASSERT_LT(MigrationDestination::kStateBytesPerRun * o.max_runs, 4 * 16384u);
  MigrationDestination dest(o);
  testing::StringSource in(s.bytes());
  std::string id;
  auto got = dest.Receive(&in, &id);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(ComputeStateDigest(got.value()), ComputeStateDigest(expect));
}

// Legitimate states, however fragmented, fit the budget their run count
// buys: each is received with max_runs set to exactly its runs.
TEST(HostileStreamTest, EveryLegitimateShapeFitsItsBudget) {
  std::mt19937_64 rng(7);
  std::vector<std::pair<std::string, VmState>> states;
  {  // random single pages, dense chunks
    VmState vm;
    ASSERT_TRUE(vm.AddBlock("ram", uint64_t{4} << 30, 4096, PageState::kPrivate).ok());
    for (int i = 0; i < 200000; ++i) {
      ASSERT_TRUE(vm.block(0).Convert((rng() % (uint64_t{1} << 20)) * 4096, 4096, PageState::kShared).ok());
    }
    states.emplace_back("frag", std::move(vm));
  }
  {  // just past the list limit in every chunk: 513 runs, the densest list-to-dense step
    VmState vm;
    ASSERT_TRUE(vm.AddBlock("ram", uint64_t{512} << 30, 4096, PageState::kPrivate).ok());
    for (uint64_t c = 0; c < 2048; ++c) {
      for (uint64_t k = 0; k < 256; ++k) {
        ASSERT_TRUE(vm.block(0).Convert((c * kChunkPages + 2 * k + 1) * 4096, 4096, PageState::kShared).ok());
      }
    }
    states.emplace_back("dense513", std::move(vm));
  }
  {  // two runs in every chunk of a 64 TiB guest: the directory's worst case
    VmState vm;
    ASSERT_TRUE(vm.AddBlock("ram", uint64_t{64} << 40, 4096, PageState::kPrivate).ok());
    for (uint64_t c = 0; c < (uint64_t{64} << 40) / 4096 / kChunkPages; ++c) {
      ASSERT_TRUE(vm.block(0).Convert(c * kChunkPages * 4096, 4096, PageState::kShared).ok());
    }
    states.emplace_back("sparse64t", std::move(vm));
  }
  for (auto& [name, vm] : states) {
    testing::StringSink sink;
    MigrationSource src(&vm, "g", &sink);
    ASSERT_TRUE(src.Begin(MigrationSource::NewNonce().value()).ok());
    ASSERT_TRUE(src.Finish().ok());
    uint64_t runs = 0;
    for (size_t i = 0; i < vm.num_blocks(); ++i) runs += vm.block(i).CountRuns();
    MigrationDestination::Options o;
    o.max_runs = runs;
    MigrationDestination dest(o);
    testing::StringSource in(sink.data);
    std::string id;
    auto got = dest.Receive(&in, &id);
    ASSERT_TRUE(got.ok()) << name << " (" << runs << " runs, " << vm.MemoryBytes() << " bytes): " << got.status().message();
    EXPECT_LE(got->MemoryBytes(), MigrationDestination::kStateBytesPerRun * runs +
                                      MigrationDestination::kStateBytesPerChunk * got->block(0).map().num_chunks())
        << name;
    std::printf("%s: %llu runs, %.1f bytes a run received\n", name.c_str(), static_cast<unsigned long long>(runs),
                static_cast<double>(got->MemoryBytes()) / static_cast<double>(runs));
  }
}

}  // namespace
// Streams of format 1 (the first release) carry the run-list digest in
// their end frame: a destination still reads them, checking that digest;
// the version decides which digest End must hold. The summaries the
// destination kept section by section describe the state it returns.
TEST(HostileStreamTest, FormatOneStreamsCarryTheRunListDigest) {
  constexpr uint64_t kPages = 5 * (uint64_t{1} << 17) + 300;
  auto stream = [&](uint32_t version, bool run_list_digest, VmState* expect) {
    CraftedStream s;
    s.Hello("g", {{"ram", kPages * 4096, 4096, PageState::kDiscarded}}, 0, version);
    EXPECT_TRUE(expect->AddBlock("ram", kPages * 4096, 4096, PageState::kDiscarded).ok());
    std::mt19937_64 rng(11);
    for (uint32_t round = 0; round < 3; ++round) {
      uint64_t at = 0;
      for (int k = 0; k < 40; ++k) {
        at += 1 + rng() % (kPages / 50);
        const std::vector<ChunkRun> runs = AlternatingRuns(1 + rng() % 5);
        if (at + runs.size() > kPages) break;
        s.Section(at, runs);
        for (size_t i = 0; i < runs.size(); ++i) {
          EXPECT_TRUE(expect->block(0).Convert((at + i) * 4096, 4096, runs[i].state).ok());
        }
        at += runs.size();
      }
      s.FlushSections(round, 0);
      s.RoundEnd(round);
    }
    s.End(3, run_list_digest ? ComputeRunListDigest(*expect) : ComputeStateDigest(*expect), 0);
    return s.bytes();
  };
  struct Case {
    uint32_t version;
    bool run_list_digest;
    const char* error;  // nullptr: received
  } cases[] = {{1, true, nullptr},
               {migration_internal::kFormatVersion, false, nullptr},
               {1, false, "state digest mismatch"},
               {migration_internal::kFormatVersion, true, "state digest mismatch"},
               {3, false, "stream format version 3"}};
  for (const Case& c : cases) {
    VmState expect;
    const std::string bytes = stream(c.version, c.run_list_digest, &expect);
    MigrationDestination dest(MigrationDestination::Options{});
    testing::StringSource in(bytes);
    std::string id;
    auto got = dest.Receive(&in, &id);
    if (c.error == nullptr) {
      ASSERT_TRUE(got.ok()) << "version " << c.version << ": " << got.status().message();
      EXPECT_EQ(ComputeStateDigest(got.value()), ComputeStateDigest(expect));
      ASSERT_EQ(dest.summaries().size(), 1u);
      EXPECT_EQ(dest.summaries()[0].digest_sum(), BlockDigestSum(got.value().block(0)));
      EXPECT_EQ(dest.summaries()[0].runs(), got.value().block(0).CountRuns());
    } else {
      ASSERT_FALSE(got.ok()) << "version " << c.version;
      EXPECT_NE(got.status().message().find(c.error), std::string::npos) << got.status().message();
    }
  }
}

}  // namespace cvmstate
