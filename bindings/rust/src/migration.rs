//! Live migration: a source streaming a VM's page state while the guest
//! converts, and a destination receiving it, over a file descriptor or any
//! `Read + Write`.
use std::any::Any;
use std::ffi::{CStr, CString};
use std::io::{ErrorKind, Read, Write};
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_long, c_void};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{c_string, check, Error, Result, EINVAL, EIO};
use crate::ffi;
use crate::vm::Vm;

/// What one [`Source::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes sent by this step.
    pub sent: u64,
    /// Whether the round ended with this step.
    pub round_done: bool,
}

trait Channel: Read + Write + Send {}
impl<T: Read + Write + Send> Channel for T {}

// What a C io's opaque points at.
struct IoBox {
    io: Box<dyn Channel>,
    panic: Option<Box<dyn Any + Send>>,
}

fn io_errno(e: &std::io::Error) -> c_long {
    -(e.raw_os_error().unwrap_or(EIO) as c_long)
}

unsafe extern "C" fn io_read(opaque: *mut c_void, buf: *mut c_void, size: usize) -> c_long {
    // SAFETY: opaque is the IoBox of this channel, alive as long as its handle.
    let b = &mut *(opaque as *mut IoBox);
    let slice = std::slice::from_raw_parts_mut(buf as *mut u8, size);
    let io = &mut b.io;
    match catch_unwind(AssertUnwindSafe(|| loop {
        match io.read(slice) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => return r,
        }
    })) {
        Ok(Ok(n)) => n as c_long,
        Ok(Err(e)) => io_errno(&e),
        Err(p) => {
            b.panic = Some(p);
            -(EIO as c_long)
        }
    }
}

unsafe extern "C" fn io_write(opaque: *mut c_void, buf: *const c_void, size: usize) -> c_long {
    // SAFETY: as io_read.
    let b = &mut *(opaque as *mut IoBox);
    let slice = std::slice::from_raw_parts(buf as *const u8, size);
    let io = &mut b.io;
    match catch_unwind(AssertUnwindSafe(|| loop {
        match io.write(slice).and_then(|n| io.flush().map(|_| n)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => return r,
        }
    })) {
        Ok(Ok(0)) => -(EIO as c_long),
        Ok(Ok(n)) => n as c_long,
        Ok(Err(e)) => io_errno(&e),
        Err(p) => {
            b.panic = Some(p);
            -(EIO as c_long)
        }
    }
}

const IO_V1: ffi::cvmstate_io_v1 = ffi::cvmstate_io_v1 {
    struct_size: std::mem::size_of::<ffi::cvmstate_io_v1>(),
    read: Some(io_read),
    write: Some(io_write),
};

enum Handle {
    Source(*mut ffi::cvmstate_source),
    Destination(*mut ffi::cvmstate_destination),
}

// A C source or destination and the Rust channel it reads (if any). Shared
// with Cancellers, so it is freed when the last of them goes.
struct Inner {
    handle: Handle,
    io: *mut IoBox, // null over an fd
}

// SAFETY: the handle is used by one thread at a time through its Source or
// Destination (not Sync); other threads only call cancel, which the C API
// allows from any thread at any time before free.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

impl Inner {
    // Re-raises a panic the Rust channel met during the last call.
    fn rethrow_io_panic(&self) {
        if !self.io.is_null() {
            // SAFETY: io is live; no call is running on this handle now.
            if let Some(p) = unsafe { (*self.io).panic.take() } {
                resume_unwind(p);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: the handle is live and freed once, before its channel.
        unsafe {
            match self.handle {
                Handle::Source(s) => ffi::cvmstate_source_free(s),
                Handle::Destination(d) => ffi::cvmstate_destination_free(d),
            }
            if !self.io.is_null() {
                drop(Box::from_raw(self.io));
            }
        }
    }
}

fn new_io_box<T: Read + Write + Send + 'static>(io: T) -> *mut IoBox {
    Box::into_raw(Box::new(IoBox { io: Box::new(io), panic: None }))
}

fn psk_path(psk_file: Option<&Path>) -> Result<Option<CString>> {
    psk_file
        .map(|p| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::new(EINVAL, "the key path contains a NUL byte"))
        })
        .transpose()
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(ptr::null(), |c| c.as_ptr())
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Cancels a migration from any thread: the call blocked on its channel
/// returns ECANCELED at once (over a Rust channel: when its read or write
/// returns), and so does every later call. For a source, once `finish` has
/// sent the end frame the destination decides, and cancel no longer applies.
#[derive(Clone)]
pub struct Canceller<'a> {
    inner: Arc<Inner>,
    _life: PhantomData<fn() -> &'a ()>,
}

impl Canceller<'_> {
    pub fn cancel(&self) {
        // SAFETY: the handle lives as long as this Arc; cancel may be called
        // from any thread while another call runs on it.
        unsafe {
            match self.inner.handle {
                Handle::Source(s) => ffi::cvmstate_source_cancel(s),
                Handle::Destination(d) => ffi::cvmstate_destination_cancel(d),
            };
        }
    }
}

