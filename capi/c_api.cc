// The C API (include/cvmstate/cvmstate.h) over the C++ library.
#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cvmstate/cvmstate.h"
#include <chrono>

#include "codec/state_digest.h"
#include "migration/byte_stream.h"
#include "migration/cancel_token.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "session/incoming.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
#include "tracker/block_tracker.h"
#include "tracker/format.h"
#include "tracker/listener.h"
#include "tracker/names.h"
#include "tracker/run_map.h"

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
  uint64_t offset, size;  // its section
};

struct cvmstate_store {
  std::unique_ptr<cvmstate::CheckpointStore> store;
  std::mutex mu;                  // guards vms (a store may be shared by threads)
  std::set<cvmstate_vm*> vms;     // vms holding a checkpointer of this store
};

namespace {
class IoSink;
class IoSource;
}  // namespace

// The channel of a source or destination: its two ends, the deadline they
// obey (over an fd or v1 callbacks; a v0 destination's once set) and the
// cancel token.
struct Channel {
  std::unique_ptr<cvmstate::ByteSink> sink;
  std::unique_ptr<cvmstate::ByteSource> source;
  // The ends' deadlines and cancel tokens are set through these.
  cvmstate::FdSink* fd_sink = nullptr;
  cvmstate::FdSource* fd_source = nullptr;
  IoSink* io_sink = nullptr;
  IoSource* io_source = nullptr;
  bool timed = false;  // takes a timeout (a v0 io source's callbacks bound their own waits)
  void SetTimeout(double seconds);
  // Whether reads obey the cancel token (not while a source waits for the
  // acknowledgement of a stream it ended).
  void CancelReads(const cvmstate::CancelToken* token);
};

struct cvmstate_source {
  cvmstate_vm* vm;
  std::string id, key;
  cvmstate::CancelToken cancel;  // before ch, whose ends point at it
  Channel ch;
  std::unique_ptr<cvmstate::MigrationSource> src;  // made with the source; opened by the first step
  bool finished = false;  // cvmstate_source_finish was called: nothing more is sent
  bool broken = false;    // a call failed mid-stream: the stream cannot go on
  bool end_sent = false;  // finish handed the whole end frame to the channel
};

struct cvmstate_destination {
  cvmstate::CancelToken cancel;  // before ch, whose ends point at it
  Channel ch;
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

// Whether [offset, offset+size) lies inside block b (size 0 included);
// otherwise sets the error and returns false.
bool RangeInside(const cvmstate::BlockTracker& b, uint64_t offset, uint64_t size, int* err) {
  if (offset <= b.size() && size <= b.size() - offset) return true;
  *err = Fail(-EINVAL, "range [" + cvmstate::Hex(offset) + ", +" + cvmstate::Hex(size) + ") is not inside block " +
                           cvmstate::Quoted(b.name()) + " (size " + cvmstate::Hex(b.size()) + ")");
  return false;
}

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

// A C listener's answer to a call it may refuse: 0 accepts; anything else
// refuses, and its code (a positive one as -EPERM) is what the call returns.
Status Answer(int r, cvmstate_vm* vm, const char* kind) {
  if (r == 0) return Status::OK();
  vm->listener_error = r < 0 ? r : -EPERM;
  std::string message = "the ";
  message += kind;
  message += " listener returned " + std::to_string(r);
  return Status::Refused(message);
}

class CDmaListener final : public cvmstate::DmaMappingListener {
 public:
  CDmaListener(const cvmstate_dma_ops& ops, void* opaque, cvmstate_vm* vm) : ops_(ops), opaque_(opaque), vm_(vm) {}
  std::string name() const override { return "dma (C)"; }
  uint64_t granularity() const override { return ops_.granularity; }
  bool accepts_double_discard() const override { return ops_.double_discard_supported != 0; }
  Status NotifyPopulate(uint64_t offset, uint64_t size) override {
    return Answer(ops_.populate ? ops_.populate(opaque_, offset, size) : 0, vm_, "DMA");
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
    return Answer(ops_.set_private ? ops_.set_private(opaque_, offset, size) : 0, vm_, "memory-attribute");
  }
  void ClearPrivate(uint64_t offset, uint64_t size) override {
    if (ops_.clear_private) ops_.clear_private(opaque_, offset, size);
  }

