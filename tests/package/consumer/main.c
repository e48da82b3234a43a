/* Links against an installed cvmstate and uses it a little. */
#include <cvmstate/cvmstate.h>
#include <stdio.h>

int main(void) {
  if (cvmstate_version() != CVMSTATE_VERSION) return 1;
  cvmstate_vm* vm = cvmstate_vm_new();
  if (cvmstate_vm_add_block(vm, "pc.ram", 1u << 30, 4096, CVMSTATE_PRIVATE) != 0) return 1;
  if (cvmstate_convert(vm, "pc.ram", 4096, 8192, CVMSTATE_SHARED) != 0) return 1;
  int ok = cvmstate_state_at(vm, "pc.ram", 8192) == CVMSTATE_SHARED;
  cvmstate_vm_free(vm);
  printf("consumer: %s\n", ok ? "ok" : "wrong state");
  return ok ? 0 : 1;
}