/// The source side of a live migration of `vm`. The guest may convert
/// pages (through the same `&Vm`) between calls.
pub struct Source<'a> {
    inner: Arc<Inner>,
    vm: &'a Vm,
}

impl<'a> Source<'a> {
    fn raw(&self) -> *mut ffi::cvmstate_source {
        match self.inner.handle {
            Handle::Source(s) => s,
            Handle::Destination(_) => unreachable!(),
        }
    }

    /// Over a connected file descriptor (not closed), with a key file for
    /// authenticated frames if given. Each read and write waits at most
    /// 120 s (see set_timeout).
    pub fn new_fd<F: AsRawFd>(vm: &'a Vm, vm_id: &str, fd: &'a F, psk_file: Option<&Path>) -> Result<Source<'a>> {
        let _busy = vm.enter()?;
        let id = c_string("VM id", vm_id)?;
        let psk = psk_path(psk_file)?;
        let mut raw = ptr::null_mut();
        // SAFETY: the vm is live for 'a; strings are valid C strings.
        check(unsafe { ffi::cvmstate_source_new_fd(vm.raw, id.as_ptr(), fd.as_raw_fd(), opt_ptr(&psk), &mut raw) })?;
        Ok(Source { inner: Arc::new(Inner { handle: Handle::Source(raw), io: ptr::null_mut() }), vm })
    }

    /// Over a Rust channel (a socket, a pipe, the VMM's own stream).
    pub fn new_io<T: Read + Write + Send + 'static>(
        vm: &'a Vm,
        vm_id: &str,
        io: T,
        psk_file: Option<&Path>,
    ) -> Result<Source<'a>> {
        let _busy = vm.enter()?;
        let id = c_string("VM id", vm_id)?;
        let psk = psk_path(psk_file)?;
        let io = new_io_box(io);
        let mut raw = ptr::null_mut();
        // SAFETY: as new_fd; io lives until the handle is freed.
        let rc = unsafe {
            ffi::cvmstate_source_new_io_v1(vm.raw, id.as_ptr(), &IO_V1, io as *mut c_void, opt_ptr(&psk), &mut raw)
        };
        if rc < 0 {
            let e = Error::last(rc);
            // SAFETY: no handle holds it.
            drop(unsafe { Box::from_raw(io) });
            return Err(e);
        }
        Ok(Source { inner: Arc::new(Inner { handle: Handle::Source(raw), io }), vm })
    }

    /// How long each read and each frame's write may wait (EINVAL for zero,
    /// or above 1e6 s).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        // SAFETY: the handle is live.
        check(unsafe { ffi::cvmstate_source_set_timeout(self.raw(), seconds(timeout)) })?;
        Ok(())
    }

    /// An estimate of the bytes the next round would send now (never below
    /// the truth by more than one frame).
    pub fn pending(&self) -> Result<u64> {
        let _busy = self.vm.enter()?;
        let mut bytes = 0u64;
        // SAFETY: the handle is live.
        check(unsafe { ffi::cvmstate_source_pending(self.raw(), &mut bytes) })?;
        Ok(bytes)
    }

    // Runs a call that streams, with the vm marked busy.
    fn streaming(&mut self, f: impl FnOnce(*mut ffi::cvmstate_source) -> c_int) -> Result<()> {
        let busy = self.vm.enter()?;
        let rc = f(self.raw());
        drop(busy);
        self.inner.rethrow_io_panic();
        check(rc).map(|_| ())
    }

    /// Sends about `max_bytes` of the current round (a new one if none is in
    /// progress; the first step reads the destination's challenge first).
    pub fn step(&mut self, max_bytes: u64) -> Result<Step> {
        let mut sent = 0u64;
        let mut done: c_int = 0;
        // SAFETY: the handle is live; out-pointers outlive the call.
        self.streaming(|s| unsafe { ffi::cvmstate_source_step(s, max_bytes, &mut sent, &mut done) })?;
        Ok(Step { sent, round_done: done != 0 })
    }

    /// Round 0 in one call; returns its bytes.
    pub fn begin(&mut self) -> Result<u64> {
        let mut bytes = 0u64;
        // SAFETY: as step.
        self.streaming(|s| unsafe { ffi::cvmstate_source_begin(s, &mut bytes) })?;
        Ok(bytes)
    }

    /// A pre-copy round in one call; returns its bytes.
    pub fn round(&mut self) -> Result<u64> {
        let mut bytes = 0u64;
        // SAFETY: as step.
        self.streaming(|s| unsafe { ffi::cvmstate_source_round(s, &mut bytes) })?;
        Ok(bytes)
    }

    /// Stop-and-copy (the guest is paused): the rest, the end frame, then the
    /// destination's answer. Returns the last round's bytes.
    pub fn finish(&mut self) -> Result<u64> {
        let mut bytes = 0u64;
        // SAFETY: as step.
        self.streaming(|s| unsafe { ffi::cvmstate_source_finish(s, &mut bytes) })?;
        Ok(bytes)
    }

    /// Whether [`Source::finish`] handed the whole end frame to the channel
    /// (C API 0.3). After a failed finish: false means the destination
    /// cannot have committed (resume the guest here); true with an error
    /// other than `EACCES` means the outcome is unknown.
    pub fn end_sent(&self) -> bool {
        // SAFETY: the handle is live.
        unsafe { ffi::cvmstate_source_end_sent(self.raw()) == 1 }
    }

    /// Rounds sent so far, and the bytes of round `r`.
    pub fn rounds(&self) -> u32 {
        // SAFETY: the handle is live.
        unsafe { ffi::cvmstate_source_rounds(self.raw()) }
    }
    pub fn round_bytes(&self, r: u32) -> u64 {
        // SAFETY: the handle is live.
        unsafe { ffi::cvmstate_source_round_bytes(self.raw(), r) }
    }

    /// A handle that cancels this migration from another thread.
    pub fn canceller(&self) -> Canceller<'a> {
        Canceller { inner: self.inner.clone(), _life: PhantomData }
    }
}

