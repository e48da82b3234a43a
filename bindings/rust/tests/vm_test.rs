// The VM, listeners and store through the crate, against the library.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cvmstate::{AttrListener, DiscardListener, DmaListener, PageState, Range, RangeState, Run, Store, Vm};

const GIB: u64 = 1 << 30;
const ENOSPC: i32 = 28;
const ENOMEM: i32 = 12;

// A VFIO-like listener with a mapping limit, recording what is mapped.
#[derive(Default)]
struct Vfio {
    mappings: u64,
    mapped_bytes: u64,
    limit: u64,
}

struct VfioListener(Arc<Mutex<Vfio>>);

impl DmaListener for VfioListener {
    fn populate(&mut self, _offset: u64, size: u64) -> Result<(), i32> {
        let mut v = self.0.lock().unwrap();
        if v.mappings + 1 > v.limit {
            return Err(ENOSPC);
        }
        v.mappings += 1;
        v.mapped_bytes += size;
        Ok(())
    }
    fn discard(&mut self, _offset: u64, size: u64) {
        let mut v = self.0.lock().unwrap();
        v.mappings = v.mappings.saturating_sub(1); // a discard may split a mapping: a count, not a model
        v.mapped_bytes -= size;
    }
}

struct Kvm(Arc<Mutex<u64>>);

impl AttrListener for Kvm {
    fn set_private(&mut self, _offset: u64, size: u64) -> Result<(), i32> {
        *self.0.lock().unwrap() += size;
        Ok(())
    }
    fn clear_private(&mut self, _offset: u64, size: u64) {
        *self.0.lock().unwrap() -= size;
    }
}

fn bytes_in(vm: &Vm, block: &str, size: u64, state: PageState) -> u64 {
    vm.runs(block, 0, size, Some(state)).unwrap().iter().map(|r| r.size).sum()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cvmstate-rust-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn errors_carry_the_errno_and_the_message() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", GIB, 4096, PageState::Private).unwrap();
    let e = vm.add_block("ram", GIB, 4096, PageState::Private).unwrap_err();
    assert_eq!(e.errno(), 17, "{}", e); // EEXIST
    assert!(e.message().contains("ram"), "{}", e);
    let e = vm.convert("ram", 1, 4096, PageState::Shared).unwrap_err();
    assert_eq!(e.errno(), 22, "{}", e); // EINVAL
    let e = vm.convert("nope", 0, 4096, PageState::Shared).unwrap_err();
    assert_eq!(e.errno(), 2, "{}", e); // ENOENT
    let e = vm.convert("ra\0m", 0, 4096, PageState::Shared).unwrap_err();
    assert_eq!(e.errno(), 22, "{}", e);
    assert_eq!(cvmstate::version().0, 0);
    assert!(cvmstate::version().1 >= 2);
}

#[test]
fn listeners_follow_conversions_and_a_refusal_rolls_back() {
    let vm = Vm::new().unwrap();
    vm.add_block("pc.ram", 4 * GIB, 4096, PageState::Discarded).unwrap();
    let vfio = Arc::new(Mutex::new(Vfio { limit: 65535, ..Default::default() }));
    let private = Arc::new(Mutex::new(0u64));
    let d = vm.register_dma_listener("pc.ram", 0, 4 * GIB, VfioListener(vfio.clone())).unwrap();
    let a = vm.register_attr_listener("pc.ram", 0, 4 * GIB, Kvm(private.clone())).unwrap();
    let mut seed = 42u64;
    for i in 0..3000u64 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let r = seed >> 16;
        let page = (r % (4 * GIB / 4096 - 16)) * 4096;
        let state = [PageState::Shared, PageState::Private, PageState::Discarded][(i % 3) as usize];
        vm.convert("pc.ram", page, 4096 * (1 + r % 16), state).unwrap();
    }
    assert_eq!(vfio.lock().unwrap().mapped_bytes, bytes_in(&vm, "pc.ram", 4 * GIB, PageState::Shared));
    assert_eq!(*private.lock().unwrap(), bytes_in(&vm, "pc.ram", 4 * GIB, PageState::Private));
    // At the mapping limit the DMA listener refuses: its errno comes back
    // and nothing changed, not even the attribute listener's view.
    let digest = vm.digest().unwrap();
    let private_before = *private.lock().unwrap();
    let run = vm.runs("pc.ram", 0, 4 * GIB, Some(PageState::Private)).unwrap()[0];
    {
        let mut v = vfio.lock().unwrap();
        v.limit = v.mappings;
    }
    let e = vm.convert("pc.ram", run.offset, 4096, PageState::Shared).unwrap_err();
    assert_eq!(e.errno(), ENOSPC, "{}", e);
    assert_eq!(vm.digest().unwrap(), digest);
    assert_eq!(*private.lock().unwrap(), private_before);
    assert_eq!(vm.state_at("pc.ram", run.offset).unwrap(), PageState::Private);
    // Replay on demand: the shared runs again.
    let before = vfio.lock().unwrap().mapped_bytes;
    vfio.lock().unwrap().limit = u64::MAX;
    vm.replay_listener(d, PageState::Shared).unwrap();
    assert_eq!(vfio.lock().unwrap().mapped_bytes, 2 * before);
    vm.unregister_listener(d).unwrap();
    vm.unregister_listener(a).unwrap();
    assert_eq!(*private.lock().unwrap(), 0);
    assert_eq!(vm.unregister_listener(a).unwrap_err().errno(), 2);
}

