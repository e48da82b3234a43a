//! The persistent store: checkpoints of VMs in a RocksDB directory.
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use crate::error::{c_string, check, Error, Result, EINVAL};
use crate::ffi;
use crate::vm::Vm;

/// An open store (one process at a time per directory). Shared by threads:
/// checkpoints, loads, commits and deletes of different VM ids may run at
/// once.
pub struct Store {
    raw: *mut ffi::cvmstate_store,
}

// SAFETY: the C API allows a store to be shared by threads (its calls lock
// what they share).
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = std::ffi::CString::new(dir.as_ref().as_os_str().as_bytes())
            .map_err(|_| Error::new(EINVAL, "the store path contains a NUL byte"))?;
        let mut raw = ptr::null_mut();
        // SAFETY: dir is a valid C string; raw receives the handle.
        check(unsafe { ffi::cvmstate_store_open(dir.as_ptr(), &mut raw) })?;
        Ok(Store { raw })
    }

    /// Commits `vm` as `vm_id` durably: the first time whole, then only what
    /// changed. Returns the bytes written.
    pub fn checkpoint(&self, vm: &Vm, vm_id: &str) -> Result<u64> {
        let _busy = vm.enter()?;
        let id = c_string("VM id", vm_id)?;
        let mut bytes = 0u64;
        // SAFETY: both handles are live; the vm is not in another call.
        check(unsafe { ffi::cvmstate_checkpoint(self.raw, vm.raw, id.as_ptr(), &mut bytes) })?;
        Ok(bytes)
    }

    /// The last committed state of `vm_id`, verified (ENOENT if none, EBADMSG
    /// if corrupted).
    pub fn load(&self, vm_id: &str) -> Result<Vm> {
        let id = c_string("VM id", vm_id)?;
        let mut raw = ptr::null_mut();
        // SAFETY: the store is live; raw receives a new vm.
        check(unsafe { ffi::cvmstate_store_load(self.raw, id.as_ptr(), &mut raw) })?;
        Ok(Vm::from_raw(raw))
    }

    /// Commits a received vm under `vm_id` in one batch (EEXIST if it exists).
    pub fn commit(&self, vm_id: &str, vm: &Vm) -> Result<()> {
        let _busy = vm.enter()?;
        let id = c_string("VM id", vm_id)?;
        // SAFETY: both handles are live.
        check(unsafe { ffi::cvmstate_store_commit(self.raw, id.as_ptr(), vm.raw) })?;
        Ok(())
    }

    /// Removes `vm_id`'s checkpoint (ENOENT if none).
    pub fn delete(&self, vm_id: &str) -> Result<()> {
        let id = c_string("VM id", vm_id)?;
        // SAFETY: the store is live.
        check(unsafe { ffi::cvmstate_store_delete(self.raw, id.as_ptr()) })?;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: raw is live and closed once.
        unsafe { ffi::cvmstate_store_close(self.raw) };
    }
}