/// The destination side: receive, (commit, register listeners,) ack.
pub struct Destination<'a> {
    inner: Arc<Inner>,
    _life: PhantomData<fn() -> &'a ()>,
}

impl<'a> Destination<'a> {
    fn raw(&self) -> *mut ffi::cvmstate_destination {
        match self.inner.handle {
            Handle::Destination(d) => d,
            Handle::Source(_) => unreachable!(),
        }
    }

    /// Over a connected file descriptor (not closed); every read and write
    /// waits at most `timeout`.
    pub fn new_fd<F: AsRawFd>(fd: &'a F, psk_file: Option<&Path>, timeout: Duration) -> Result<Destination<'a>> {
        let psk = psk_path(psk_file)?;
        let mut raw = ptr::null_mut();
        // SAFETY: strings are valid; raw receives the handle.
        check(unsafe { ffi::cvmstate_destination_new_fd(fd.as_raw_fd(), opt_ptr(&psk), seconds(timeout), &mut raw) })?;
        Ok(Destination {
            inner: Arc::new(Inner { handle: Handle::Destination(raw), io: ptr::null_mut() }),
            _life: PhantomData,
        })
    }

    /// Over a Rust channel; `timeout` bounds each frame as the channel's
    /// reads and writes return.
    pub fn new_io<T: Read + Write + Send + 'static>(
        io: T,
        psk_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Destination<'a>> {
        let psk = psk_path(psk_file)?;
        let io = new_io_box(io);
        let mut raw = ptr::null_mut();
        // SAFETY: io lives until the handle is freed.
        let rc = unsafe {
            ffi::cvmstate_destination_new_io_v1(&IO_V1, io as *mut c_void, opt_ptr(&psk), seconds(timeout), &mut raw)
        };
        if rc < 0 {
            let e = Error::last(rc);
            // SAFETY: no handle holds it.
            drop(unsafe { Box::from_raw(io) });
            return Err(e);
        }
        Ok(Destination { inner: Arc::new(Inner { handle: Handle::Destination(raw), io }), _life: PhantomData })
    }

    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        // SAFETY: the handle is live.
        check(unsafe { ffi::cvmstate_destination_set_timeout(self.raw(), seconds(timeout)) })?;
        Ok(())
    }

    /// The largest state accepted, in runs (and with it the memory budget).
    pub fn set_max_runs(&mut self, max_runs: u64) -> Result<()> {
        // SAFETY: the handle is live.
        check(unsafe { ffi::cvmstate_destination_set_max_runs(self.raw(), max_runs) })?;
        Ok(())
    }

    /// Sends the challenge, then receives and verifies the whole stream.
    pub fn receive(&mut self) -> Result<Vm> {
        let mut raw = ptr::null_mut();
        // SAFETY: the handle is live; raw receives a new vm.
        let rc = unsafe { ffi::cvmstate_destination_receive(self.raw(), &mut raw) };
        self.inner.rethrow_io_panic();
        check(rc)?;
        Ok(Vm::from_raw(raw))
    }

    /// The VM id the stream carried ("" before a successful receive).
    pub fn vm_id(&self) -> String {
        // SAFETY: the returned string lives as long as the handle; copied.
        unsafe { CStr::from_ptr(ffi::cvmstate_destination_vm_id(self.raw())) }.to_string_lossy().into_owned()
    }

    /// Tells the source: ready (`ok`), or the failure `reason`. Once only.
    pub fn ack(&mut self, ok: bool, reason: Option<&str>) -> Result<()> {
        let reason = reason.map(|r| c_string("reason", r)).transpose()?;
        // SAFETY: the handle is live.
        let rc = unsafe { ffi::cvmstate_destination_ack(self.raw(), ok as c_int, opt_ptr(&reason)) };
        self.inner.rethrow_io_panic();
        check(rc)?;
        Ok(())
    }

    pub fn canceller(&self) -> Canceller<'a> {
        Canceller { inner: self.inner.clone(), _life: PhantomData }
    }
}
