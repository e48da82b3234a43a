#include "netns.h"

#include <unistd.h>

#include <cstdlib>

namespace cvmstate::testing {
namespace {

int Sh(const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()); }

}  // namespace

NetnsPair::NetnsPair() {
  if (geteuid() != 0 || Sh("ip -V") != 0) {
    why_ = "needs root and iproute2";
    return;
  }
  const std::string id = std::to_string(getpid());
  a_ = "cvmA" + id;
  b_ = "cvmB" + id;
  if (Sh("ip netns add " + a_) != 0 || Sh("ip netns add " + b_) != 0) {
    Remove();
    why_ = "cannot create network namespaces here";
    return;
  }
  const std::string va = "va" + std::to_string(getpid() % 10000),
                    vb = "vb" + std::to_string(getpid() % 10000);
  ok_ = Sh("ip link add " + va + " type veth peer name " + vb) == 0 &&
        Sh("ip link set " + va + " netns " + a_) == 0 &&
        Sh("ip link set " + vb + " netns " + b_) == 0 &&
        Sh("ip -n " + a_ + " addr add 192.0.2.1/24 dev " + va) == 0 &&
        Sh("ip -n " + b_ + " addr add 192.0.2.2/24 dev " + vb) == 0 &&
        Sh("ip -n " + a_ + " link set " + va + " up") == 0 &&
        Sh("ip -n " + b_ + " link set " + vb + " up") == 0 &&
        Sh("ip -n " + a_ + " link set lo up") == 0 && Sh("ip -n " + b_ + " link set lo up") == 0;
  if (!ok_) {
    Remove();
    why_ = "cannot set up a veth pair between namespaces here";
  }
}

NetnsPair::~NetnsPair() {
  if (ok_) Remove();
}

void NetnsPair::Remove() {
  if (!a_.empty()) Sh("ip netns del " + a_);
  if (!b_.empty()) Sh("ip netns del " + b_);
}

std::vector<std::string> NetnsPair::In(const std::string& ns, std::vector<std::string> argv) {
  argv.insert(argv.begin(), {"/usr/bin/ip", "netns", "exec", ns});
  return argv;
}

}  // namespace cvmstate::testing
