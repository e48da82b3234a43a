// The C API (include/cvmstate/cvmstate.h) over the C++ library.
#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cvmstate/cvmstate.h"
#include "migration/byte_stream.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "session/incoming.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
#include "tracker/block_tracker.h"
#include "tracker/format.h"
#include "tracker/listener.h"
#include "tracker/names.h"
#include "tracker/state_digest.h"

using cvmstate::Status;

struct cvmstate_vm {
  cvmstate::VmState state;
  int listener_error = 0;  // the code of the last refusing C listener
  // One checkpointer per (store, VM id) this vm was checkpointed to. A store
  // that closes drops its entries here (see cvmstate_store::vms), so a later
  // store at the same address starts afresh. Declared after `state`: the
  // checkpointers read its journal and go first.
  std::map<std::pair<const cvmstate_store*, std::string>, std::unique_ptr<cvmstate::VmCheckpointer>> checkpointers;
  // The stores listing this vm in their `vms`, so that freeing it takes it
  // out of every one.
  std::set<cvmstate_store*> stores;
  // Guards checkpointers and stores: another thread's cvmstate_store_delete
  // or cvmstate_store_close of a shared store edits them. A checkpoint holds
  // it throughout, so such an edit waits for it. Order: a store's mu, then a
  // vm's cp_mu, never the other way.
  std::mutex cp_mu;
  // The live listener handles registered with this vm: a handle is checked
  // by membership (never dereferenced) before use, so a handle of another
  // vm, or one already unregistered, is refused instead of used.
  std::set<cvmstate_listener*> listeners;
};

struct cvmstate_listener {
  std::unique_ptr<cvmstate::StateListener> impl;
  cvmstate::BlockTracker* block;
};

struct cvmstate_store {
  std::unique_ptr<cvmstate::CheckpointStore> store;
  std::mutex mu;                  // guards vms (a store may be shared by threads)
  std::set<cvmstate_vm*> vms;     // vms holding a checkpointer of this store
};

struct cvmstate_source {
  cvmstate_vm* vm;
  std::string id, key;
  std::unique_ptr<cvmstate::ByteSink> sink;
  std::unique_ptr<cvmstate::ByteSource> source;
  std::unique_ptr<cvmstate::MigrationSource> src;
  // Over an fd: the channel's two ends, whose deadlines set_timeout changes.
  cvmstate::FdSink* fd_sink = nullptr;
  cvmstate::FdSource* fd_source = nullptr;
  bool finished = false;  // cvmstate_source_finish was called: nothing more is sent
};

struct cvmstate_destination {
  std::unique_ptr<cvmstate::ByteSink> sink;
  std::unique_ptr<cvmstate::ByteSource> source;
  cvmstate::IncomingOptions options;
  // The library's incoming sequence; v0 callers run its steps one by one
  // (receive, cvmstate_store_commit, their own listeners, ack).
  std::unique_ptr<cvmstate::IncomingMigration> incoming;
  bool acknowledged = false;  // cvmstate_destination_ack was called: nothing more is sent
};

