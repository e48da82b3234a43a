// The migration protocol in process: round trips through a socketpair,
// delta sizes, and corruption sweeps over recorded streams.
#include "migration/byte_stream.h"
#include "migration/crc32c.h"
#include "migration/destination.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "migration/tcp.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <thread>

#include "codec/state_digest.h"
#include "process.h"
#include "string_stream.h"
#include "text/listing.h"

namespace cvmstate {
namespace {

using testing::StringSink;
using testing::StringSource;

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
    EXPECT_TRUE(vm.AddBlock(std::string("b").append(std::to_string(i)), pages * page, page, static_cast<PageState>(rng() % 3)).ok());
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
  EXPECT_TRUE(src.Begin(MigrationSource::NewNonce().value()).ok());
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
      FdSink sink(sv[0], 30);
      FdSource challenge(sv[0], 30);
      auto nonce = MigrationSource::ReadChallenge(&challenge);
      MigrationSource src(&src_vm, "guest", &sink);
      sent = nonce.ok() ? src.Begin(nonce.value()) : nonce.status();
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
    FdSink ack(sv[1], 30);
    MigrationDestination::Options opt;
    opt.expected_nonce = MigrationSource::NewNonce().value();
    ASSERT_TRUE(MigrationDestination::SendChallenge(&ack, opt.expected_nonce).ok());
    MigrationDestination dest(opt);
    std::string id;
    auto got = dest.Receive(&in, &id);
    ASSERT_TRUE(dest.SendAck(&ack, got.ok(), got.ok() ? "ready" : got.status().message()).ok());
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
  ASSERT_TRUE(src.Begin(MigrationSource::NewNonce().value()).ok());
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

namespace cvmstate {
namespace {

// Records a stream answering `nonce`, keyed with `key` (empty: unkeyed).
std::string RecordKeyed(VmState* vm, const std::string& key, const std::string& nonce) {
  StringSink sink;
  MigrationSource src(vm, "keyed", &sink);
  src.SetKey(key);
  EXPECT_TRUE(src.Begin(nonce).ok());
  EXPECT_TRUE(src.Finish().ok());
  return sink.data;
}

Status ReceiveWith(const std::string& stream, const std::string& key, const std::string& expected_nonce) {
  StringSource in(stream);
  MigrationDestination::Options o;
  o.key = key;
  o.expected_nonce = expected_nonce;
  MigrationDestination dest(o);
  std::string id;
  auto got = dest.Receive(&in, &id);
  return got.ok() ? Status::OK() : got.status();
}

TEST(MigrationAuthTest, KeysNoncesAndReplays) {
  std::mt19937_64 rng(31);
  VmState vm = RandomVm(rng);
  Churn(rng, &vm, 200);
  const std::string dir = testing::MakeTempDir();
  testing::WriteFile(dir + "/k1", "0123456789abcdef-one");
  testing::WriteFile(dir + "/k2", "0123456789abcdef-two");
  testing::WriteFile(dir + "/short", "tiny");
  const std::string k1 = LoadPskFile(dir + "/k1", 5).value(), k2 = LoadPskFile(dir + "/k2", 5).value();
  EXPECT_FALSE(LoadPskFile(dir + "/short", 5).ok());
  EXPECT_FALSE(LoadPskFile(dir + "/missing", 5).ok());
  const std::string n1 = MigrationSource::NewNonce().value(), n2 = MigrationSource::NewNonce().value();
  ASSERT_NE(n1, n2);

  const std::string keyed = RecordKeyed(&vm, k1, n1);
  EXPECT_TRUE(ReceiveWith(keyed, k1, n1).ok());
  EXPECT_TRUE(ReceiveWith(keyed, k1, "").ok());  // a file: its own nonce, key checked
  Status wrong = ReceiveWith(keyed, k2, n1);
  EXPECT_EQ(wrong.code(), Status::Code::kRefused);
  EXPECT_NE(wrong.message().find("authentication failed"), std::string::npos) << wrong.message();
  EXPECT_NE(wrong.message().find("frame 0"), std::string::npos) << "refused before anything large: " << wrong.message();
  Status unkeyed_receiver = ReceiveWith(keyed, "", n1);
  EXPECT_NE(unkeyed_receiver.message().find("stream is authenticated"), std::string::npos);
  const std::string plain = RecordKeyed(&vm, "", n1);
  Status unkeyed_sender = ReceiveWith(plain, k1, n1);
  EXPECT_EQ(unkeyed_sender.code(), Status::Code::kRefused);
  EXPECT_NE(unkeyed_sender.message().find("does not authenticate"), std::string::npos) << unkeyed_sender.message();
  // Replaying a recorded stream to a receiver that drew another nonce.
  Status replay = ReceiveWith(keyed, k1, n2);
  EXPECT_EQ(replay.code(), Status::Code::kRefused);
  EXPECT_NE(replay.message().find("another challenge"), std::string::npos);
  // Rewriting the nonce (and the CRC) to the new one breaks every MAC.
  std::string forged = keyed;
  const size_t at = forged.find(n1);
  ASSERT_NE(at, std::string::npos);
  forged.replace(at, n2.size(), n2);
  const uint32_t len = static_cast<uint8_t>(forged[0]) | static_cast<uint8_t>(forged[1]) << 8;
  const uint32_t crc = Crc32c(forged.data() + 8 + 32, len);
  for (int i = 0; i < 4; ++i) forged[4 + i] = static_cast<char>(crc >> (8 * i));
  Status forged_status = ReceiveWith(forged, k1, n2);
  EXPECT_EQ(forged_status.code(), Status::Code::kRefused);
  EXPECT_NE(forged_status.message().find("authentication failed"), std::string::npos) << forged_status.message();
  // Flipping any bit of a keyed stream is refused too.
  for (size_t bit = 0; bit < keyed.size() * 8; bit += 97) {
    std::string bad = keyed;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    ASSERT_FALSE(ReceiveWith(bad, k1, n1).ok()) << bit;
  }
}

}  // namespace
}  // namespace cvmstate