 private:
  cvmstate_attr_ops ops_;
  void* opaque_;
  cvmstate_vm* vm_;
};

class CDiscardListener final : public cvmstate::DiscardListener {
 public:
  CDiscardListener(const cvmstate_discard_ops_v1& ops, void* opaque, cvmstate_vm* vm)
      : ops_(ops), opaque_(opaque), vm_(vm) {}
  std::string name() const override { return "discard (C)"; }
  uint64_t granularity() const override { return ops_.granularity; }
  Status NotifyPopulate(uint64_t offset, uint64_t size) override {
    return Answer(ops_.populate ? ops_.populate(opaque_, offset, size) : 0, vm_, "discard");
  }
  void NotifyDiscard(uint64_t offset, uint64_t size) override {
    if (ops_.discard) ops_.discard(opaque_, offset, size);
  }

 private:
  cvmstate_discard_ops_v1 ops_;
  void* opaque_;
  cvmstate_vm* vm_;
};

using Clock = std::chrono::steady_clock;

// A deadline of `seconds` from now (0: none).
Clock::time_point DeadlineIn(double seconds) {
  return seconds > 0 ? Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds))
                     : Clock::time_point::max();
}

// The VMM's callbacks as a channel end. A v1 channel also obeys a cancel
// token and a deadline per call, both checked as each callback returns
// (a callback that blocks is the VMM's to end).
class IoSink final : public cvmstate::ByteSink {
 public:
  IoSink(const cvmstate_io& io, void* opaque) : io_(io), opaque_(opaque) {}
  void set_timeout(double seconds) { timeout_ = seconds; }
  void set_cancel(const cvmstate::CancelToken* token) { cancel_ = token; }
  Status Write(std::string_view d) override {
    const auto deadline = DeadlineIn(timeout_);
    while (!d.empty()) {
      if (cancel_ != nullptr && cancel_->cancelled()) return cancel_->Check();
      if (Clock::now() > deadline) {
        return Status::TimedOut("timed out after " + cvmstate::FormatSeconds(timeout_) +
                                " writing to the migration channel");
      }
      const long n = io_.write(opaque_, d.data(), d.size());
      if (cancel_ != nullptr && cancel_->cancelled()) return cancel_->Check();
      if (n <= 0) return Status::IOError("the migration channel's write failed (" + std::to_string(n) + ")");
      d.remove_prefix(std::min(d.size(), static_cast<size_t>(n)));
    }
    return Status::OK();
  }

 private:
  cvmstate_io io_;
  void* opaque_;
  double timeout_ = 0;
  const cvmstate::CancelToken* cancel_ = nullptr;
};

class IoSource final : public cvmstate::ByteSource {
 public:
  IoSource(const cvmstate_io& io, void* opaque) : io_(io), opaque_(opaque) {}
  void set_timeout(double seconds) { timeout_ = seconds; }
  void set_cancel(const cvmstate::CancelToken* token) { cancel_ = token; }
  Status Read(void* buf, size_t n) override {
    const auto deadline = DeadlineIn(timeout_);
    char* p = static_cast<char*>(buf);
    while (n > 0) {
      if (cancel_ != nullptr && cancel_->cancelled()) return cancel_->Check();
      if (Clock::now() > deadline) {
        return Status::TimedOut("timed out after " + cvmstate::FormatSeconds(timeout_) + " waiting for the next frame");
      }
      const long got = io_.read(opaque_, p, n);
      // Cancelled while the callback ran: what it returned is not used.
      if (cancel_ != nullptr && cancel_->cancelled()) return cancel_->Check();
      if (got == 0) return Status::IOError("the stream ended in the middle of a frame or before its end frame");
      if (got < 0) return Status::IOError("the migration channel's read failed (" + std::to_string(got) + ")");
      const size_t took = std::min(n, static_cast<size_t>(got));
      p += took;
      n -= took;
    }
    return Status::OK();
  }