namespace {

thread_local std::string g_last_error;

// Sets the thread's message, on one line whatever the layers below put in it
// (a path in a RocksDB or key-file message is the caller's text): control
// bytes become \xNN.
int Fail(int code, std::string msg) {
  g_last_error.clear();
  for (unsigned char c : msg) {
    if (c >= 0x20 && c != 0x7f) {
      g_last_error += static_cast<char>(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      g_last_error += "\\x";
      g_last_error += kHex[c >> 4];
      g_last_error += kHex[c & 15];
    }
  }
  return code;
}

// The errno of each status code: by code, never by message.
int ErrnoOf(Status::Code code) {
  switch (code) {
    case Status::Code::kOk:
      return 0;
    case Status::Code::kInvalidArgument:
      return -EINVAL;
    case Status::Code::kNotFound:
      return -ENOENT;
    case Status::Code::kAlreadyExists:
      return -EEXIST;
    case Status::Code::kCorruption:
      return -EBADMSG;
    case Status::Code::kRefused:
      return -EACCES;
    case Status::Code::kTimedOut:
      return -ETIMEDOUT;
    case Status::Code::kCancelled:
      return -ECANCELED;
    case Status::Code::kIOError:
      return -EIO;
  }
  return -EIO;
}

int FromStatus(const Status& s) { return s.ok() ? 0 : Fail(ErrnoOf(s.code()), s.message()); }

// A pointer argument that must not be NULL was.
int NullArgument(const char* name) { return Fail(-EINVAL, std::string("null argument: ") + name); }
int NoBlock(const char* name) { return Fail(-ENOENT, "no block " + cvmstate::Quoted(name)); }
int Finished() { return Fail(-EINVAL, "the migration has finished"); }

// A file descriptor the caller says is connected: at least an open one.
int CheckFd(int fd) {
  if (fd < 0) return Fail(-EINVAL, "invalid file descriptor " + std::to_string(fd));
  if (fcntl(fd, F_GETFD) == -1)
    return Fail(-EBADF, "file descriptor " + std::to_string(fd) + " is not open");
  return 0;
}

// Runs f, turning any exception into an error code: none crosses into C.
template <typename F>
int Guard(F&& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return Fail(-ENOMEM, "out of memory");
  } catch (const std::exception& e) {
    return Fail(-EIO, e.what());
  } catch (...) {
    return Fail(-EIO, "unknown error");
  }
}

// The block `name` of vm, or nullptr after setting the error (-EINVAL for a
// NULL argument, -ENOENT for no such block) in *err.
cvmstate::BlockTracker* FindBlock(const cvmstate_vm* vm, const char* name, int* err) {
  if (vm == nullptr) {
    *err = NullArgument("vm");
    return nullptr;
  }
  if (name == nullptr) {
    *err = NullArgument("block");
    return nullptr;
  }
  cvmstate::BlockTracker* b = const_cast<cvmstate::VmState&>(vm->state).Find(name);
  if (b == nullptr) *err = NoBlock(name);
  return b;
}

bool ValidState(int s) { return s >= 0 && s <= 2; }

// A caller's text for a message, on one line: bytes outside printable
// ASCII become \xNN (as Quoted, without quotes or a length cut).
std::string OneLine(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

int InvalidVmId(const char* id) {
  return Fail(-EINVAL, "invalid VM id " + cvmstate::Quoted(id) + " (" + cvmstate::kVmIdRule + ")");
}

int CheckTimeout(double timeout_seconds) {
  // NaN fails both comparisons.
  if (timeout_seconds > 0 && timeout_seconds <= CVMSTATE_MAX_TIMEOUT_SECONDS) return 0;
  return Fail(-EINVAL, "timeout_seconds must be finite, above 0 and at most " +
                           cvmstate::FormatSeconds(CVMSTATE_MAX_TIMEOUT_SECONDS) + " (got " +
                           std::to_string(timeout_seconds) + ")");
}

// What a source over a file descriptor waits for each read (the challenge,
// the acknowledgement) and each write, until cvmstate_source_set_timeout.
constexpr double kSourceFdTimeoutSeconds = 120;

class CDmaListener final : public cvmstate::DmaMappingListener {
 public:
  CDmaListener(const cvmstate_dma_ops& ops, void* opaque, cvmstate_vm* vm) : ops_(ops), opaque_(opaque), vm_(vm) {}
  std::string name() const override { return "dma (C)"; }
  uint64_t granularity() const override { return ops_.granularity; }
  bool accepts_double_discard() const override { return ops_.double_discard_supported != 0; }
  Status NotifyPopulate(uint64_t offset, uint64_t size) override {
    const int r = ops_.populate ? ops_.populate(opaque_, offset, size) : 0;
    if (r == 0) return Status::OK();
    vm_->listener_error = r < 0 ? r : -EPERM;
    return Status::Refused("the DMA listener returned " + std::to_string(r));
  }
  void NotifyDiscard(uint64_t offset, uint64_t size) override {
    if (ops_.discard) ops_.discard(opaque_, offset, size);
  }

 private:
  cvmstate_dma_ops ops_;
  void* opaque_;
  cvmstate_vm* vm_;
};

class CAttrListener final : public cvmstate::MemoryAttributeListener {
 public:
  CAttrListener(const cvmstate_attr_ops& ops, void* opaque, cvmstate_vm* vm) : ops_(ops), opaque_(opaque), vm_(vm) {}
  std::string name() const override { return "memory-attributes (C)"; }
  uint64_t granularity() const override { return ops_.granularity; }
  Status SetPrivate(uint64_t offset, uint64_t size) override {
    const int r = ops_.set_private ? ops_.set_private(opaque_, offset, size) : 0;
    if (r == 0) return Status::OK();
    vm_->listener_error = r < 0 ? r : -EPERM;
    return Status::Refused("the memory-attribute listener returned " + std::to_string(r));
  }
  void ClearPrivate(uint64_t offset, uint64_t size) override {
    if (ops_.clear_private) ops_.clear_private(opaque_, offset, size);
  }

 private:
  cvmstate_attr_ops ops_;
  void* opaque_;
  cvmstate_vm* vm_;
};

class IoSink final : public cvmstate::ByteSink {
 public:
  IoSink(const cvmstate_io& io, void* opaque) : io_(io), opaque_(opaque) {}
  Status Write(std::string_view d) override {
    while (!d.empty()) {
      const long n = io_.write(opaque_, d.data(), d.size());
      if (n <= 0) return Status::IOError("the migration channel's write failed (" + std::to_string(n) + ")");
      d.remove_prefix(static_cast<size_t>(n));
    }
    return Status::OK();
  }

 private:
  cvmstate_io io_;
  void* opaque_;
};

class IoSource final : public cvmstate::ByteSource {
 public:
  IoSource(const cvmstate_io& io, void* opaque) : io_(io), opaque_(opaque) {}
  Status Read(void* buf, size_t n) override {
    char* p = static_cast<char*>(buf);
    while (n > 0) {
      const long got = io_.read(opaque_, p, n);
      if (got == 0) return Status::IOError("the stream ended in the middle of a frame or before its end frame");
      if (got < 0) return Status::IOError("the migration channel's read failed (" + std::to_string(got) + ")");
      p += got;
      n -= static_cast<size_t>(got);
    }
    return Status::OK();
  }

 private:
  cvmstate_io io_;
  void* opaque_;
};

// How long a key file that is a pipe or FIFO may take to deliver its key.
constexpr double kKeyFileTimeoutSeconds = 30;

int LoadKey(const char* psk_file, std::string* key) {
  if (psk_file == nullptr) return 0;
  auto k = cvmstate::LoadPskFile(psk_file, kKeyFileTimeoutSeconds);
  if (!k.ok()) return FromStatus(k.status());
  *key = std::move(k).value();
  return 0;
}

template <typename Ops, typename Impl>
int Register(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, const Ops* ops, void* opaque,
             cvmstate_listener** out) {
  return Guard([&] {
    int err = 0;
    cvmstate::BlockTracker* b = FindBlock(vm, block, &err);
    if (b == nullptr) return err;
    if (ops == nullptr) return NullArgument("ops");
    if (out == nullptr) return NullArgument("out");
    auto l = std::make_unique<cvmstate_listener>();
    l->impl = std::make_unique<Impl>(*ops, opaque, vm);
    l->block = b;
    vm->listener_error = 0;
    Status s = b->RegisterListener(l->impl.get(), offset, size);
    if (!s.ok())
      return vm->listener_error != 0 ? Fail(vm->listener_error, s.message()) : FromStatus(s);
    vm->listeners.insert(l.get());
    *out = l.release();
    return 0;
  });
}

}  // namespace

extern "C" {

uint32_t cvmstate_version(void) { return CVMSTATE_VERSION; }
const char* cvmstate_last_error(void) { return g_last_error.c_str(); }

cvmstate_vm* cvmstate_vm_new(void) { return new (std::nothrow) cvmstate_vm(); }
void cvmstate_vm_free(cvmstate_vm* vm) {
  if (vm == nullptr) return;
  std::set<cvmstate_store*> stores;
  {
    std::lock_guard<std::mutex> lock(vm->cp_mu);
    stores = vm->stores;
  }
  for (cvmstate_store* st : stores) {
    std::lock_guard<std::mutex> lock(st->mu);
    st->vms.erase(vm);
  }
  // Listeners still registered die with the vm, untold (the caller should
  // have unregistered them; their handles are now invalid).
  for (cvmstate_listener* l : vm->listeners) delete l;
  vm->listeners.clear();
  delete vm;
}

int cvmstate_vm_add_block(cvmstate_vm* vm, const char* name, uint64_t size, uint64_t page_size, int initial) {
  return Guard([&] {
    if (vm == nullptr) return NullArgument("vm");
    if (name == nullptr) return NullArgument("name");
    if (!ValidState(initial))
      return Fail(-EINVAL, "invalid initial state " + std::to_string(initial));
    return FromStatus(vm->state.AddBlock(name, size, page_size, static_cast<cvmstate::PageState>(initial)));
  });
}

int cvmstate_convert(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, int state) {
  return Guard([&] {
    int err = 0;
    cvmstate::BlockTracker* b = FindBlock(vm, block, &err);
    if (b == nullptr) return err;
    if (!ValidState(state)) return Fail(-EINVAL, "invalid state " + std::to_string(state));
    vm->listener_error = 0;
    Status s = b->Convert(offset, size, static_cast<cvmstate::PageState>(state));
    if (!s.ok() && s.code() == Status::Code::kRefused && vm->listener_error != 0) {
      return Fail(vm->listener_error, s.message());
    }
    return FromStatus(s);
  });
}

int cvmstate_state_at(const cvmstate_vm* vm, const char* block, uint64_t offset) {
  return Guard([&] {
    int err = 0;
    const cvmstate::BlockTracker* b = FindBlock(vm, block, &err);
    if (b == nullptr) return err;
    if (offset >= b->size()) return Fail(-EINVAL, "offset past the end of the block");
    return static_cast<int>(b->StateAt(offset));
  });
}

int cvmstate_for_each_run(const cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, int state,
                          cvmstate_run_fn fn, void* opaque) {
  return Guard([&] {
    int err = 0;
    const cvmstate::BlockTracker* b = FindBlock(vm, block, &err);
    if (b == nullptr) return err;
    if (fn == nullptr) return NullArgument("fn");
    if (state != -1 && !ValidState(state))
      return Fail(-EINVAL, "invalid state " + std::to_string(state));
    if (offset > b->size() || size > b->size() - offset) {
      return Fail(-EINVAL, "range [" + cvmstate::Hex(offset) + ", +" + cvmstate::Hex(size) +
                               ") is not inside block " + cvmstate::Quoted(b->name()) + " (size " +
                               cvmstate::Hex(b->size()) + ")");
    }
    if (size == 0) return 0;
    // The pages holding [offset, end), each run then clipped to exactly it.
    const uint64_t end = offset + size, mask = b->page_size() - 1;
    const uint64_t first = offset & ~mask, last = ((end - 1) | mask) + 1;  // <= the block's size
    int stopped = 0;
    b->ForEachRun(first, last - first, [&](const cvmstate::ByteRun& r) {
      if (state != -1 && static_cast<int>(r.state) != state) return true;
      const uint64_t a = std::max(r.offset, offset), e = std::min(r.offset + r.length, end);
      stopped = fn(opaque, a, e - a, static_cast<int>(r.state));
      return stopped == 0;
    });
    return stopped;
  });
}

int cvmstate_vm_digest(const cvmstate_vm* vm, uint64_t* digest) {
  return Guard([&] {
    if (vm == nullptr) return NullArgument("vm");
    if (digest == nullptr) return NullArgument("digest");
    *digest = cvmstate::ComputeStateDigest(vm->state);
    return 0;
  });
}

int cvmstate_register_dma_listener(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                   const cvmstate_dma_ops* ops, void* opaque, cvmstate_listener** out) {
  return Register<cvmstate_dma_ops, CDmaListener>(vm, block, offset, size, ops, opaque, out);
}

int cvmstate_register_attr_listener(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                    const cvmstate_attr_ops* ops, void* opaque, cvmstate_listener** out) {
  return Register<cvmstate_attr_ops, CAttrListener>(vm, block, offset, size, ops, opaque, out);
}

int cvmstate_unregister_listener(cvmstate_vm* vm, cvmstate_listener* l) {
  return Guard([&] {
    if (vm == nullptr) return NullArgument("vm");
    if (l == nullptr) return NullArgument("listener");
    // By membership first: the pointer is not dereferenced unless it is a
    // live listener of this vm.
    if (vm->listeners.count(l) == 0) {
      return Fail(
          -ENOENT,
          "the listener is not registered with this vm (unregistered already, or another vm's)");
    }
    Status s = l->block->UnregisterListener(l->impl.get());
    if (!s.ok()) return FromStatus(s);
    vm->listeners.erase(l);
    delete l;
    return 0;
  });
}

int cvmstate_store_open(const char* dir, cvmstate_store** out) {
  return Guard([&] {
    if (dir == nullptr) return NullArgument("dir");
    if (out == nullptr) return NullArgument("out");
    auto s = cvmstate::CheckpointStore::Open(dir);
    if (!s.ok()) return FromStatus(s.status());
    auto h = std::make_unique<cvmstate_store>();
    h->store = std::move(s).value();
    *out = h.release();
    return 0;
  });
}

void cvmstate_store_close(cvmstate_store* store) {
  if (store == nullptr) return;
  {
    // Drop this store's checkpointers from every vm that has one, so that a
    // later store opened at the same address starts afresh.
    std::lock_guard<std::mutex> lock(store->mu);
    for (cvmstate_vm* vm : store->vms) {
      std::lock_guard<std::mutex> vlock(vm->cp_mu);
      std::erase_if(vm->checkpointers, [store](const auto& e) { return e.first.first == store; });
      vm->stores.erase(store);
    }
  }
  delete store;
}

int cvmstate_checkpoint(cvmstate_store* store, cvmstate_vm* vm, const char* vm_id, uint64_t* bytes) {
  return Guard([&] {
    if (store == nullptr) return NullArgument("store");
    if (vm == nullptr) return NullArgument("vm");
    if (vm_id == nullptr) return NullArgument("vm_id");
    // Checked before a checkpointer is made for it.
    if (!cvmstate::IsValidVmId(vm_id)) return InvalidVmId(vm_id);
    {
      std::lock_guard<std::mutex> lock(store->mu);
      if (store->vms.insert(vm).second) {
        std::lock_guard<std::mutex> vlock(vm->cp_mu);
        vm->stores.insert(store);
      }
    }
    std::lock_guard<std::mutex> vlock(vm->cp_mu);
    auto& cp = vm->checkpointers[{store, vm_id}];
    if (!cp) cp = std::make_unique<cvmstate::VmCheckpointer>(store->store.get(), vm_id);
    auto c = cp->CommitState(vm->state);
    if (!c.ok()) return FromStatus(c.status());
    if (bytes) *bytes = c->bytes;
    return 0;
  });
}

int cvmstate_store_load(cvmstate_store* store, const char* vm_id, cvmstate_vm** out) {
  return Guard([&] {
    if (store == nullptr) return NullArgument("store");
    if (vm_id == nullptr) return NullArgument("vm_id");
    if (out == nullptr) return NullArgument("out");
    if (!cvmstate::IsValidVmId(vm_id)) return InvalidVmId(vm_id);
    auto vm = store->store->Load(vm_id);
    if (!vm.ok()) return FromStatus(vm.status());
    auto h = std::make_unique<cvmstate_vm>();
    h->state = std::move(vm).value();
    *out = h.release();
    return 0;
  });
}

int cvmstate_store_commit(cvmstate_store* store, const char* vm_id, const cvmstate_vm* vm) {
  return Guard([&] {
    if (store == nullptr) return NullArgument("store");
    if (vm_id == nullptr) return NullArgument("vm_id");
    if (vm == nullptr) return NullArgument("vm");
    if (!cvmstate::IsValidVmId(vm_id)) return InvalidVmId(vm_id);
    auto b = store->store->CommitNew(vm_id, vm->state);
    return b.ok() ? 0 : FromStatus(b.status());
  });
}

int cvmstate_store_delete(cvmstate_store* store, const char* vm_id) {
  return Guard([&] {
    if (store == nullptr) return NullArgument("store");
    if (vm_id == nullptr) return NullArgument("vm_id");
    if (!cvmstate::IsValidVmId(vm_id)) return InvalidVmId(vm_id);
    auto has = store->store->HasVm(vm_id);
    if (!has.ok()) return FromStatus(has.status());
    if (!has.value())
      return Fail(-ENOENT, "no checkpoint of VM " + cvmstate::Quoted(vm_id) + " in this store");
    // Every vm checkpointed to this id here forgets its checkpointer: the
    // next checkpoint of the id must be a whole one, not changes on a base
    // that is gone. Each vm stays locked until the delete is written, so no
    // checkpoint of it lands between the two (a vm not yet listed waits on
    // store->mu to be listed).
    std::lock_guard<std::mutex> lock(store->mu);
    std::vector<std::unique_lock<std::mutex>> held;
    for (cvmstate_vm* vm : store->vms) {
      held.emplace_back(vm->cp_mu);
      vm->checkpointers.erase({store, std::string(vm_id)});
    }
    return FromStatus(store->store->DeleteVm(vm_id));
  });
}

static int NewSource(cvmstate_vm* vm, const char* vm_id, std::unique_ptr<cvmstate::ByteSink> sink,
                     std::unique_ptr<cvmstate::ByteSource> source, const char* psk_file, cvmstate_source** out) {
  if (vm == nullptr) return NullArgument("vm");
  if (vm_id == nullptr) return NullArgument("vm_id");
  if (out == nullptr) return NullArgument("out");
  if (!cvmstate::IsValidVmId(vm_id)) return InvalidVmId(vm_id);
  auto s = std::make_unique<cvmstate_source>();
  s->vm = vm;
  s->id = vm_id;
  int r = LoadKey(psk_file, &s->key);
  if (r != 0) return r;
  s->sink = std::move(sink);
  s->source = std::move(source);
  *out = s.release();
  return 0;
}

int cvmstate_source_new_fd(cvmstate_vm* vm, const char* vm_id, int fd, const char* psk_file, cvmstate_source** out) {
  return Guard([&] {
    if (vm == nullptr) return NullArgument("vm");
    if (vm_id == nullptr) return NullArgument("vm_id");
    if (out == nullptr) return NullArgument("out");
    const int r = CheckFd(fd);
    if (r != 0) return r;
    auto sink = std::make_unique<cvmstate::FdSink>(fd, kSourceFdTimeoutSeconds);
    auto source = std::make_unique<cvmstate::FdSource>(fd, kSourceFdTimeoutSeconds);
    cvmstate::FdSink* fd_sink = sink.get();
    cvmstate::FdSource* fd_source = source.get();
    const int made = NewSource(vm, vm_id, std::move(sink), std::move(source), psk_file, out);
    if (made == 0) {
      (*out)->fd_sink = fd_sink;
      (*out)->fd_source = fd_source;
    }
    return made;
  });
}

int cvmstate_source_set_timeout(cvmstate_source* src, double timeout_seconds) {
  return Guard([&] {
    if (src == nullptr) return NullArgument("src");
    const int t = CheckTimeout(timeout_seconds);
    if (t != 0) return t;
    if (src->fd_sink == nullptr) {
      return Fail(-EINVAL, "the source runs over callbacks (cvmstate_source_new_io): they bound their own waits");
    }
    src->fd_sink->set_timeout(timeout_seconds);
    src->fd_source->set_timeout(timeout_seconds);
    return 0;
  });
}

int cvmstate_source_new_io(cvmstate_vm* vm, const char* vm_id, const cvmstate_io* io, void* opaque,
                           const char* psk_file, cvmstate_source** out) {
  return Guard([&] {
    if (io == nullptr) return NullArgument("io");
    if (io->read == nullptr) return NullArgument("io->read");
    if (io->write == nullptr) return NullArgument("io->write");
    return NewSource(vm, vm_id, std::make_unique<IoSink>(*io, opaque), std::make_unique<IoSource>(*io, opaque),
                     psk_file, out);
  });
}

int cvmstate_source_begin(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (s == nullptr) return NullArgument("src");
    if (s->finished) return Finished();
    if (s->src) return Fail(-EINVAL, "the source has already begun");
    auto nonce = cvmstate::MigrationSource::ReadChallenge(s->source.get());
    if (!nonce.ok()) return FromStatus(nonce.status());
    s->src = std::make_unique<cvmstate::MigrationSource>(&s->vm->state, s->id, s->sink.get());
    s->src->SetKey(s->key);
    Status st = s->src->Begin(nonce.value());
    if (!st.ok()) return FromStatus(st);
    if (bytes) *bytes = s->src->rounds().back().bytes;
    return 0;
  });
}

