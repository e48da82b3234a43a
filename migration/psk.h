// Pre-shared key files for authenticated migration streams.
#ifndef CVMSTATE_MIGRATION_PSK_H_
#define CVMSTATE_MIGRATION_PSK_H_

#include <string>

#include "tracker/status.h"

namespace cvmstate {

// Reads a pre-shared key file (16 bytes to 64 KiB, ideally random) and
// derives the key MigrationSource::SetKey and
// MigrationDestination::Options::key take. A pipe or FIFO (a key handed
// over by `<(...)`) is read until its end, all of it within timeout_seconds
// (TimedOut otherwise: open never blocks). IOError if it cannot be read,
// InvalidArgument if it is a directory or its size is out of range.
Result<std::string> LoadPskFile(const std::string& path, double timeout_seconds);

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_PSK_H_