 private:
  cvmstate_io io_;
  void* opaque_;
  double timeout_ = 0;
  const cvmstate::CancelToken* cancel_ = nullptr;
};

// A channel over fd, every wait bounded by timeout and ended by cancel.
Channel FdChannel(int fd, double timeout, const cvmstate::CancelToken* cancel) {
  Channel ch;
  auto sink = std::make_unique<cvmstate::FdSink>(fd, timeout);
  auto source = std::make_unique<cvmstate::FdSource>(fd, timeout);
  sink->set_cancel(cancel);
  source->set_cancel(cancel);
  ch.fd_sink = sink.get();
  ch.fd_source = source.get();
  ch.sink = std::move(sink);
  ch.source = std::move(source);
  ch.timed = true;
  return ch;
}

// A channel over the VMM's callbacks, ended by cancel as they return; a
// timed one (v1, or a destination) also obeys timeout (0: none until set).
Channel IoChannel(const cvmstate_io& io, void* opaque, bool timed, double timeout,
                  const cvmstate::CancelToken* cancel) {
  Channel ch;
  auto sink = std::make_unique<IoSink>(io, opaque);
  auto source = std::make_unique<IoSource>(io, opaque);
  sink->set_cancel(cancel);
  source->set_cancel(cancel);
  sink->set_timeout(timeout);
  source->set_timeout(timeout);
  ch.io_sink = sink.get();
  ch.io_source = source.get();
  ch.timed = timed;
  ch.sink = std::move(sink);
  ch.source = std::move(source);
  return ch;
}

// Copies a caller's struct that starts with its size_t struct_size into
// *out (zeroing what an older caller's struct does not have): -EINVAL for
// a size below first_size, or one beyond sizeof(T) whose extra bytes are
// not all zero (fields this library does not know).
template <typename T>
int ReadSized(const T* in, size_t first_size, const char* what, T* out) {
  size_t n = 0;
  std::memcpy(&n, in, sizeof n);
  if (n < first_size) {
    return Fail(-EINVAL, std::string(what) + "->struct_size is " + std::to_string(n) + "; set it to sizeof (at least " +
                             std::to_string(first_size) + ")");
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (size_t i = sizeof(T); i < n; ++i) {
    if (bytes[i] != 0) {
      return Fail(-EINVAL, std::string(what) + " sets fields this library (" + std::to_string(sizeof(T)) +
                               " bytes) does not know: built against a newer cvmstate.h?");
    }
  }
  std::memset(static_cast<void*>(out), 0, sizeof(T));
  std::memcpy(static_cast<void*>(out), in, std::min(n, sizeof(T)));
  return 0;
}

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
    l->offset = offset;
    l->size = size;
    vm->listeners.insert(l.get());
    *out = l.release();
    return 0;
  });
}

int Cancelled() { return Fail(-ECANCELED, "the migration was cancelled"); }

}  // namespace

void Channel::SetTimeout(double seconds) {
  if (fd_sink != nullptr) fd_sink->set_timeout(seconds);
  if (fd_source != nullptr) fd_source->set_timeout(seconds);
  if (io_sink != nullptr) io_sink->set_timeout(seconds);
  if (io_source != nullptr) io_source->set_timeout(seconds);
}

