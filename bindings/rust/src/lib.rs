//! Safe Rust bindings to cvmstate, the page-state store for live migration
//! of confidential VMs (the C API of `include/cvmstate/cvmstate.h`, v1).
//!
//! * [`Vm`]: the page state of a VM's RAM blocks, with listeners
//!   ([`DmaListener`], [`AttrListener`], [`DiscardListener`]) told of every
//!   conversion.
//! * [`Store`]: durable, incremental checkpoints (RocksDB).
//! * [`Source`] and [`Destination`]: live migration over a file descriptor
//!   or anything that is `Read + Write`, step by step inside a VMM's own
//!   loop, cancellable from another thread ([`Canceller`]).
//!
//! Every failing call returns an [`Error`] with the C API's errno and its
//! one-line message. Nothing here panics on bad input; a panic inside a
//! listener or an I/O object is caught at the C boundary and becomes an
//! error (EIO).
//!
//! Thread safety follows the C API: a [`Vm`] and what works on it are used
//! by one thread at a time (`Send`, not `Sync`); a [`Store`] may be shared
//! by threads; a [`Canceller`] may be used from any thread.

pub mod ffi;

mod error;
mod listener;
mod migration;
mod store;
mod vm;

pub use error::{Error, Result};
pub use listener::{AttrListener, DiscardListener, DmaListener, ListenerId};
pub use migration::{Canceller, Destination, Source, Step};
pub use store::Store;
pub use vm::{BlockInfo, PageState, Range, RangeState, Run, Vm};

/// The library's version at run time: (major, minor, patch).
pub fn version() -> (u32, u32, u32) {
    // SAFETY: no arguments; callable at any time.
    let v = unsafe { ffi::cvmstate_version() };
    (v >> 16, (v >> 8) & 0xff, v & 0xff)
}
