//! Listeners: Rust objects told of every conversion, through the C API's
//! v1 listener structs.
use std::any::Any;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{EIO, EPERM};
use crate::ffi;

/// A DMA-mapping listener (as VFIO): told when pages become shared
/// (`populate`, which may refuse with an errno, positive or negative) and
/// stop being shared (`discard`, which cannot fail). Callbacks run on the
/// thread converting, inside the call; they must not call back into the VM.
pub trait DmaListener {
    fn populate(&mut self, offset: u64, size: u64) -> std::result::Result<(), i32>;
    fn discard(&mut self, offset: u64, size: u64);
    /// Bytes, a power of two; 0: the block's page size.
    fn granularity(&self) -> u64 {
        0
    }
    /// Whether discard may cover pages that are not populated.
    fn double_discard_supported(&self) -> bool {
        false
    }
}

/// A memory-attribute listener (as KVM_SET_MEMORY_ATTRIBUTES): told when
/// pages become private (may refuse) and stop being private.
pub trait AttrListener {
    fn set_private(&mut self, offset: u64, size: u64) -> std::result::Result<(), i32>;
    fn clear_private(&mut self, offset: u64, size: u64);
    fn granularity(&self) -> u64 {
        0
    }
}

/// A discard listener (C API 0.3), as the VMM's memory backend: told when
/// pages became discarded (`discard`: free their memory, for example with
/// `fallocate(PUNCH_HOLE)`; cannot fail) and when they leave discarded for
/// shared or private (`populate`: they need backing again; may refuse).
/// Changes between shared and private are not told to it.
pub trait DiscardListener {
    fn populate(&mut self, _offset: u64, _size: u64) -> std::result::Result<(), i32> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, size: u64);
    fn granularity(&self) -> u64 {
        0
    }
}

/// A registered listener, for unregistering or replaying it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub(crate) usize);

pub(crate) enum Kind {
    Dma(Box<dyn DmaListener + Send>),
    Attr(Box<dyn AttrListener + Send>),
    Discard(Box<dyn DiscardListener + Send>),
}

/// What a C listener's opaque points at.
pub(crate) struct ListenerSlot {
    kind: Kind,
    /// A panic a callback met, re-raised once the C call returns.
    pub(crate) panic: Option<Box<dyn Any + Send>>,
}

impl ListenerSlot {
    pub(crate) fn dma(l: Box<dyn DmaListener + Send>) -> Box<ListenerSlot> {
        Box::new(ListenerSlot { kind: Kind::Dma(l), panic: None })
    }
    pub(crate) fn attr(l: Box<dyn AttrListener + Send>) -> Box<ListenerSlot> {
        Box::new(ListenerSlot { kind: Kind::Attr(l), panic: None })
    }
    pub(crate) fn discard(l: Box<dyn DiscardListener + Send>) -> Box<ListenerSlot> {
        Box::new(ListenerSlot { kind: Kind::Discard(l), panic: None })
    }
}

// A refusal's errno for C: negative, never 0.
fn refusal(code: i32) -> c_int {
    match code {
        0 => -EPERM,
        c if c > 0 => -c,
        c => c,
    }
}

// Runs f on the slot behind opaque; a panic is kept for the caller and
// returns `on_panic`.
unsafe fn with_slot<R>(opaque: *mut c_void, on_panic: R, f: impl FnOnce(&mut Kind) -> R) -> R {
    // SAFETY: opaque is the boxed slot registered with this callback,
    // alive while it is registered.
    let slot = &mut *(opaque as *mut ListenerSlot);
    let kind = &mut slot.kind;
    match catch_unwind(AssertUnwindSafe(|| f(kind))) {
        Ok(r) => r,
        Err(p) => {
            slot.panic = Some(p);
            on_panic
        }
    }
}

unsafe extern "C" fn populate(opaque: *mut c_void, offset: u64, size: u64) -> c_int {
    with_slot(opaque, -EIO, |k| match k {
        Kind::Dma(l) => l.populate(offset, size).map_or_else(refusal, |_| 0),
        Kind::Discard(l) => l.populate(offset, size).map_or_else(refusal, |_| 0),
        Kind::Attr(_) => 0,
    })
}

unsafe extern "C" fn discard(opaque: *mut c_void, offset: u64, size: u64) {
    with_slot(opaque, (), |k| match k {
        Kind::Dma(l) => l.discard(offset, size),
        Kind::Discard(l) => l.discard(offset, size),
        Kind::Attr(_) => {}
    })
}

unsafe extern "C" fn set_private(opaque: *mut c_void, offset: u64, size: u64) -> c_int {
    with_slot(opaque, -EIO, |k| match k {
        Kind::Attr(l) => l.set_private(offset, size).map_or_else(refusal, |_| 0),
        Kind::Dma(_) | Kind::Discard(_) => 0,
    })
}

unsafe extern "C" fn clear_private(opaque: *mut c_void, offset: u64, size: u64) {
    with_slot(opaque, (), |k| {
        if let Kind::Attr(l) = k {
            l.clear_private(offset, size)
        }
    })
}

/// Registers the slot's listener with the C vm.
pub(crate) unsafe fn register(
    vm: *mut ffi::cvmstate_vm,
    block: *const c_char,
    offset: u64,
    size: u64,
    slot: &mut Box<ListenerSlot>,
    out: *mut *mut ffi::cvmstate_listener,
) -> c_int {
    // The ops first: no reference into the slot may live while C calls
    // back through its pointer.
    enum Ops {
        Dma(ffi::cvmstate_dma_ops_v1),
        Attr(ffi::cvmstate_attr_ops_v1),
        Discard(ffi::cvmstate_discard_ops_v1),
    }
    let ops = match &slot.kind {
        Kind::Dma(l) => Ops::Dma(ffi::cvmstate_dma_ops_v1 {
            struct_size: std::mem::size_of::<ffi::cvmstate_dma_ops_v1>(),
            populate: Some(populate),
            discard: Some(discard),
            granularity: l.granularity(),
            double_discard_supported: l.double_discard_supported() as c_int,
        }),
        Kind::Attr(l) => Ops::Attr(ffi::cvmstate_attr_ops_v1 {
            struct_size: std::mem::size_of::<ffi::cvmstate_attr_ops_v1>(),
            set_private: Some(set_private),
            clear_private: Some(clear_private),
            granularity: l.granularity(),
        }),
        Kind::Discard(l) => Ops::Discard(ffi::cvmstate_discard_ops_v1 {
            struct_size: std::mem::size_of::<ffi::cvmstate_discard_ops_v1>(),
            populate: Some(populate),
            discard: Some(discard),
            granularity: l.granularity(),
        }),
    };
    let opaque = &mut **slot as *mut ListenerSlot as *mut c_void;
    match ops {
        Ops::Dma(ops) => ffi::cvmstate_register_dma_listener_v1(vm, block, offset, size, &ops, opaque, out),
        Ops::Attr(ops) => ffi::cvmstate_register_attr_listener_v1(vm, block, offset, size, &ops, opaque, out),
        Ops::Discard(ops) => ffi::cvmstate_register_discard_listener_v1(vm, block, offset, size, &ops, opaque, out),
    }
}
