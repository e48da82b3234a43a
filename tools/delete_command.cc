// cvmstate delete --db DIR --vm ID: the operator's way out of the
// two-generals window (a destination that committed a VM whose migration
// then failed) and of VMs that are gone.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "store/checkpoint_store.h"
#include "tools/commands.h"
#include "tools/output.h"
#include "tracker/format.h"
#include "tracker/names.h"

namespace cvmstate::tools {
namespace {

struct DeleteOptions {
  std::string db, vm;
};

int RunDelete(const DeleteOptions& o) {
  // Never create a store only to find nothing in it.
  if (access((o.db + "/CURRENT").c_str(), F_OK) != 0) return Fail("no store in " + Quoted(o.db));
  // Read-write: RocksDB's lock refuses while another process holds the store.
  auto store = CheckpointStore::Open(o.db);
  if (!store.ok()) return Fail(store.status().message());
  auto has = store.value()->HasVm(o.vm);
  if (!has.ok()) return Fail(has.status().message());
  if (!has.value()) return Fail("no checkpoint of VM " + Quoted(o.vm) + " in this store");
  Status s = store.value()->DeleteVm(o.vm);
  if (!s.ok()) return Fail(s.message());
  std::fprintf(stderr, "delete: VM %s removed from %s\n", Quoted(o.vm).c_str(), Quoted(o.db).c_str());
  return 0;
}

}  // namespace

void AddDeleteCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<DeleteOptions>();
  CLI::App* del = app.add_subcommand(
      "delete",
      "Remove every checkpoint of a VM from a store, in one synced write (all or\n"
      "nothing). Refused while another process has the store open for writing.\n"
      "Example: cvmstate delete --db dst.db --vm guest1");
  del->add_option("--db", o->db, "Store directory")->required();
  del->add_option("--vm", o->vm, "VM id to remove")->required();
  del->callback([o, exit_code] {
    if (o->db.empty()) {
      std::fprintf(stderr, "cvmstate: usage error: --db must name a directory\n");
      *exit_code = 2;
      return;
    }
    if (!IsValidVmId(o->vm)) {
      std::fprintf(stderr, "cvmstate: usage error: invalid --vm %s (%s)\n", Quoted(o->vm).c_str(), kVmIdRule);
      *exit_code = 2;
      return;
    }
    *exit_code = RunDelete(*o);
  });
}

}  // namespace cvmstate::tools
