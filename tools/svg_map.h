// Draws the memory map of a VM as SVG: one band per block, to scale, the
// three states in three colours, a legend and address ticks.
//
// Density rule: the band is cut into pixel columns; a column shows each
// state present in it as a stacked share of its height proportional to the
// bytes in that state, and any state present gets at least two pixels, so a
// single shared page in a terabyte stays visible.
#ifndef CVMSTATE_TOOLS_SVG_MAP_H_
#define CVMSTATE_TOOLS_SVG_MAP_H_

#include <string>

#include "tracker/vm_state.h"

namespace cvmstate::tools {

// Appends a complete SVG document to *out.
void RenderSvgMap(const VmState& vm, const std::string& title, std::string* out);

}  // namespace cvmstate::tools

#endif  // CVMSTATE_TOOLS_SVG_MAP_H_