void Channel::CancelReads(const cvmstate::CancelToken* token) {
  if (fd_source != nullptr) fd_source->set_cancel(token);
  if (io_source != nullptr) io_source->set_cancel(token);
}

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
    if (!RangeInside(*b, offset, size, &err)) return err;
    if (size == 0) return 0;
    // The pages holding [offset, end), each run then clipped to exactly it.
    const uint64_t end = offset + size, mask = b->page_size() - 1;
    const uint64_t first = offset & ~mask, last = ((end - 1) | mask) + 1;  // <= the block's size
    int stopped = 0;
    auto report = [&](const cvmstate::ByteRun& r) {
      const uint64_t a = std::max(r.offset, offset), e = std::min(r.offset + r.length, end);
      stopped = fn(opaque, a, e - a, static_cast<int>(r.state));
      return stopped == 0;
    };
    // One state: skip the others' runs without a step each.
    if (state == -1) {
      b->ForEachRun(first, last - first, report);
    } else {
      b->ForEachRunOf(static_cast<cvmstate::PageState>(state), first, last - first, report);
    }
    return stopped;
  });
}

int cvmstate_get_runs(const cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, int state,
                      cvmstate_range* runs, size_t capacity, size_t* count) {
  return Guard([&] {
    if (count != nullptr) *count = 0;
    int err = 0;
    const cvmstate::BlockTracker* b = FindBlock(vm, block, &err);
    if (b == nullptr) return err;
    if (runs == nullptr) return NullArgument("runs");
    if (count == nullptr) return NullArgument("count");
    if (!ValidState(state)) return Fail(-EINVAL, "invalid state " + std::to_string(state));
    if (capacity == 0) return Fail(-EINVAL, "capacity 0: room for no run");
    if (!RangeInside(*b, offset, size, &err)) return err;
    if (size == 0) return 0;
    // The pages holding [offset, end), each run then clipped to exactly it.
    const unsigned sh = b->page_shift();
    const uint64_t end = offset + size;
    const uint64_t first = offset >> sh, last = ((end - 1) >> sh) + 1;
    size_t n = 0;
    int more = 0;
    const auto s = static_cast<cvmstate::PageState>(state);
    auto put = [&](uint64_t begin, uint64_t end_page) {
      const uint64_t a = std::max(begin << sh, offset), e = std::min(end_page << sh, end);
      runs[n++] = cvmstate_range{a, e - a};
    };
    if (capacity < cvmstate::RunMap::kRunBatch) {
      // The batched walk goes a batch at a time: a small buffer would pay
      // for a whole one. One run at a time stops at the run after the
      // last that fits, the proof that more remain.
      b->map().ForEachRunOf(s, first, last, [&](uint64_t a, uint64_t e) {
        if (n == capacity) {
          more = 1;
          return false;
        }
        put(a, e);
        return true;
      });
    } else {
      b->map().ForEachRunBatchOf(s, first, last, [&](const cvmstate::PageRange* r, size_t k) {
        // A batch that does not fit: the runs left over are proof that
        // more remain.
        if (k > capacity - n) {
          more = 1;
          k = capacity - n;
        }
        for (size_t i = 0; i < k; ++i) put(r[i].begin, r[i].end);
        return more == 0;
      });
    }
    *count = n;
    return more;
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

int cvmstate_range_state(const cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, int* state) {
  return Guard([&] {
    int err = 0;
    const cvmstate::BlockTracker* b = FindBlock(vm, block, &err);
    if (b == nullptr) return err;
    if (state == nullptr) return NullArgument("state");
    if (size == 0 || offset > b->size() || size > b->size() - offset) {
      return Fail(-EINVAL, "range [" + cvmstate::Hex(offset) + ", +" + cvmstate::Hex(size) +
                               ") is empty or not inside block " + cvmstate::Quoted(b->name()) + " (size " +
                               cvmstate::Hex(b->size()) + ")");
    }
    const uint64_t mask = b->page_size() - 1;
    const uint64_t first = offset & ~mask, last = ((offset + size - 1) | mask) + 1;
    int found = -1;
    b->ForEachRun(first, last - first, [&](const cvmstate::ByteRun& r) {
      const int st = static_cast<int>(r.state);
      if (found == -1) {
        found = st;
      } else if (found != st) {
        found = CVMSTATE_MIXED;
        return false;
      }
      return true;
    });
    *state = found;
    return 0;
  });
}

int cvmstate_vm_block_count(const cvmstate_vm* vm, uint32_t* count) {
  return Guard([&] {
    if (vm == nullptr) return NullArgument("vm");
    if (count == nullptr) return NullArgument("count");
    *count = static_cast<uint32_t>(vm->state.num_blocks());
    return 0;
  });
}

int cvmstate_vm_block_info(const cvmstate_vm* vm, uint32_t index, cvmstate_block_info* info) {
  return Guard([&] {
    if (vm == nullptr) return NullArgument("vm");
    if (info == nullptr) return NullArgument("info");
    cvmstate_block_info out;
    const size_t n = info->struct_size;
    // The caller's struct is written, not read: only its size matters.
    if (n < sizeof(cvmstate_block_info)) {
      return Fail(-EINVAL, "info->struct_size is " + std::to_string(n) + "; set it to sizeof(cvmstate_block_info) (" +
                               std::to_string(sizeof(cvmstate_block_info)) + ")");
    }
    if (index >= vm->state.num_blocks()) {
      return Fail(-ENOENT, "no block " + std::to_string(index) + " (the vm has " +
                               std::to_string(vm->state.num_blocks()) + ")");
    }
    const cvmstate::BlockTracker& b = vm->state.block(index);
    out.struct_size = sizeof(cvmstate_block_info);
    out.name = b.name().c_str();
    out.size = b.size();
    out.page_size = b.page_size();
    for (int k = 0; k < 3; ++k) out.bytes[k] = b.BytesIn(static_cast<cvmstate::PageState>(k));
    // Fields of a newer header than this library's stay zero.
    std::memset(static_cast<void*>(info), 0, n);
    std::memcpy(static_cast<void*>(info), &out, sizeof out);
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

int cvmstate_register_dma_listener_v1(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                      const cvmstate_dma_ops_v1* ops_v1, void* opaque, cvmstate_listener** out) {
  return Guard([&] {
    if (ops_v1 == nullptr) return NullArgument("ops");
    cvmstate_dma_ops_v1 v1;
    const int r = ReadSized(ops_v1, sizeof(cvmstate_dma_ops_v1), "ops", &v1);
    if (r != 0) return r;
    const cvmstate_dma_ops ops{v1.populate, v1.discard, v1.granularity, v1.double_discard_supported};
    return Register<cvmstate_dma_ops, CDmaListener>(vm, block, offset, size, &ops, opaque, out);
  });
}

int cvmstate_register_attr_listener_v1(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                       const cvmstate_attr_ops_v1* ops_v1, void* opaque, cvmstate_listener** out) {
  return Guard([&] {
    if (ops_v1 == nullptr) return NullArgument("ops");
    cvmstate_attr_ops_v1 v1;
    const int r = ReadSized(ops_v1, sizeof(cvmstate_attr_ops_v1), "ops", &v1);
    if (r != 0) return r;
    const cvmstate_attr_ops ops{v1.set_private, v1.clear_private, v1.granularity};
    return Register<cvmstate_attr_ops, CAttrListener>(vm, block, offset, size, &ops, opaque, out);
  });
}

int cvmstate_register_discard_listener_v1(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                          const cvmstate_discard_ops_v1* ops_v1, void* opaque,
                                          cvmstate_listener** out) {
  return Guard([&] {
    if (ops_v1 == nullptr) return NullArgument("ops");
    cvmstate_discard_ops_v1 ops;
    const int r = ReadSized(ops_v1, sizeof(cvmstate_discard_ops_v1), "ops", &ops);
    if (r != 0) return r;
    return Register<cvmstate_discard_ops_v1, CDiscardListener>(vm, block, offset, size, &ops, opaque, out);
  });
}

int cvmstate_listener_replay(cvmstate_vm* vm, cvmstate_listener* l, int state) {
  return Guard([&] {
    if (vm == nullptr) return NullArgument("vm");
    if (l == nullptr) return NullArgument("listener");
    if (vm->listeners.count(l) == 0) {
      return Fail(-ENOENT, "the listener is not registered with this vm (unregistered already, or another vm's)");
    }
    if (!ValidState(state)) return Fail(-EINVAL, "invalid state " + std::to_string(state));
    const auto want = static_cast<cvmstate::PageState>(state);
    vm->listener_error = 0;
    Status refused;
    // Each run is told as a change to its own state: every listener kind
    // maps that to its populate / set_private or discard / clear_private
    // (the `from` state is not read by any of them).
    l->block->ForEachRunOf(want, l->offset, l->size, [&](const cvmstate::ByteRun& r) {
      refused = l->impl->OnChange(r.offset, r.length, r.state, want);
      return refused.ok();
    });
    if (refused.ok()) return 0;
    return Fail(vm->listener_error != 0 ? vm->listener_error : -EACCES, refused.message());
  });
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

// A new source over ch (made by make_channel, given the source's cancel
// token), checked first.
using MakeChannel = std::function<Channel(const cvmstate::CancelToken*)>;

static int NewSource(cvmstate_vm* vm, const char* vm_id, const MakeChannel& make_channel, const char* psk_file,
                     cvmstate_source** out) {
  if (vm == nullptr) return NullArgument("vm");
  if (vm_id == nullptr) return NullArgument("vm_id");
  if (out == nullptr) return NullArgument("out");
  if (!cvmstate::IsValidVmId(vm_id)) return InvalidVmId(vm_id);
  auto s = std::make_unique<cvmstate_source>();
  s->vm = vm;
  s->id = vm_id;
  int r = LoadKey(psk_file, &s->key);
  if (r != 0) return r;
  s->ch = make_channel(&s->cancel);
  s->src = std::make_unique<cvmstate::MigrationSource>(&vm->state, s->id, s->ch.sink.get());
  s->src->SetKey(s->key);
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
    return NewSource(
        vm, vm_id, [&](const cvmstate::CancelToken* c) { return FdChannel(fd, kSourceFdTimeoutSeconds, c); }, psk_file,
        out);
  });
}

int cvmstate_source_set_timeout(cvmstate_source* src, double timeout_seconds) {
  return Guard([&] {
    if (src == nullptr) return NullArgument("src");
    const int t = CheckTimeout(timeout_seconds);
    if (t != 0) return t;
    if (!src->ch.timed) {
      return Fail(-EINVAL,
                  "the source runs over v0 callbacks (cvmstate_source_new_io): they bound their own waits");
    }
    src->ch.SetTimeout(timeout_seconds);
    return 0;
  });
}

// Checks a v0 or v1 io's callbacks.
static int CheckIo(const cvmstate_io* io) {
  if (io->read == nullptr) return NullArgument("io->read");
  if (io->write == nullptr) return NullArgument("io->write");
  return 0;
}

// A v1 io as the v0 struct it extends, after ReadSized's checks.
static int IoFromV1(const cvmstate_io_v1* v1, cvmstate_io* io) {
  if (v1 == nullptr) return NullArgument("io");
  cvmstate_io_v1 copy;
  const int r = ReadSized(v1, sizeof(cvmstate_io_v1), "io", &copy);
  if (r != 0) return r;
  io->read = copy.read;
  io->write = copy.write;
  return CheckIo(io);
}

int cvmstate_source_new_io(cvmstate_vm* vm, const char* vm_id, const cvmstate_io* io, void* opaque,
                           const char* psk_file, cvmstate_source** out) {
  return Guard([&] {
    if (io == nullptr) return NullArgument("io");
    const int r = CheckIo(io);
    if (r != 0) return r;
    return NewSource(
        vm, vm_id, [&](const cvmstate::CancelToken* c) { return IoChannel(*io, opaque, /*timed=*/false, 0, c); },
        psk_file, out);
  });
}

int cvmstate_source_new_io_v1(cvmstate_vm* vm, const char* vm_id, const cvmstate_io_v1* io_v1, void* opaque,
                              const char* psk_file, cvmstate_source** out) {
  return Guard([&] {
    cvmstate_io io{};
    const int r = IoFromV1(io_v1, &io);
    if (r != 0) return r;
    return NewSource(
        vm, vm_id,
        [&](const cvmstate::CancelToken* c) { return IoChannel(io, opaque, true, kSourceFdTimeoutSeconds, c); },
        psk_file, out);
  });
}

// The checks every source call makes first: 0, or the error to return.
static int SourceUsable(const cvmstate_source* s) {
  if (s == nullptr) return NullArgument("src");
  if (s->cancel.cancelled()) return Cancelled();
  if (s->finished) return Finished();
  if (s->broken) return Fail(-EIO, "an earlier call failed in the middle of the stream; start a new migration");
  return 0;
}

// A streaming call's result: a failure other than a refused argument
// (checked before anything is sent) may have cut a frame, so the source
// sends nothing more.
static int Streamed(cvmstate_source* s, int rc) {
  if (rc < 0 && rc != -EINVAL) s->broken = true;
  return rc;
}

// Reads the destination's challenge and opens the stream (challenge
// answer, hello): the first step's, or begin's, preamble.
static int OpenSource(cvmstate_source* s) {
  auto nonce = cvmstate::MigrationSource::ReadChallenge(s->ch.source.get());
  if (!nonce.ok()) return FromStatus(nonce.status());
  return FromStatus(s->src->Open(nonce.value()));
}

int cvmstate_source_begin(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (int u = SourceUsable(s); u != 0) return u;
    if (s->src->opened()) return Fail(-EINVAL, "the source has already begun");
    if (int r = OpenSource(s); r != 0) return Streamed(s, r);
    auto r = s->src->SendRound();
    if (!r.ok()) return Streamed(s, FromStatus(r.status()));
    if (bytes) *bytes = s->src->rounds().back().bytes;
    return 0;
  });
}

int cvmstate_source_pending(const cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (int u = SourceUsable(s); u != 0) return u;
    if (bytes == nullptr) return NullArgument("bytes");
    *bytes = s->src->PendingBytes();
    return 0;
  });
}

int cvmstate_source_step(cvmstate_source* s, uint64_t max_bytes, uint64_t* sent, int* round_done) {
  return Guard([&] {
    if (int u = SourceUsable(s); u != 0) return u;
    const uint64_t before = s->src->total_bytes();
    if (!s->src->opened()) {
      if (int r = OpenSource(s); r != 0) return Streamed(s, r);
    }
    const uint64_t preamble = s->src->total_bytes() - before;
    auto r = s->src->Step(max_bytes - std::min(max_bytes, preamble));
    if (!r.ok()) return Streamed(s, FromStatus(r.status()));
    if (sent) *sent = s->src->total_bytes() - before;
    if (round_done) *round_done = r->round_done ? 1 : 0;
    return 0;
  });
}

int cvmstate_source_cancel(cvmstate_source* s) {
  if (s == nullptr) return NullArgument("src");
  s->cancel.Cancel();
  return 0;
}

int cvmstate_source_round(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (int u = SourceUsable(s); u != 0) return u;
    if (!s->src->opened()) return Fail(-EINVAL, "the source has not begun");
    auto r = s->src->SendRound();
    if (!r.ok()) return Streamed(s, FromStatus(r.status()));
    if (bytes) *bytes = r->bytes;
    return 0;
  });
}