int cvmstate_source_round(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (s == nullptr) return NullArgument("src");
    if (s->finished) return Finished();
    if (!s->src) return Fail(-EINVAL, "the source has not begun");
    auto r = s->src->SendRound();
    if (!r.ok()) return FromStatus(r.status());
    if (bytes) *bytes = r->bytes;
    return 0;
  });
}

int cvmstate_source_finish(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (s == nullptr) return NullArgument("src");
    if (s->finished) return Finished();
    if (!s->src) return Fail(-EINVAL, "the source has not begun");
    // Whatever happens now, the stream is over: a second finish (or a round)
    // must not send more.
    s->finished = true;
    auto r = s->src->Finish();
    if (!r.ok()) return FromStatus(r.status());
    if (bytes) *bytes = r->bytes;
    return FromStatus(s->src->AwaitAck(s->source.get()));
  });
}

uint32_t cvmstate_source_rounds(const cvmstate_source* s) {
  return s && s->src ? static_cast<uint32_t>(s->src->rounds().size()) : 0;
}

uint64_t cvmstate_source_round_bytes(const cvmstate_source* s, uint32_t round) {
  return s && s->src && round < s->src->rounds().size() ? s->src->rounds()[round].bytes : 0;
}

void cvmstate_source_free(cvmstate_source* s) { delete s; }

