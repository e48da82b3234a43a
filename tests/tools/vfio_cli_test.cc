// replay --vfio: live mappings cover exactly the shared pages, extent mode
// needs far fewer than granule mode, and refused conversions roll back.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <sstream>

#include "cvmstate_test.h"

namespace cvmstate::testing {
namespace {

struct VfioStats {
  long long mappings = -1, peak = -1, maps = -1, unmaps = -1;
};

VfioStats ParseStats(const std::string& err) {
  VfioStats s;
  size_t at = err.rfind("vfio: mappings=");
  if (at == std::string::npos) return s;
  std::sscanf(err.c_str() + at, "vfio: mappings=%lld peak=%lld maps=%lld unmaps=%lld", &s.mappings, &s.peak, &s.maps,
              &s.unmaps);
  return s;
}

// Shared pages per block, as sorted merged [begin, end) byte ranges, from
// a canonical listing or from a --vfio-out file (merging adjacent lines).
std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> Coverage(const std::string& text,
                                                                            bool listing) {
  std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> out;
  std::istringstream in(text);
  std::string name, off, len, state;
  while (in >> name >> off >> len) {
    if (listing) {
      in >> state;
      if (state != "shared") continue;
    }
    uint64_t a = std::strtoull(off.c_str(), nullptr, 16), n = std::strtoull(len.c_str(), nullptr, 16);
    auto& v = out[name];
    if (!v.empty() && v.back().second == a) {
      v.back().second += n;
    } else {
      v.push_back({a, a + n});
    }
  }
  return out;
}

class VfioCliTest : public CvmstateTest {};

TEST_F(VfioCliTest, ExtentCoversSharedPagesWithTwentyTimesFewerMappings) {
  for (const char* profile : {"steady", "boot"}) {
    std::string trace = dir_ + "/" + profile + ".trace";
    ASSERT_EQ(Cvm({"gen", "--profile", profile, "--size", "256G", "--ops", "20000"}, trace).exit_code, 0);
    ProcessResult listing = Cvm({"replay", trace});
    ASSERT_EQ(listing.exit_code, 0);
    auto shared = Coverage(listing.out, true);
    VfioStats st[2];
    int i = 0;
    for (const char* mode : {"granule", "extent"}) {
      std::string out = dir_ + "/" + mode + ".maps";
      ProcessResult r = Cvm({"replay", trace, "--vfio", mode, "--vfio-out", out, "--quiet"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(Coverage(ReadFile(out), false), shared) << profile << " " << mode;
      st[i] = ParseStats(r.err);
      ASSERT_GT(st[i].mappings, 0) << r.err;
      EXPECT_EQ(st[i].maps - st[i].unmaps, st[i].mappings);
      EXPECT_GE(st[i].peak, st[i].mappings);
      ++i;
    }
    EXPECT_GE(st[0].mappings, 20 * st[1].mappings) << profile << ": granule " << st[0].mappings << ", extent "
                                                   << st[1].mappings;
    EXPECT_GE(st[0].peak, 20 * st[1].peak) << profile;
  }
}

TEST_F(VfioCliTest, RefusedConversionIsRolledBackAndReported) {
  std::string trace = dir_ + "/boot.trace";
  ASSERT_EQ(Cvm({"gen", "--profile", "boot", "--size", "8G", "--ops", "3000"}, trace).exit_code, 0);
  ProcessResult stop = Cvm({"replay", trace, "--vfio", "granule", "--vfio-limit", "5000"});
  EXPECT_EQ(stop.exit_code, 1);
  EXPECT_EQ(stop.out, "");
  EXPECT_NE(stop.err.find(": error: listener 'vfio' refused"), std::string::npos) << stop.err;
  ProcessResult kept = Cvm({"replay", trace, "--vfio", "granule", "--vfio-limit", "5000", "--keep-going"});
  ASSERT_EQ(kept.exit_code, 0);
  EXPECT_LE(ParseStats(kept.err).peak, 5000);
  // The listing must equal a plain replay of the trace without the refused lines.
  std::vector<uint64_t> refused;
  for (size_t p = 0; (p = kept.err.find("boot.trace:", p)) != std::string::npos; ++p) {
    refused.push_back(std::strtoull(kept.err.c_str() + p + 11, nullptr, 10));
  }
  ASSERT_FALSE(refused.empty());
  std::istringstream in(ReadFile(trace));
  std::string line, filtered;
  for (uint64_t n = 1; std::getline(in, line); ++n) {
    if (std::find(refused.begin(), refused.end(), n) == refused.end()) filtered += line + "\n";
  }
  WriteFile(dir_ + "/filtered.trace", filtered);
  ProcessResult plain = Cvm({"replay", dir_ + "/filtered.trace"});
  ASSERT_EQ(plain.exit_code, 0);
  EXPECT_EQ(kept.out, plain.out);
}

TEST_F(VfioCliTest, UsageErrors) {
  std::string trace = dir_ + "/t.trace";
  WriteFile(trace, "block a 1M\n");
  EXPECT_EQ(Cvm({"replay", trace, "--vfio", "granule", "--impl", "bitmap"}).exit_code, 2);
  EXPECT_EQ(Cvm({"replay", trace, "--vfio-limit", "10"}).exit_code, 2);
  EXPECT_EQ(Cvm({"replay", trace, "--vfio", "huge"}).exit_code, 2);
  ProcessResult bad_out = Cvm({"replay", trace, "--vfio", "extent", "--vfio-out", dir_ + "/no/such/dir/x"});
  EXPECT_EQ(bad_out.exit_code, 1);
  // A block shared from the start is mapped at declaration; over the limit
  // its declaration is refused like an invalid line.
  WriteFile(trace, "block a 1M initial=shared\nblock b 1M\nshared b 0 4K\n");
  ProcessResult r = Cvm({"replay", trace, "--vfio", "granule", "--vfio-limit", "100", "--keep-going"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.err.find("t.trace:1: error:"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "b 0x0 0x1000 shared\nb 0x1000 0xff000 private\n");
}

}  // namespace
}  // namespace cvmstate::testing