int cvmstate_source_finish(cvmstate_source* s, uint64_t* bytes) {
  return Guard([&] {
    if (int u = SourceUsable(s); u != 0) return u;
    if (!s->src->opened()) return Fail(-EINVAL, "the source has not begun");
    // Whatever happens now, the stream is over: a second finish (or a round)
    // must not send more.
    s->finished = true;
    auto r = s->src->Finish();
    if (!r.ok()) return FromStatus(r.status());
    s->end_sent = true;
    if (bytes) *bytes = r->bytes;
    // The end frame went: the destination decides now, and a cancel no
    // longer ends the wait for its answer (it may already run the guest).
    s->ch.CancelReads(nullptr);
    return FromStatus(s->src->AwaitAck(s->ch.source.get()));
  });
}

int cvmstate_source_end_sent(const cvmstate_source* s) {
  if (s == nullptr) return NullArgument("src");
  return s->end_sent ? 1 : 0;
}

uint32_t cvmstate_source_rounds(const cvmstate_source* s) {
  return s && s->src ? static_cast<uint32_t>(s->src->rounds().size()) : 0;
}

uint64_t cvmstate_source_round_bytes(const cvmstate_source* s, uint32_t round) {
  return s && s->src && round < s->src->rounds().size() ? s->src->rounds()[round].bytes : 0;
}

