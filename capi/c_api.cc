// The C API (include/cvmstate/cvmstate.h) over the C++ library.
#include "cvmstate/cvmstate.h"

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <utility>

#include "migration/byte_stream.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "session/incoming.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
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
};

struct cvmstate_destination {
  std::unique_ptr<cvmstate::ByteSink> sink;
  std::unique_ptr<cvmstate::ByteSource> source;
  cvmstate::IncomingOptions options;
  // The library's incoming sequence; v0 callers run its steps one by one
  // (receive, cvmstate_store_commit, their own listeners, ack).
  std::unique_ptr<cvmstate::IncomingMigration> incoming;
};

namespace {

thread_local std::string g_last_error;

int Fail(int code, std::string msg) {
  g_last_error = std::move(msg);
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

cvmstate::BlockTracker* FindBlock(const cvmstate_vm* vm, const char* name) {
  return vm && name ? const_cast<cvmstate::VmState&>(vm->state).Find(name) : nullptr;
}

bool ValidState(int s) { return s >= 0 && s <= 2; }

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

int LoadKey(const char* psk_file, std::string* key) {
  if (psk_file == nullptr) return 0;
  auto k = cvmstate::LoadPskFile(psk_file);
  if (!k.ok()) return FromStatus(k.status());
  *key = std::move(k).value();
  return 0;
}

template <typename Ops, typename Impl>
int Register(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, const Ops* ops, void* opaque,
             cvmstate_listener** out) {
  return Guard([&] {
    cvmstate::BlockTracker* b = FindBlock(vm, block);
    if (b == nullptr) return Fail(-ENOENT, std::string("no block '") + (block ? block : "(null)") + "'");
    if (ops == nullptr || out == nullptr) return Fail(-EINVAL, "null argument");
    auto l = std::make_unique<cvmstate_listener>();
    l->impl = std::make_unique<Impl>(*ops, opaque, vm);
    l->block = b;
    vm->listener_error = 0;
    Status s = b->RegisterListener(l->impl.get(), offset, size);
    if (!s.ok()) return vm->listener_error != 0 ? Fail(vm->listener_error, s.message()) : FromStatus(s);
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
  for (const auto& e : vm->checkpointers) stores.insert(const_cast<cvmstate_store*>(e.first.first));
  for (cvmstate_store* st : stores) {
    std::lock_guard<std::mutex> lock(st->mu);
    st->vms.erase(vm);
  }
  delete vm;
}

int cvmstate_vm_add_block(cvmstate_vm* vm, const char* name, uint64_t size, uint64_t page_size, int initial) {
  return Guard([&] {
    if (vm == nullptr || name == nullptr || !ValidState(initial)) return Fail(-EINVAL, "invalid argument");
    return FromStatus(vm->state.AddBlock(name, size, page_size, static_cast<cvmstate::PageState>(initial)));
  });
}

int cvmstate_convert(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, int state) {
  return Guard([&] {
    cvmstate::BlockTracker* b = FindBlock(vm, block);
    if (b == nullptr) return Fail(-ENOENT, std::string("no block '") + (block ? block : "(null)") + "'");
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
    const cvmstate::BlockTracker* b = FindBlock(vm, block);
    if (b == nullptr) return Fail(-ENOENT, "no such block");
    if (offset >= b->size()) return Fail(-EINVAL, "offset past the end of the block");
    return static_cast<int>(b->StateAt(offset));
  });
}

int cvmstate_for_each_run(const cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, int state,
                          cvmstate_run_fn fn, void* opaque) {
  return Guard([&] {
    const cvmstate::BlockTracker* b = FindBlock(vm, block);
    if (b == nullptr) return Fail(-ENOENT, "no such block");
    if (fn == nullptr || (state != -1 && !ValidState(state)) || offset > b->size() || size > b->size() - offset) {
      return Fail(-EINVAL, "invalid argument");
    }
    int stopped = 0;
    b->ForEachRun(offset, size, [&](const cvmstate::ByteRun& r) {
      if (state != -1 && static_cast<int>(r.state) != state) return true;
      stopped = fn(opaque, r.offset, r.length, static_cast<int>(r.state));
      return stopped == 0;
    });
    return stopped;
  });
}

int cvmstate_vm_digest(const cvmstate_vm* vm, uint64_t* digest) {
  return Guard([&] {
    if (vm == nullptr || digest == nullptr) return Fail(-EINVAL, "null argument");
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
    if (vm == nullptr || l == nullptr) return Fail(-EINVAL, "null argument");
    Status s = l->block->UnregisterListener(l->impl.get());
    if (s.ok()) delete l;
    return FromStatus(s);
  });
}

int cvmstate_store_open(const char* dir, cvmstate_store** out) {
  return Guard([&] {
    if (dir == nullptr || out == nullptr) return Fail(-EINVAL, "null argument");
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
      std::erase_if(vm->checkpointers, [store](const auto& e) { return e.first.first == store; });
    }
  }
  delete store;
}

int cvmstate_checkpoint(cvmstate_store* store, cvmstate_vm* vm, const char* vm_id, uint64_t* bytes) {
  return Guard([&] {
    if (store == nullptr || vm == nullptr || vm_id == nullptr) return Fail(-EINVAL, "null argument");
    auto& cp = vm->checkpointers[{store, vm_id}];
    if (!cp) {
      cp = std::make_unique<cvmstate::VmCheckpointer>(store->store.get(), vm_id);
      std::lock_guard<std::mutex> lock(store->mu);
      store->vms.insert(vm);
    }
    auto c = cp->CommitState(vm->state);
    if (!c.ok()) return FromStatus(c.status());
    if (bytes) *bytes = c->bytes;
    return 0;
  });
}

int cvmstate_store_load(cvmstate_store* store, const char* vm_id, cvmstate_vm** out) {
  return Guard([&] {
    if (store == nullptr || vm_id == nullptr || out == nullptr) return Fail(-EINVAL, "null argument");
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
    if (store == nullptr || vm == nullptr || vm_id == nullptr) return Fail(-EINVAL, "null argument");
    auto b = store->store->CommitNew(vm_id, vm->state);
    return b.ok() ? 0 : FromStatus(b.status());
  });
}

static int NewSource(cvmstate_vm* vm, const char* vm_id, std::unique_ptr<cvmstate::ByteSink> sink,
                     std::unique_ptr<cvmstate::ByteSource> source, const char* psk_file, cvmstate_source** out) {
  if (vm == nullptr || vm_id == nullptr || out == nullptr) return Fail(-EINVAL, "null argument");
  if (!cvmstate::IsValidVmId(vm_id)) return Fail(-EINVAL, "invalid VM id " + cvmstate::Quoted(vm_id));
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
    return NewSource(vm, vm_id, std::make_unique<cvmstate::FdSink>(fd), std::make_unique<cvmstate::FdSource>(fd, 120),
                     psk_file, out);
  });
}

int cvmstate_source_new_io(cvmstate_vm* vm, const char* vm_id, const cvmstate_io* io, void* opaque,
                           const char* psk_file, cvmstate_source** out) {
  return Guard([&] {
    if (io == nullptr || io->read == nullptr || io->write == nullptr) return Fail(-EINVAL, "incomplete cvmstate_io");
    return NewSource(vm, vm_id, std::make_unique<IoSink>(*io, opaque), std::make_unique<IoSource>(*io, opaque),
                     psk_file, out);
  });
}

int cvmstate_source_begin(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (s == nullptr || s->src) return Fail(-EINVAL, "null or already begun source");
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
    if (s == nullptr || !s->src) return Fail(-EINVAL, "source not begun");
    auto r = s->src->SendRound();
    if (!r.ok()) return FromStatus(r.status());
    if (bytes) *bytes = r->bytes;
    return 0;
  });
}

