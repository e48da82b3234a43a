// Two network namespaces joined by a veth pair, for tests that play two
// hosts: 192.0.2.1 in a(), 192.0.2.2 in b(). Needs root and iproute2.
#ifndef CVMSTATE_TESTS_COMMON_NETNS_H_
#define CVMSTATE_TESTS_COMMON_NETNS_H_

#include <string>
#include <vector>

namespace cvmstate::testing {

class NetnsPair {
 public:
  // Sets the pair up; on failure ok() is false and why() says what is
  // missing (the test should skip), and nothing is left behind.
  NetnsPair();
  ~NetnsPair();  // removes both namespaces (and with them the veth pair)
  NetnsPair(const NetnsPair&) = delete;
  NetnsPair& operator=(const NetnsPair&) = delete;

  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }
  const std::string& a() const { return a_; }
  const std::string& b() const { return b_; }
  // argv run inside namespace ns (a() or b()).
  static std::vector<std::string> In(const std::string& ns, std::vector<std::string> argv);

 private:
  void Remove();
  bool ok_ = false;
  std::string why_, a_, b_;
};

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_COMMON_NETNS_H_