void cvmstate_source_free(cvmstate_source* s) { delete s; }

static int NewDestination(const MakeChannel& make_channel, const char* psk_file, cvmstate_destination** out) {
  if (out == nullptr) return NullArgument("out");
  auto d = std::make_unique<cvmstate_destination>();
  int r = LoadKey(psk_file, &d->options.stream.key);
  if (r != 0) return r;
  d->ch = make_channel(&d->cancel);
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
    return NewDestination([&](const cvmstate::CancelToken* c) { return FdChannel(fd, timeout_seconds, c); }, psk_file,
                          out);
  });
}

int cvmstate_destination_new_io(const cvmstate_io* io, void* opaque, const char* psk_file, cvmstate_destination** out) {
  return Guard([&] {
    if (io == nullptr) return NullArgument("io");
    const int r = CheckIo(io);
    if (r != 0) return r;
    // v0: no deadline until cvmstate_destination_set_timeout.
    return NewDestination([&](const cvmstate::CancelToken* c) { return IoChannel(*io, opaque, /*timed=*/true, 0, c); },
                          psk_file, out);
  });
}

int cvmstate_destination_new_io_v1(const cvmstate_io_v1* io_v1, void* opaque, const char* psk_file,
                                   double timeout_seconds, cvmstate_destination** out) {
  return Guard([&] {
    cvmstate_io io{};
    const int r = IoFromV1(io_v1, &io);
    if (r != 0) return r;
    const int t = CheckTimeout(timeout_seconds);
    if (t != 0) return t;
    return NewDestination(
        [&](const cvmstate::CancelToken* c) { return IoChannel(io, opaque, true, timeout_seconds, c); }, psk_file,
        out);
  });
}

int cvmstate_destination_set_timeout(cvmstate_destination* d, double timeout_seconds) {
  return Guard([&] {
    if (d == nullptr) return NullArgument("dst");
    const int t = CheckTimeout(timeout_seconds);
    if (t != 0) return t;
    d->ch.SetTimeout(timeout_seconds);
    return 0;
  });
}

int cvmstate_destination_cancel(cvmstate_destination* d) {
  if (d == nullptr) return NullArgument("dst");
  d->cancel.Cancel();
  return 0;
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
    if (d->cancel.cancelled()) return Cancelled();
    if (d->incoming) return Fail(-EINVAL, "the destination has already received");
    d->options.reply = d->ch.sink.get();
    d->incoming = std::make_unique<cvmstate::IncomingMigration>(nullptr, d->options);
    Status s = d->incoming->Receive(d->ch.source.get());
    if (!s.ok()) return d->cancel.cancelled() ? Cancelled() : FromStatus(s);
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
    if (d->cancel.cancelled()) return Cancelled();
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
