// The migration protocol in process: round trips through a socketpair,
// delta sizes, and corruption sweeps over recorded streams.
#include "cvmstate/migration.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <thread>

#include "cvmstate/listing.h"
#include "cvmstate/state_digest.h"

namespace cvmstate {
namespace {

class StringSink : public ByteSink {
 public:
  Status Write(std::string_view d) override {
    data.append(d);
    return Status::OK();
  }
  std::string data;
};

class StringSource : public ByteSource {
 public:
  explicit StringSource(std::string_view d) : data_(d) {}
  Status Read(void* buf, size_t n) override {
    if (n > data_.size()) return Status::IOError("the stream ended in the middle of a frame");
    std::memcpy(buf, data_.data(), n);
    data_.remove_prefix(n);
    return Status::OK();
  }

 private:
  std::string_view data_;
};

std::string Listing(const VmState& vm) {
  std::string s;
  AppendRunListing(vm, &s);
  return s;
}

VmState RandomVm(std::mt19937_64& rng) {
  VmState vm;
  const int blocks = 1 + static_cast<int>(rng() % 3);
  for (int i = 0; i < blocks; ++i) {
    const uint64_t page = rng() % 4 == 0 ? (2u << 20) : 4096;
    const uint64_t pages = 1 + rng() % 300000;
    EXPECT_TRUE(vm.AddBlock("b" + std::to_string(i), pages * page, page, static_cast<PageState>(rng() % 3)).ok());
  }
  return vm;
}

void Churn(std::mt19937_64& rng, VmState* vm, int n) {
  for (int i = 0; i < n; ++i) {
    BlockTracker& b = vm->block(rng() % vm->num_blocks());
    const uint64_t pages = b.size() / b.page_size();
    const uint64_t p = rng() % pages, len = 1 + rng() % std::min<uint64_t>(pages - p, rng() % 2 ? 16 : 100000);
    ASSERT_TRUE(b.Convert(p * b.page_size(), len * b.page_size(), static_cast<PageState>(rng() % 3)).ok());
  }
}

// Records a stream: round 0, `rounds` pre-copy rounds with churn between
// them, and the final round.
std::string Record(uint64_t seed, VmState* vm, int rounds, std::vector<RoundStats>* stats = nullptr) {
  std::mt19937_64 rng(seed);
  StringSink sink;
  MigrationSource src(vm, "vm" + std::to_string(seed), &sink);
  EXPECT_TRUE(src.Begin().ok());
  for (int r = 0; r < rounds; ++r) {
    Churn(rng, vm, 200);
    EXPECT_TRUE(src.SendRound().ok());
  }
  Churn(rng, vm, 50);
  EXPECT_TRUE(src.Finish().ok());
  if (stats) *stats = src.rounds();
  return sink.data;
}

TEST(MigrationTest, RoundTripsThroughASocketpair) {
  for (uint64_t seed = 1; seed <= 25; ++seed) {
    std::mt19937_64 rng(seed);
    VmState src_vm = RandomVm(rng);
    Churn(rng, &src_vm, 500);
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    Status sent;
    std::thread source([&] {
      FdSink sink(sv[0]);
      MigrationSource src(&src_vm, "guest", &sink);
      sent = src.Begin();
      for (int r = 0; r < 3 && sent.ok(); ++r) {
        Churn(rng, &src_vm, 300);
        auto st = src.SendRound();
        if (!st.ok()) sent = st.status();
      }
      if (sent.ok()) {
        Churn(rng, &src_vm, 100);
        auto st = src.Finish();
        if (!st.ok()) sent = st.status();
      }
      FdSource back(sv[0], 30);
      if (sent.ok()) sent = src.AwaitAck(&back);
    });
    FdSource in(sv[1], 30);
    MigrationDestination dest({});
    std::string id;
    auto got = dest.Receive(&in, &id);
    FdSink ack(sv[1]);
    ASSERT_TRUE(MigrationDestination::SendAck(&ack, got.ok(), got.ok() ? "ready" : got.status().message()).ok());
    source.join();
    close(sv[0]);
    close(sv[1]);
    ASSERT_TRUE(got.ok()) << got.status().message();
    ASSERT_TRUE(sent.ok()) << sent.message();
    EXPECT_EQ(id, "guest");
    EXPECT_EQ(Listing(got.value()), Listing(src_vm)) << "seed " << seed;
    EXPECT_EQ(dest.rounds().size(), 5u);
  }
}

TEST(MigrationTest, DeltaRoundsCostAboutThirtyTwoBytesPerChangedRun) {
  VmState vm;
  ASSERT_TRUE(vm.AddBlock("ram", uint64_t{1} << 40, 4096, PageState::kPrivate).ok());
  std::mt19937_64 rng(5);
  Churn(rng, &vm, 50000);
  StringSink sink;
  MigrationSource src(&vm, "big", &sink);
  ASSERT_TRUE(src.Begin().ok());
  for (int n : {10, 1000, 10000}) {
    Churn(rng, &vm, n);
    auto st = src.SendRound();
    ASSERT_TRUE(st.ok());
    EXPECT_LE(st->bytes, 32 * st->runs + 256) << n << " conversions: " << st->bytes << " bytes, " << st->runs << " runs";
  }
  ASSERT_TRUE(src.Finish().ok());
  // The whole stream against a 2-bit bitmap of the guest (64 MiB).
  EXPECT_LE(src.total_bytes() * 40, (uint64_t{1} << 40) / 4096 / 4);
  StringSource in(sink.data);
  MigrationDestination dest({});
  std::string id;
  auto got = dest.Receive(&in, &id);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_EQ(ComputeStateDigest(got.value()), ComputeStateDigest(vm));
}

TEST(MigrationTest, EverySingleBitFlipIsRefused) {
  std::mt19937_64 rng(7);
  VmState vm = RandomVm(rng);
  Churn(rng, &vm, 300);
  const std::string stream = Record(7, &vm, 2);
  ASSERT_GT(stream.size(), 100u);
  // Every bit of small streams, a sample of large ones.
  const size_t bits = stream.size() * 8;
  const size_t step = std::max<size_t>(1, bits / 20000);
  size_t tried = 0;
  for (size_t bit = 0; bit < bits; bit += step) {
    std::string bad = stream;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    StringSource in(bad);
    MigrationDestination dest({});
    std::string id;
    auto got = dest.Receive(&in, &id);
    ASSERT_FALSE(got.ok()) << "a flip of bit " << bit << " was accepted";
    ++tried;
  }
  EXPECT_GT(tried, 1000u);
}

TEST(MigrationTest, TruncatedReorderedAndOversizedStreamsAreRefused) {
  std::mt19937_64 rng(8);
  VmState vm = RandomVm(rng);
  Churn(rng, &vm, 300);
  const std::string stream = Record(8, &vm, 3);
  // Frame boundaries, from the headers.
  std::vector<size_t> bounds{0};
  while (bounds.back() < stream.size()) {
    const auto* h = reinterpret_cast<const unsigned char*>(stream.data() + bounds.back());
    bounds.push_back(bounds.back() + 8 + (h[0] | h[1] << 8 | h[2] << 16 | uint32_t{h[3]} << 24));
  }
  ASSERT_EQ(bounds.back(), stream.size());
  auto refused = [](const std::string& s) {
    StringSource in(s);
    MigrationDestination dest({});
    std::string id;
    return !dest.Receive(&in, &id).ok();
  };
  for (size_t i = 0; i + 1 < bounds.size(); ++i) EXPECT_TRUE(refused(stream.substr(0, bounds[i]))) << "cut at frame " << i;
  for (int i = 0; i < 200; ++i) EXPECT_TRUE(refused(stream.substr(0, rng() % stream.size())));
  // Two frames swapped, a frame repeated, a frame dropped.
  for (size_t i = 1; i + 2 < bounds.size(); ++i) {
    std::string a = stream.substr(bounds[i], bounds[i + 1] - bounds[i]), b = stream.substr(bounds[i + 1], bounds[i + 2] - bounds[i + 1]);
    EXPECT_TRUE(refused(stream.substr(0, bounds[i]) + b + a + stream.substr(bounds[i + 2]))) << "swap " << i;
    EXPECT_TRUE(refused(stream.substr(0, bounds[i + 1]) + a + stream.substr(bounds[i + 1]))) << "repeat " << i;
    EXPECT_TRUE(refused(stream.substr(0, bounds[i]) + stream.substr(bounds[i + 1]))) << "drop " << i;
  }
  // A header announcing a huge frame is refused before anything is allocated.
  std::string huge = stream.substr(0, bounds[1]) + std::string("\xff\xff\xff\x7f\0\0\0\0", 8);
  StringSource in(huge);
  MigrationDestination dest({});
  std::string id;
  auto got = dest.Receive(&in, &id);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("length"), std::string::npos) << got.status().message();
  // A destination that refuses the id says why.
  MigrationDestination::Options o;
  o.accept_vm = [](const std::string& v) { return Status::Refused("VM '" + v + "' already exists"); };
  StringSource in2(stream);
  MigrationDestination picky(o);
  auto no = picky.Receive(&in2, &id);
  ASSERT_FALSE(no.ok());
  EXPECT_NE(no.status().message().find("already exists"), std::string::npos);
}

}  // namespace
}  // namespace cvmstate
