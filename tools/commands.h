// The subcommands of the `cvmstate` program. Each Add*Command registers its
// subcommand on app; when it runs, its exit status goes to *exit_code.
#ifndef CVMSTATE_TOOLS_COMMANDS_H_
#define CVMSTATE_TOOLS_COMMANDS_H_

#include <CLI/CLI.hpp>

namespace cvmstate::tools {

void AddReplayCommand(CLI::App& app, int* exit_code);
void AddGenCommand(CLI::App& app, int* exit_code);
void AddBenchCommand(CLI::App& app, int* exit_code);
void AddDemoCommand(CLI::App& app, int* exit_code);
void AddDumpCommand(CLI::App& app, int* exit_code);
void AddMigrateCommand(CLI::App& app, int* exit_code);
void AddDeleteCommand(CLI::App& app, int* exit_code);

}  // namespace cvmstate::tools

#endif  // CVMSTATE_TOOLS_COMMANDS_H_
