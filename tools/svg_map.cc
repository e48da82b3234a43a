#include "tools/svg_map.h"

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cmath>
#include <cstdio>

#include "tools/human_bytes.h"

namespace cvmstate::tools {
namespace {

constexpr int kColumns = 1000;      // pixel columns of a band
constexpr int kLeft = 170;          // room for block names
constexpr int kBandHeight = 36;
constexpr int kBandGap = 44;        // ticks and labels below a band
constexpr int kTop = 78;
constexpr int kMinPixels = 2;      // the least height a present state gets in a column
constexpr const char* kColour[3] = {"#e8590c", "#1c7ed6", "#ced4da"};  // shared, private, discarded
constexpr const char* kName[3] = {"shared", "private", "discarded"};

std::string Escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '&') o += "&amp;";
    else if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '"') o += "&quot;";
    else o.push_back(c);
  }
  return o;
}

// A "nice" tick step in bytes giving 4 to 10 ticks over size.
uint64_t TickStep(uint64_t size) {
  uint64_t step = 1;
  while (size / step > 10) {
    if (size / (step * 2) <= 10) return step * 2;
    if (size / (step * 4) <= 10) return step * 4;
    step *= 8;
    if (step > (uint64_t{1} << 60)) break;
  }
  return std::max<uint64_t>(step, 1);
}

}  // namespace

void RenderSvgMap(const VmState& vm, const std::string& title, std::string* out) {
  const int width = kLeft + kColumns + 40;
  const int height = kTop + static_cast<int>(vm.num_blocks()) * (kBandHeight + kBandGap) + 20;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
                "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n",
                width, height, width, height);
  out->append(buf);
  std::snprintf(buf, sizeof buf, "<text x=\"16\" y=\"26\" font-size=\"16\" font-weight=\"bold\">%s</text>\n",
                Escape(title).c_str());
  out->append(buf);
  // Legend.
  for (int s = 0; s < 3; ++s) {
    const int x = 16 + s * 130;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%d\" y=\"40\" width=\"14\" height=\"14\" fill=\"%s\" stroke=\"#495057\" stroke-width=\"0.5\"/>"
                  "<text x=\"%d\" y=\"52\">%s</text>\n",
                  x, kColour[s], x + 20, kName[s]);
    out->append(buf);
  }
  out->append("<text x=\"420\" y=\"52\" fill=\"#495057\">each column: bytes per state, stacked; any state present "
              "gets at least 2 px</text>\n");
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    const int y = kTop + static_cast<int>(i) * (kBandHeight + kBandGap);
    std::snprintf(buf, sizeof buf,
                  "<g><text x=\"%d\" y=\"%d\" text-anchor=\"end\" font-weight=\"bold\">%s</text>"
                  "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" fill=\"#495057\">%s, %" PRIu64 " runs</text>\n",
                  kLeft - 8, y + 15, Escape(b.name()).c_str(), kLeft - 8, y + 30, HumanBytes(static_cast<double>(b.size()), true).c_str(),
                  b.CountRuns());
    out->append(buf);
    // Bytes per state in each column.
    std::vector<std::array<double, 3>> col(kColumns, {0, 0, 0});
    const double per_col = static_cast<double>(b.size()) / kColumns;
    b.ForEachRun([&](const ByteRun& r) {
      double a = static_cast<double>(r.offset), e = static_cast<double>(r.offset + r.length);
      int c0 = std::min(kColumns - 1, static_cast<int>(a / per_col));
      int c1 = std::min(kColumns - 1, static_cast<int>((e - 1) / per_col));
      for (int c = c0; c <= c1; ++c) {
        const double lo = std::max(a, c * per_col), hi = std::min(e, (c + 1) * per_col);
        col[c][static_cast<int>(r.state)] += std::max(0.0, hi - lo);
      }
      return true;
    });
    // Heights in whole pixels, every present state at least kMinPixels.
    auto heights = [](const std::array<double, 3>& v) {
      std::array<int, 3> h{0, 0, 0};
      const double total = v[0] + v[1] + v[2];
      int used = 0, present = 0;
      for (int s = 0; s < 3; ++s) {
        if (v[s] <= 0) continue;
        ++present;
        h[s] = std::max(kMinPixels, static_cast<int>(std::lround(kBandHeight * v[s] / total)));
        used += h[s];
      }
      // Give or take the rounding from the largest share.
      int big = static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
      h[big] = std::max(present > 1 ? kMinPixels : kBandHeight, h[big] + kBandHeight - used);
      return h;
    };
    int c = 0;
    while (c < kColumns) {
      const std::array<int, 3> h = heights(col[c]);
      int run = 1;  // merge equal neighbouring columns into one rectangle
      while (c + run < kColumns && heights(col[c + run]) == h) ++run;
      int yy = y;
      for (int s : {0, 2, 1}) {  // shared on top, then discarded, private at the bottom
        if (h[s] == 0) continue;
        std::snprintf(buf, sizeof buf, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>", kLeft + c, yy,
                      run, h[s], kColour[s]);
        out->append(buf);
        yy += h[s];
      }
      c += run;
    }
    std::snprintf(buf, sizeof buf,
                  "\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#343a40\" stroke-width=\"1\"/>\n",
                  kLeft - 0.5, y - 0.5, kColumns + 1, kBandHeight + 1);
    out->append(buf);
    // Address ticks.
    const uint64_t step = TickStep(b.size());
    for (uint64_t t = 0; t <= b.size() && t / step <= 64; t += step) {
      const double x = kLeft + static_cast<double>(t) / static_cast<double>(b.size()) * kColumns;
      std::snprintf(buf, sizeof buf,
                    "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#343a40\"/>"
                    "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" font-size=\"10\" fill=\"#495057\">%s</text>\n",
                    x, y + kBandHeight, x, y + kBandHeight + 5, x, y + kBandHeight + 17, HumanBytes(static_cast<double>(t), true).c_str());
      out->append(buf);
      if (t + step < t) break;
    }
    out->append("</g>\n");
  }
  out->append("</svg>\n");
}

}  // namespace cvmstate::tools