static int NewDestination(std::unique_ptr<cvmstate::ByteSink> sink, std::unique_ptr<cvmstate::ByteSource> source,
                          const char* psk_file, cvmstate_destination** out) {
  if (out == nullptr) return NullArgument("out");
  auto d = std::make_unique<cvmstate_destination>();
  int r = LoadKey(psk_file, &d->options.stream.key);
  if (r != 0) return r;
  d->sink = std::move(sink);
  d->source = std::move(source);
  *out = d.release();
  return 0;
}

int cvmstate_destination_new_fd(int fd, const char* psk_file, double timeout_seconds, cvmstate_destination** out) {
  return Guard([&] {
    if (out == nullptr) return NullArgument("out");
    const int r = CheckFd(fd);
    if (r != 0) return r;
    const int t = CheckTimeout(timeout_seconds);
    if (t != 0) return t;
    return NewDestination(std::make_unique<cvmstate::FdSink>(fd, timeout_seconds),
                          std::make_unique<cvmstate::FdSource>(fd, timeout_seconds), psk_file, out);
  });
}

int cvmstate_destination_new_io(const cvmstate_io* io, void* opaque, const char* psk_file, cvmstate_destination** out) {
  return Guard([&] {
    if (io == nullptr) return NullArgument("io");
    if (io->read == nullptr) return NullArgument("io->read");
    if (io->write == nullptr) return NullArgument("io->write");
    return NewDestination(std::make_unique<IoSink>(*io, opaque), std::make_unique<IoSource>(*io, opaque), psk_file, out);
  });
}