int cvmstate_source_finish(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (s == nullptr || !s->src) return Fail(-EINVAL, "source not begun");
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
  if (out == nullptr) return Fail(-EINVAL, "null argument");
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
    return NewDestination(std::make_unique<cvmstate::FdSink>(fd),
                          std::make_unique<cvmstate::FdSource>(fd, timeout_seconds > 0 ? timeout_seconds : 30), psk_file,
                          out);
  });
}

int cvmstate_destination_new_io(const cvmstate_io* io, void* opaque, const char* psk_file, cvmstate_destination** out) {
  return Guard([&] {
    if (io == nullptr || io->read == nullptr || io->write == nullptr) return Fail(-EINVAL, "incomplete cvmstate_io");
    return NewDestination(std::make_unique<IoSink>(*io, opaque), std::make_unique<IoSource>(*io, opaque), psk_file, out);
  });
}

int cvmstate_destination_receive(cvmstate_destination* d, cvmstate_vm** out) {
  return Guard([&] {
    if (d == nullptr || out == nullptr || d->incoming) return Fail(-EINVAL, "null or already used destination");
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
    if (d == nullptr || !d->incoming || d->incoming->report().vm_id.empty()) {
      return Fail(-EINVAL, "destination has received nothing");
    }
    if (ok != 0) return FromStatus(d->incoming->Acknowledge());
    (void)d->incoming->Abort(Status::Refused(reason ? reason : "refused"));
    return 0;
  });
}

void cvmstate_destination_free(cvmstate_destination* d) { delete d; }

}  // extern "C"
