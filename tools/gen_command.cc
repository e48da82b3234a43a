// cvmstate gen --profile NAME --size SIZE [--seed N] [--ops N]
#include <cstdio>
#include <memory>
#include <string>

#include "text/trace.h"
#include "tools/commands.h"
#include "tools/output.h"
#include "tools/workload.h"

namespace cvmstate::tools {
namespace {

struct GenOptions {
  std::string profile;
  std::string size;
  uint64_t seed = 1;
  uint64_t ops = 10000;
};

int RunGen(const GenOptions& o) {
  auto size = ParseTraceNumber(o.size);
  if (!size.ok()) return Fail("--size: " + size.status().message());
  OutputBuffer out(stdout);
  Status s = GenerateWorkload(o.profile, size.value(), o.seed, o.ops, out.buffer(),
                              [&out](std::string*) { out.Flush(); });
  if (!s.ok()) return Fail(s.message());
  if (!out.Flush()) return Fail("cannot write the trace to standard output");
  return 0;
}

}  // namespace

void AddGenCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<GenOptions>();
  std::string profiles;
  for (const auto& p : WorkloadProfiles()) profiles += std::string("\n  ") + p.name + ": " + p.what;
  CLI::App* sub = app.add_subcommand(
      "gen", "Write a trace of a realistic confidential-VM workload to stdout.\nProfiles:" + profiles +
                 "\nExample: cvmstate gen --profile steady --size 1T --ops 200000 > steady.trace");
  std::vector<std::string> names;
  for (const auto& p : WorkloadProfiles()) names.push_back(p.name);
  sub->add_option("--profile", o->profile, "Workload profile")->required()->check(CLI::IsMember(names));
  sub->add_option("--size", o->size, "Guest RAM size, in trace number syntax (e.g. 64G, 1T, 0x100000000)")
      ->required();
  sub->add_option("--seed", o->seed, "Random seed; the same seed gives the same trace (default 1)");
  sub->add_option("--ops", o->ops, "Number of operations (default 10000)")->check(CLI::Range(uint64_t{0}, uint64_t{1} << 32));
  sub->callback([o, exit_code] { *exit_code = RunGen(*o); });
}

}  // namespace cvmstate::tools