// A memory backend: the bytes it holds, freed on discard; it refuses to
// back more than `limit`.
struct Backend {
    held: Arc<Mutex<u64>>,
    limit: u64,
}

impl DiscardListener for Backend {
    fn populate(&mut self, _offset: u64, size: u64) -> Result<(), i32> {
        let mut held = self.held.lock().unwrap();
        if *held + size > self.limit {
            return Err(ENOMEM);
        }
        *held += size;
        Ok(())
    }
    fn discard(&mut self, _offset: u64, size: u64) {
        *self.held.lock().unwrap() -= size;
    }
}

#[test]
fn a_discard_listener_holds_exactly_the_backed_pages() {
    let vm = Vm::new().unwrap();
    vm.add_block("pc.ram", GIB, 4096, PageState::Discarded).unwrap();
    vm.convert("pc.ram", 0, 64 << 20, PageState::Private).unwrap();
    let held = Arc::new(Mutex::new(0u64));
    let l = vm.register_discard_listener("pc.ram", 0, GIB, Backend { held: held.clone(), limit: 512 << 20 }).unwrap();
    assert_eq!(*held.lock().unwrap(), 64 << 20);
    let mut seed = 7u64;
    for i in 0..2000u64 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let r = seed >> 16;
        let page = (r % (GIB / 4096 - 64)) * 4096;
        let state = [PageState::Shared, PageState::Private, PageState::Discarded][(i % 3) as usize];
        vm.convert("pc.ram", page, 4096 * (1 + r % 64), state).unwrap();
    }
    let backed = GIB - bytes_in(&vm, "pc.ram", GIB, PageState::Discarded);
    assert_eq!(*held.lock().unwrap(), backed);
    // Past its limit it refuses with ENOMEM, and nothing changes.
    let digest = vm.digest().unwrap();
    let e = vm.convert("pc.ram", 0, GIB, PageState::Shared).unwrap_err();
    assert_eq!(e.errno(), ENOMEM, "{}", e);
    assert_eq!(vm.digest().unwrap(), digest);
    assert_eq!(*held.lock().unwrap(), backed);
    vm.unregister_listener(l).unwrap();
    assert_eq!(*held.lock().unwrap(), 0);
}

#[test]
fn layout_and_range_queries() {
    let vm = Vm::new().unwrap();
    vm.add_block("pc.bios", 4 << 20, 4096, PageState::Private).unwrap();
    vm.add_block("pc.ram", 4 * GIB, 2 << 20, PageState::Discarded).unwrap();
    vm.convert("pc.ram", 0, 6 << 20, PageState::Shared).unwrap();
    let blocks = vm.blocks().unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].name, "pc.bios");
    assert_eq!(blocks[0].private, 4 << 20);
    assert_eq!(blocks[1].page_size, 2 << 20);
    assert_eq!(blocks[1].shared, 6 << 20);
    assert_eq!(blocks[1].discarded, 4 * GIB - (6 << 20));
    assert_eq!(vm.range_state("pc.ram", 0, 6 << 20).unwrap(), RangeState::One(PageState::Shared));
    assert_eq!(vm.range_state("pc.ram", 4 << 20, 4 << 20).unwrap(), RangeState::Mixed);
    assert_eq!(vm.range_state("pc.ram", 0, 0).unwrap_err().errno(), 22);
    let runs = vm.runs("pc.ram", 0, 8 << 20, None).unwrap();
    assert_eq!(
        runs,
        vec![
            Run { offset: 0, size: 6 << 20, state: PageState::Shared },
            Run { offset: 6 << 20, size: 2 << 20, state: PageState::Discarded }
        ]
    );
    let mut seen = 0;
    vm.for_each_run("pc.ram", 0, 4 * GIB, None, |_| {
        seen += 1;
        false
    })
    .unwrap();
    assert_eq!(seen, 1, "stops when the closure says so");
}

