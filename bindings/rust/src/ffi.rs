//! The C API's declarations (include/cvmstate/cvmstate.h), as they are.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_long, c_void};

pub const CVMSTATE_SHARED: c_int = 0;
pub const CVMSTATE_PRIVATE: c_int = 1;
pub const CVMSTATE_DISCARDED: c_int = 2;
pub const CVMSTATE_MIXED: c_int = 3;

#[repr(C)]
pub struct cvmstate_vm {
    _private: [u8; 0],
}
#[repr(C)]
pub struct cvmstate_listener {
    _private: [u8; 0],
}
#[repr(C)]
pub struct cvmstate_store {
    _private: [u8; 0],
}
#[repr(C)]
pub struct cvmstate_source {
    _private: [u8; 0],
}
#[repr(C)]
pub struct cvmstate_destination {
    _private: [u8; 0],
}

pub type cvmstate_run_fn = unsafe extern "C" fn(opaque: *mut c_void, offset: u64, size: u64, state: c_int) -> c_int;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct cvmstate_range {
    pub offset: u64,
    pub size: u64,
}

#[repr(C)]
pub struct cvmstate_block_info {
    pub struct_size: usize,
    pub name: *const c_char,
    pub size: u64,
    pub page_size: u64,
    pub bytes: [u64; 3],
}

#[repr(C)]
pub struct cvmstate_dma_ops_v1 {
    pub struct_size: usize,
    pub populate: Option<unsafe extern "C" fn(*mut c_void, u64, u64) -> c_int>,
    pub discard: Option<unsafe extern "C" fn(*mut c_void, u64, u64)>,
    pub granularity: u64,
    pub double_discard_supported: c_int,
}

#[repr(C)]
pub struct cvmstate_attr_ops_v1 {
    pub struct_size: usize,
    pub set_private: Option<unsafe extern "C" fn(*mut c_void, u64, u64) -> c_int>,
    pub clear_private: Option<unsafe extern "C" fn(*mut c_void, u64, u64)>,
    pub granularity: u64,
}

#[repr(C)]
pub struct cvmstate_discard_ops_v1 {
    pub struct_size: usize,
    pub populate: Option<unsafe extern "C" fn(*mut c_void, u64, u64) -> c_int>,
    pub discard: Option<unsafe extern "C" fn(*mut c_void, u64, u64)>,
    pub granularity: u64,
}

#[repr(C)]
pub struct cvmstate_io_v1 {
    pub struct_size: usize,
    pub read: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> c_long>,
    pub write: Option<unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> c_long>,
}

