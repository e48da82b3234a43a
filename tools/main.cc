// cvmstate: the command-line front end (SPEC.md section 4).
// Exit status: 0 success, 1 the input or operation failed, 2 usage error.
#include <csignal>
#include <cstdio>
#include <exception>
#include <new>

#include "tools/commands.h"
#include "tools/output.h"
#include "tracker/format.h"

namespace cvmstate::tools {

int Fail(const std::string& msg) {
  const std::string line = "cvmstate: error: " + Printable(msg) + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
  return 1;
}

}  // namespace cvmstate::tools

int main(int argc, char** argv) {
  // A closed pipe must give a write error (exit 1), not SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "cvmstate: the page-state store for live migration of confidential VMs.\n"
      "Tracks every page of guest RAM as shared, private or discarded, as runs.\n\n"
      "Examples:\n"
      "  cvmstate gen --profile steady --size 1T --ops 200000 > steady.trace\n"
      "  cvmstate replay steady.trace\n"
      "  cvmstate bench steady.trace\n"
      "  cvmstate demo",
      "cvmstate"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Print help for every subcommand");
  int exit_code = 0;
  cvmstate::tools::AddReplayCommand(app, &exit_code);
  cvmstate::tools::AddGenCommand(app, &exit_code);
  cvmstate::tools::AddDumpCommand(app, &exit_code);
  cvmstate::tools::AddMigrateCommand(app, &exit_code);
  cvmstate::tools::AddDeleteCommand(app, &exit_code);
  cvmstate::tools::AddBenchCommand(app, &exit_code);
  cvmstate::tools::AddDemoCommand(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "cvmstate: usage error: %s (see 'cvmstate --help')\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    return cvmstate::tools::Fail("out of memory");
  } catch (const std::exception& e) {
    return cvmstate::tools::Fail(e.what());
  }
  return exit_code;
}
