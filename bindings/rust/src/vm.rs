//! A VM's page state: RAM blocks, conversions, queries and listeners.
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;

use crate::error::{c_string, check, Error, Result, EBUSY, ENOMEM};
use crate::ffi;
use crate::listener::{self, AttrListener, DiscardListener, DmaListener, ListenerId, ListenerSlot};

/// The state of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// Host-visible: DMA-mapped for assigned devices.
    Shared = 0,
    /// Guest-owned (guest_memfd private).
    Private = 1,
    /// No backing: unaccepted, ballooned, unplugged.
    Discarded = 2,
}

impl PageState {
    pub(crate) fn from_c(s: c_int) -> Option<PageState> {
        match s {
            ffi::CVMSTATE_SHARED => Some(PageState::Shared),
            ffi::CVMSTATE_PRIVATE => Some(PageState::Private),
            ffi::CVMSTATE_DISCARDED => Some(PageState::Discarded),
            _ => None,
        }
    }
    pub(crate) fn to_c(self) -> c_int {
        self as c_int
    }
}

/// What [`Vm::range_state`] finds: one state for the whole range, or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeState {
    One(PageState),
    Mixed,
}

/// A maximal run of pages in one state, in bytes of its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub size: u64,
    pub state: PageState,
}

/// Bytes `[offset, offset+size)` of a block: a run of the state
/// [`Vm::get_runs`] was asked for. Laid out as the C `cvmstate_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub size: u64,
}

// get_runs hands a slice of Range to C as cvmstate_range.
const _: () = assert!(
    std::mem::size_of::<Range>() == std::mem::size_of::<ffi::cvmstate_range>()
        && std::mem::align_of::<Range>() == std::mem::align_of::<ffi::cvmstate_range>()
);

/// A RAM block and its bytes in each state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub name: String,
    pub size: u64,
    pub page_size: u64,
    pub shared: u64,
    pub private: u64,
    pub discarded: u64,
}

/// The page state of a VM. Methods take `&self` so that a [`crate::Source`]
/// borrowing the VM can stream while the guest converts; a call made from
/// inside a listener or run callback of the same VM is refused with EBUSY
/// (the C API forbids calling back into a VM that is notifying).
pub struct Vm {
    pub(crate) raw: *mut ffi::cvmstate_vm,
    busy: Cell<bool>,
    // Boxed: their addresses are the C listeners' opaque pointers.
    listeners: RefCell<Vec<(ListenerId, Box<ListenerSlot>)>>,
}

// SAFETY: the C vm may move between threads; Vm is not Sync (one thread at
// a time, as the C API requires), and its listeners are Send.
unsafe impl Send for Vm {}

/// Marks the VM in use for as long as it lives.
pub(crate) struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

struct RunContext<'f> {
    f: &'f mut dyn FnMut(Run) -> bool,
    panic: Option<Box<dyn Any + Send>>,
}

unsafe extern "C" fn run_trampoline(opaque: *mut c_void, offset: u64, size: u64, state: c_int) -> c_int {
    // SAFETY: opaque is the RunContext for_each_run passed, alive during the call.
    let ctx = &mut *(opaque as *mut RunContext<'_>);
    let state = match PageState::from_c(state) {
        Some(s) => s,
        None => return 1,
    };
    let f = &mut ctx.f;
    match catch_unwind(AssertUnwindSafe(|| f(Run { offset, size, state }))) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(p) => {
            ctx.panic = Some(p);
            1
        }
    }
}

impl Vm {
    /// A VM with no blocks.
    pub fn new() -> Result<Vm> {
        // SAFETY: no arguments.
        let raw = unsafe { ffi::cvmstate_vm_new() };
        if raw.is_null() {
            return Err(Error::new(ENOMEM, "out of memory"));
        }
        Ok(Vm::from_raw(raw))
    }

    pub(crate) fn from_raw(raw: *mut ffi::cvmstate_vm) -> Vm {
        Vm { raw, busy: Cell::new(false), listeners: RefCell::new(Vec::new()) }
    }