int cvmstate_destination_set_max_runs(cvmstate_destination* d, uint64_t max_runs) {
  return Guard([&] {
    if (d == nullptr) return NullArgument("dst");
    if (d->incoming) return Fail(-EINVAL, "the destination has already received");
    if (max_runs == 0 || max_runs > cvmstate::MigrationDestination::kMaxMaxRuns) {
      return Fail(-EINVAL, "max_runs must be 1 to 2^32 (got " + std::to_string(max_runs) + ")");
    }
    d->options.stream.max_runs = max_runs;
    return 0;
  });
}

int cvmstate_destination_receive(cvmstate_destination* d, cvmstate_vm** out) {
  return Guard([&] {
    if (d == nullptr) return NullArgument("dst");
    if (out == nullptr) return NullArgument("out");
    if (d->incoming) return Fail(-EINVAL, "the destination has already received");
    d->options.reply = d->sink.get();
    d->incoming = std::make_unique<cvmstate::IncomingMigration>(nullptr, d->options);
    Status s = d->incoming->Receive(d->source.get());
    if (!s.ok()) return FromStatus(s);
    auto h = std::make_unique<cvmstate_vm>();
    h->state = std::move(*d->incoming->TakeState());
    *out = h.release();
    return 0;
  });
}

const char* cvmstate_destination_vm_id(const cvmstate_destination* d) {
  return d && d->incoming ? d->incoming->report().vm_id.c_str() : "";
}

int cvmstate_destination_ack(cvmstate_destination* d, int ok, const char* reason) {
  return Guard([&] {
    if (d == nullptr) return NullArgument("dst");
    if (d->acknowledged) return Finished();
    if (!d->incoming || d->incoming->report().vm_id.empty()) {
      return Fail(-EINVAL, "destination has received nothing");
    }
    d->acknowledged = true;  // one answer only, whatever becomes of it
    if (ok != 0) return FromStatus(d->incoming->Acknowledge());
    (void)d->incoming->Abort(Status::Refused(reason ? OneLine(reason) : "refused"));
    return 0;
  });
}

void cvmstate_destination_free(cvmstate_destination* d) { delete d; }

}  // extern "C"