extern "C" {
    pub fn cvmstate_version() -> u32;
    pub fn cvmstate_last_error() -> *const c_char;

    pub fn cvmstate_vm_new() -> *mut cvmstate_vm;
    pub fn cvmstate_vm_free(vm: *mut cvmstate_vm);
    pub fn cvmstate_vm_add_block(vm: *mut cvmstate_vm, name: *const c_char, size: u64, page_size: u64, initial: c_int)
        -> c_int;
    pub fn cvmstate_convert(vm: *mut cvmstate_vm, block: *const c_char, offset: u64, size: u64, state: c_int) -> c_int;
    pub fn cvmstate_state_at(vm: *const cvmstate_vm, block: *const c_char, offset: u64) -> c_int;
    pub fn cvmstate_for_each_run(
        vm: *const cvmstate_vm,
        block: *const c_char,
        offset: u64,
        size: u64,
        state: c_int,
        f: cvmstate_run_fn,
        opaque: *mut c_void,
    ) -> c_int;
    pub fn cvmstate_get_runs(
        vm: *const cvmstate_vm,
        block: *const c_char,
        offset: u64,
        size: u64,
        state: c_int,
        runs: *mut cvmstate_range,
        capacity: usize,
        count: *mut usize,
    ) -> c_int;
    pub fn cvmstate_vm_digest(vm: *const cvmstate_vm, digest: *mut u64) -> c_int;
    pub fn cvmstate_range_state(
        vm: *const cvmstate_vm,
        block: *const c_char,
        offset: u64,
        size: u64,
        state: *mut c_int,
    ) -> c_int;
    pub fn cvmstate_vm_block_count(vm: *const cvmstate_vm, count: *mut u32) -> c_int;
    pub fn cvmstate_vm_block_info(vm: *const cvmstate_vm, index: u32, info: *mut cvmstate_block_info) -> c_int;

    pub fn cvmstate_register_dma_listener_v1(
        vm: *mut cvmstate_vm,
        block: *const c_char,
        offset: u64,
        size: u64,
        ops: *const cvmstate_dma_ops_v1,
        opaque: *mut c_void,
        out: *mut *mut cvmstate_listener,
    ) -> c_int;
    pub fn cvmstate_register_attr_listener_v1(
        vm: *mut cvmstate_vm,
        block: *const c_char,
        offset: u64,
        size: u64,
        ops: *const cvmstate_attr_ops_v1,
        opaque: *mut c_void,
        out: *mut *mut cvmstate_listener,
    ) -> c_int;
    pub fn cvmstate_register_discard_listener_v1(
        vm: *mut cvmstate_vm,
        block: *const c_char,
        offset: u64,
        size: u64,
        ops: *const cvmstate_discard_ops_v1,
        opaque: *mut c_void,
        out: *mut *mut cvmstate_listener,
    ) -> c_int;
    pub fn cvmstate_unregister_listener(vm: *mut cvmstate_vm, listener: *mut cvmstate_listener) -> c_int;
    pub fn cvmstate_listener_replay(vm: *mut cvmstate_vm, listener: *mut cvmstate_listener, state: c_int) -> c_int;

    pub fn cvmstate_store_open(dir: *const c_char, out: *mut *mut cvmstate_store) -> c_int;
    pub fn cvmstate_store_close(store: *mut cvmstate_store);
    pub fn cvmstate_checkpoint(
        store: *mut cvmstate_store,
        vm: *mut cvmstate_vm,
        vm_id: *const c_char,
        bytes: *mut u64,
    ) -> c_int;
    pub fn cvmstate_store_load(store: *mut cvmstate_store, vm_id: *const c_char, out: *mut *mut cvmstate_vm) -> c_int;
    pub fn cvmstate_store_delete(store: *mut cvmstate_store, vm_id: *const c_char) -> c_int;
    pub fn cvmstate_store_commit(store: *mut cvmstate_store, vm_id: *const c_char, vm: *const cvmstate_vm) -> c_int;

    pub fn cvmstate_source_new_fd(
        vm: *mut cvmstate_vm,
        vm_id: *const c_char,
        fd: c_int,
        psk_file: *const c_char,
        out: *mut *mut cvmstate_source,
    ) -> c_int;
    pub fn cvmstate_source_new_io_v1(
        vm: *mut cvmstate_vm,
        vm_id: *const c_char,
        io: *const cvmstate_io_v1,
        opaque: *mut c_void,
        psk_file: *const c_char,
        out: *mut *mut cvmstate_source,
    ) -> c_int;
    pub fn cvmstate_source_set_timeout(src: *mut cvmstate_source, timeout_seconds: f64) -> c_int;
    pub fn cvmstate_source_pending(src: *const cvmstate_source, bytes: *mut u64) -> c_int;
    pub fn cvmstate_source_step(src: *mut cvmstate_source, max_bytes: u64, sent: *mut u64, round_done: *mut c_int)
        -> c_int;
    pub fn cvmstate_source_cancel(src: *mut cvmstate_source) -> c_int;
    pub fn cvmstate_source_begin(src: *mut cvmstate_source, bytes: *mut u64) -> c_int;
    pub fn cvmstate_source_round(src: *mut cvmstate_source, bytes: *mut u64) -> c_int;
    pub fn cvmstate_source_finish(src: *mut cvmstate_source, bytes: *mut u64) -> c_int;
    pub fn cvmstate_source_rounds(src: *const cvmstate_source) -> u32;
    pub fn cvmstate_source_end_sent(src: *const cvmstate_source) -> c_int;
    pub fn cvmstate_source_round_bytes(src: *const cvmstate_source, round: u32) -> u64;
    pub fn cvmstate_source_free(src: *mut cvmstate_source);

    pub fn cvmstate_destination_new_fd(
        fd: c_int,
        psk_file: *const c_char,
        timeout_seconds: f64,
        out: *mut *mut cvmstate_destination,
    ) -> c_int;
    pub fn cvmstate_destination_new_io_v1(
        io: *const cvmstate_io_v1,
        opaque: *mut c_void,
        psk_file: *const c_char,
        timeout_seconds: f64,
        out: *mut *mut cvmstate_destination,
    ) -> c_int;
    pub fn cvmstate_destination_set_timeout(dst: *mut cvmstate_destination, timeout_seconds: f64) -> c_int;
    pub fn cvmstate_destination_cancel(dst: *mut cvmstate_destination) -> c_int;
    pub fn cvmstate_destination_set_max_runs(dst: *mut cvmstate_destination, max_runs: u64) -> c_int;
    pub fn cvmstate_destination_receive(dst: *mut cvmstate_destination, out: *mut *mut cvmstate_vm) -> c_int;
    pub fn cvmstate_destination_vm_id(dst: *const cvmstate_destination) -> *const c_char;
    pub fn cvmstate_destination_ack(dst: *mut cvmstate_destination, ok: c_int, reason: *const c_char) -> c_int;
    pub fn cvmstate_destination_free(dst: *mut cvmstate_destination);
}