    pub(crate) fn enter(&self) -> Result<Busy<'_>> {
        if self.busy.replace(true) {
            return Err(Error::new(
                EBUSY,
                "the vm is in a call already (a listener or run callback may not call back into its vm)",
            ));
        }
        Ok(Busy(&self.busy))
    }

    // Re-raises a panic a listener callback met during the last call.
    fn rethrow_listener_panic(&self) {
        let mut panic = None;
        for (_, slot) in self.listeners.borrow_mut().iter_mut() {
            if let Some(p) = slot.panic.take() {
                panic = Some(p);
            }
        }
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }

    /// Declares a RAM block: name `[A-Za-z0-9._:/-]{1,64}`, page size a power
    /// of two from 4 KiB to 1 GiB, size a positive multiple of it.
    pub fn add_block(&self, name: &str, size: u64, page_size: u64, initial: PageState) -> Result<()> {
        let _busy = self.enter()?;
        let name = c_string("block name", name)?;
        // SAFETY: raw is live; name is a valid C string.
        check(unsafe { ffi::cvmstate_vm_add_block(self.raw, name.as_ptr(), size, page_size, initial.to_c()) })?;
        Ok(())
    }

    /// Converts `[offset, offset+size)` of `block` to `state`, telling the
    /// listeners; a refusal (the listener's errno) leaves everything as it was.
    pub fn convert(&self, block: &str, offset: u64, size: u64, state: PageState) -> Result<()> {
        let busy = self.enter()?;
        let block = c_string("block name", block)?;
        // SAFETY: raw is live; listener opaques point into self.listeners, which
        // no one else touches while busy.
        let rc = unsafe { ffi::cvmstate_convert(self.raw, block.as_ptr(), offset, size, state.to_c()) };
        let result = check(rc).map(|_| ());
        drop(busy);
        self.rethrow_listener_panic();
        result
    }

    /// The state of the page holding byte `offset` of `block`.
    pub fn state_at(&self, block: &str, offset: u64) -> Result<PageState> {
        let _busy = self.enter()?;
        let block = c_string("block name", block)?;
        // SAFETY: raw is live.
        let s = check(unsafe { ffi::cvmstate_state_at(self.raw, block.as_ptr(), offset) })?;
        PageState::from_c(s).ok_or_else(|| Error::new(crate::error::EIO, "unknown state"))
    }

    /// Calls `f` for each maximal run intersecting `[offset, offset+size)`
    /// of `block` (clipped to it, ascending; only runs in `state` if given)
    /// until it returns false.
    pub fn for_each_run<F: FnMut(Run) -> bool>(
        &self,
        block: &str,
        offset: u64,
        size: u64,
        state: Option<PageState>,
        mut f: F,
    ) -> Result<()> {
        let busy = self.enter()?;
        let block = c_string("block name", block)?;
        let mut ctx = RunContext { f: &mut f, panic: None };
        // SAFETY: raw is live; ctx outlives the call.
        let rc = unsafe {
            ffi::cvmstate_for_each_run(
                self.raw,
                block.as_ptr(),
                offset,
                size,
                state.map_or(-1, PageState::to_c),
                run_trampoline,
                &mut ctx as *mut RunContext<'_> as *mut c_void,
            )
        };
        drop(busy);
        if let Some(p) = ctx.panic.take() {
            resume_unwind(p);
        }
        check(rc).map(|_| ())
    }

    /// The runs of `[offset, offset+size)` of `block`, as for_each_run.
    pub fn runs(&self, block: &str, offset: u64, size: u64, state: Option<PageState>) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        self.for_each_run(block, offset, size, state, |r| {
            out.push(r);
            true
        })?;
        Ok(out)
    }

    /// Writes the runs of `state` intersecting `[offset, offset+size)` of
    /// `block` (clipped to it, ascending) into `buf`, as many as fit, and
    /// returns how many it wrote and whether more remain: then call again
    /// from the end of the last one written (it was maximal, so the next
    /// call starts with the next run). Cheaper per run than
    /// [`Vm::for_each_run`]: no call a run. An empty `buf` is EINVAL.
    pub fn get_runs(
        &self,
        block: &str,
        offset: u64,
        size: u64,
        state: PageState,
        buf: &mut [Range],
    ) -> Result<(usize, bool)> {
        let _busy = self.enter()?;
        let block = c_string("block name", block)?;
        let mut n = 0usize;
        // SAFETY: raw is live; buf holds buf.len() writable ranges, each
        // laid out as a cvmstate_range (repr(C), the same two u64s, checked
        // above); an empty buf passes a dangling non-null pointer with
        // capacity 0, which C refuses before writing; n outlives the call.
        let rc = unsafe {
            ffi::cvmstate_get_runs(
                self.raw,
                block.as_ptr(),
                offset,
                size,
                state.to_c(),
                buf.as_mut_ptr() as *mut ffi::cvmstate_range,
                buf.len(),
                &mut n,
            )
        };
        let more = check(rc)? == 1;
        Ok((n, more))
    }

    /// The one state of every page holding a byte of the range, or Mixed.
    pub fn range_state(&self, block: &str, offset: u64, size: u64) -> Result<RangeState> {
        let _busy = self.enter()?;
        let block = c_string("block name", block)?;
        let mut s: c_int = -1;
        // SAFETY: raw is live; s outlives the call.
        check(unsafe { ffi::cvmstate_range_state(self.raw, block.as_ptr(), offset, size, &mut s) })?;
        match PageState::from_c(s) {
            Some(p) => Ok(RangeState::One(p)),
            None => Ok(RangeState::Mixed),
        }
    }

    /// A 64-bit digest of the whole state: equal digests, equal states.
    pub fn digest(&self) -> Result<u64> {
        let _busy = self.enter()?;
        let mut d = 0u64;
        // SAFETY: raw is live.
        check(unsafe { ffi::cvmstate_vm_digest(self.raw, &mut d) })?;
        Ok(d)
    }

    /// The blocks in the order they were added, with their bytes per state.
    pub fn blocks(&self) -> Result<Vec<BlockInfo>> {
        let _busy = self.enter()?;
        let mut count = 0u32;
        // SAFETY: raw is live.
        check(unsafe { ffi::cvmstate_vm_block_count(self.raw, &mut count) })?;
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let mut info = ffi::cvmstate_block_info {
                struct_size: std::mem::size_of::<ffi::cvmstate_block_info>(),
                name: ptr::null(),
                size: 0,
                page_size: 0,
                bytes: [0; 3],
            };
            // SAFETY: raw is live; info is sized as the C header says.
            check(unsafe { ffi::cvmstate_vm_block_info(self.raw, i, &mut info) })?;
            // SAFETY: name is valid while the vm lives; copied at once.
            let name = unsafe { CStr::from_ptr(info.name) }.to_string_lossy().into_owned();
            out.push(BlockInfo {
                name,
                size: info.size,
                page_size: info.page_size,
                shared: info.bytes[0],
                private: info.bytes[1],
                discarded: info.bytes[2],
            });
        }
        Ok(out)
    }

    /// Registers a DMA-mapping listener for `[offset, offset+size)` of
    /// `block` and replays the section's shared runs to it. The VM owns it
    /// until [`Vm::unregister_listener`] (or the VM's drop).
    pub fn register_dma_listener<L: DmaListener + Send + 'static>(
        &self,
        block: &str,
        offset: u64,
        size: u64,
        listener: L,
    ) -> Result<ListenerId> {
        self.register(block, offset, size, ListenerSlot::dma(Box::new(listener)))
    }

    /// Registers a memory-attribute listener and replays the section's
    /// private runs to it.
    pub fn register_attr_listener<L: AttrListener + Send + 'static>(
        &self,
        block: &str,
        offset: u64,
        size: u64,
        listener: L,
    ) -> Result<ListenerId> {
        self.register(block, offset, size, ListenerSlot::attr(Box::new(listener)))
    }

    /// Registers a discard listener (the memory backend) and replays
    /// `populate` for the section's shared and private runs; replay
    /// [`PageState::Discarded`] to it to have the discarded runs freed.
    pub fn register_discard_listener<L: DiscardListener + Send + 'static>(
        &self,
        block: &str,
        offset: u64,
        size: u64,
        listener: L,
    ) -> Result<ListenerId> {
        self.register(block, offset, size, ListenerSlot::discard(Box::new(listener)))
    }

    fn register(&self, block: &str, offset: u64, size: u64, mut slot: Box<ListenerSlot>) -> Result<ListenerId> {
        let busy = self.enter()?;
        let block = c_string("block name", block)?;
        let mut out: *mut ffi::cvmstate_listener = ptr::null_mut();
        // SAFETY: raw is live; the slot is boxed, so its address (the
        // opaque) stays valid until it is unregistered or the vm is freed.
        let rc = unsafe { listener::register(self.raw, block.as_ptr(), offset, size, &mut slot, &mut out) };
        let result = check(rc);
        let panic = slot.panic.take();
        let result = result.map(|_| {
            let id = ListenerId(out as usize);
            self.listeners.borrow_mut().push((id, slot));
            id
        });
        drop(busy);
        if let Some(p) = panic {
            resume_unwind(p);
        }
        result
    }

    /// Withdraws the listener's section from it (discards / clears) and drops it.
    pub fn unregister_listener(&self, id: ListenerId) -> Result<()> {
        let busy = self.enter()?;
        // SAFETY: raw is live; the C API checks the handle by membership.
        let rc = unsafe { ffi::cvmstate_unregister_listener(self.raw, id.0 as *mut ffi::cvmstate_listener) };
        let result = check(rc).map(|_| ());
        drop(busy);
        self.rethrow_listener_panic();
        if result.is_ok() {
            self.listeners.borrow_mut().retain(|(i, _)| *i != id);
        }
        result
    }

    /// Tells the listener again about the runs of its section in `state`
    /// (QEMU's replay_populated / replay_discarded).
    pub fn replay_listener(&self, id: ListenerId, state: PageState) -> Result<()> {
        let busy = self.enter()?;
        // SAFETY: as unregister_listener.
        let rc = unsafe { ffi::cvmstate_listener_replay(self.raw, id.0 as *mut ffi::cvmstate_listener, state.to_c()) };
        let result = check(rc).map(|_| ());
        drop(busy);
        self.rethrow_listener_panic();
        result
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("listeners", &self.listeners.borrow().len()).finish_non_exhaustive()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: raw is live and freed once; the C vm frees its listener
        // handles untold, then the slots drop with self.listeners.
        unsafe { ffi::cvmstate_vm_free(self.raw) };
    }
}