#[test]
fn get_runs_fills_a_buffer_at_a_time() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", GIB, 4096, PageState::Private).unwrap();
    // 1000 shared runs of 2 pages, 4 pages apart.
    for i in 0..1000u64 {
        vm.convert("ram", i * 4 * 4096, 2 * 4096, PageState::Shared).unwrap();
    }
    let want: Vec<Range> = vm
        .runs("ram", 0, GIB, Some(PageState::Shared))
        .unwrap()
        .iter()
        .map(|r| Range { offset: r.offset, size: r.size })
        .collect();
    assert_eq!(want.len(), 1000);
    let mut buf = [Range::default(); 64];
    let (mut got, mut at, mut calls) = (Vec::new(), 0u64, 0);
    loop {
        let (n, more) = vm.get_runs("ram", at, GIB - at, PageState::Shared, &mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        calls += 1;
        if !more {
            break;
        }
        at = buf[n - 1].offset + buf[n - 1].size;
    }
    assert_eq!(got, want);
    assert_eq!(calls, (1000 + 63) / 64);
    assert_eq!(vm.get_runs("ram", 0, GIB, PageState::Shared, &mut []).unwrap_err().errno(), 22);
}

#[test]
fn a_callback_cannot_call_back_into_its_vm() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", GIB, 4096, PageState::Shared).unwrap();
    let mut inner = None;
    vm.for_each_run("ram", 0, GIB, None, |_| {
        inner = Some(vm.convert("ram", 0, 4096, PageState::Private));
        true
    })
    .unwrap();
    assert_eq!(inner.unwrap().unwrap_err().errno(), 16); // EBUSY
    assert_eq!(vm.state_at("ram", 0).unwrap(), PageState::Shared);
}

#[test]
fn checkpoints_load_back_equal() {
    let dir = temp_dir("store");
    let vm = Vm::new().unwrap();
    vm.add_block("ram", 16 * GIB, 4096, PageState::Private).unwrap();
    let store = Store::open(dir.join("db")).unwrap();
    let first = store.checkpoint(&vm, "guest").unwrap();
    for i in 0..100u64 {
        vm.convert("ram", i * (64 << 20), 4096 * (1 + i % 7), PageState::Shared).unwrap();
    }
    let incremental = store.checkpoint(&vm, "guest").unwrap();
    assert!(first > 0 && incremental > 0);
    let loaded = store.load("guest").unwrap();
    assert_eq!(loaded.digest().unwrap(), vm.digest().unwrap());
    assert_eq!(store.load("other").unwrap_err().errno(), 2);
    assert_eq!(store.commit("guest", &vm).unwrap_err().errno(), 17);
    store.delete("guest").unwrap();
    assert_eq!(store.load("guest").unwrap_err().errno(), 2);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

struct Panicky;

impl DmaListener for Panicky {
    fn populate(&mut self, _offset: u64, _size: u64) -> Result<(), i32> {
        panic!("a bug in the VMM's listener");
    }
    fn discard(&mut self, _offset: u64, _size: u64) {}
}

#[test]
fn a_panicking_listener_refuses_and_its_panic_comes_back() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", GIB, 4096, PageState::Private).unwrap();
    vm.register_dma_listener("ram", 0, GIB, Panicky).unwrap();
    let digest = vm.digest().unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = vm.convert("ram", 0, 4096, PageState::Shared);
    }));
    let payload = caught.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"a bug in the VMM's listener"));
    // The panic was a refusal at the C boundary: nothing changed, and the
    // vm is usable again.
    assert_eq!(vm.digest().unwrap(), digest);
    assert_eq!(vm.state_at("ram", 0).unwrap(), PageState::Private);
    vm.convert("ram", 0, 4096, PageState::Discarded).unwrap();
}
