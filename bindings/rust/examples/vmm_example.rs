//! A small VMM on the cvmstate crate, as examples/vmm_example.c: it handles
//! the guest's page-conversion exits, keeps a VFIO-like DMA listener and a
//! KVM-like memory-attribute listener in step, checkpoints, and migrates
//! the state to a destination (a thread over a socket pair here) that
//! commits it, rebuilds its DMA mappings and acknowledges. Exits 0 only if
//! both sides end up equal.
use std::os::unix::net::UnixStream;
use std::process::exit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cvmstate::{AttrListener, DmaListener, PageState, Source, Store, Vm};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const ENOSPC: i32 = 28;

#[derive(Default)]
struct Vfio {
    mappings: u64,
    limit: u64,
    mapped_bytes: u64,
}

#[derive(Clone)]
struct VfioListener(Arc<Mutex<Vfio>>);

impl DmaListener for VfioListener {
    fn populate(&mut self, _offset: u64, size: u64) -> Result<(), i32> {
        let mut v = self.0.lock().unwrap();
        if v.mappings + 1 > v.limit {
            return Err(ENOSPC); // as type1's dma_entry_limit
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

#[derive(Clone)]
struct KvmAttributes(Arc<Mutex<u64>>);

impl AttrListener for KvmAttributes {
    fn set_private(&mut self, _offset: u64, size: u64) -> Result<(), i32> {
        *self.0.lock().unwrap() += size;
        Ok(())
    }
    fn clear_private(&mut self, _offset: u64, size: u64) {
        *self.0.lock().unwrap() -= size;
    }
}

fn check<T>(r: cvmstate::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("vmm_example: {}: {}", what, e);
        exit(1)
    })
}

fn bytes_in(vm: &Vm, state: PageState) -> u64 {
    check(vm.blocks(), "blocks")
        .iter()
        .filter(|b| b.name == "pc.ram")
        .map(|b| match state {
            PageState::Shared => b.shared,
            PageState::Private => b.private,
            PageState::Discarded => b.discarded,
        })
        .sum()
}

/// A guest's conversion exits: accept memory, share SWIOTLB, DMA churn.
fn run_guest(vm: &Vm, seed: &mut u64, exits: u32) {
    for i in 0..exits {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let r = *seed >> 16;
        let page = (r % (4 * GIB / 4096 - 16)) * 4096;
        let result = match i % 3 {
            0 => vm.convert("pc.ram", page & !(2 * MIB - 1), 2 * MIB, PageState::Private),
            1 => vm.convert("pc.ram", page, 4096 * (1 + r % 16), PageState::Shared),
            _ => vm.convert("pc.ram", page, 4096, if r & 1 == 1 { PageState::Private } else { PageState::Discarded }),
        };
        check(result, "convert");
    }
}

/// The destination host: receive, commit, rebuild, acknowledge.
fn destination(stream: UnixStream, db: std::path::PathBuf) -> cvmstate::Result<u64> {
    let mut dst = cvmstate::Destination::new_fd(&stream, None, Duration::from_secs(30))?;
    let vm = dst.receive()?;
    let store = Store::open(db)?;
    store.commit(&dst.vm_id(), &vm)?;
    // Rebuild DMA mappings and memory attributes before the guest resumes.
    let vfio = Arc::new(Mutex::new(Vfio { limit: 65535, ..Default::default() }));
    let private = Arc::new(Mutex::new(0u64));
    vm.register_dma_listener("pc.ram", 0, 4 * GIB, VfioListener(vfio.clone()))?;
    vm.register_attr_listener("pc.ram", 0, 4 * GIB, KvmAttributes(private.clone()))?;
    if vfio.lock().unwrap().mapped_bytes != bytes_in(&vm, PageState::Shared)
        || *private.lock().unwrap() != bytes_in(&vm, PageState::Private)
    {
        dst.ack(false, Some("listeners disagree with the state"))?;
        return Err(cvmstate::Error::new(5, "listeners disagree with the state"));
    }
    dst.ack(true, Some("ready"))?;
    println!("destination: {} DMA mappings rebuilt, ready", vfio.lock().unwrap().mappings);
    vm.digest()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("cvmstate-rust-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    check(std::fs::create_dir_all(&dir).map_err(|e| cvmstate::Error::new(5, e.to_string())), "mkdir");
    let (major, minor, patch) = cvmstate::version();
    println!("cvmstate {}.{}.{}", major, minor, patch);

    let vm = check(Vm::new(), "vm");
    check(vm.add_block("pc.bios", 4 * MIB, 4096, PageState::Private), "block");
    check(vm.add_block("pc.ram", 4 * GIB, 4096, PageState::Discarded), "block");
    assert_eq!(vm.add_block("pc.ram", 4096, 4096, PageState::Shared).unwrap_err().errno(), 17);
    assert_eq!(vm.convert("pc.ram", 2048, 4096, PageState::Shared).unwrap_err().errno(), 22);

    let vfio = Arc::new(Mutex::new(Vfio { limit: 65535, ..Default::default() }));
    let private = Arc::new(Mutex::new(0u64));
    let l1 = check(vm.register_dma_listener("pc.ram", 0, 4 * GIB, VfioListener(vfio.clone())), "dma listener");
    let l2 = check(vm.register_attr_listener("pc.ram", 0, 4 * GIB, KvmAttributes(private.clone())), "attr listener");

    let mut seed = 42u64;
    check(vm.convert("pc.ram", GIB, 64 * MIB, PageState::Shared), "swiotlb");
    run_guest(&vm, &mut seed, 3000);
    // A listener that refuses: the conversion is rolled back, its code returned.
    let limit = vfio.lock().unwrap().limit;
    {
        let mut v = vfio.lock().unwrap();
        v.limit = v.mappings;
    }
    let before = check(vm.state_at("pc.ram", 3 * GIB), "state");
    let r = vm.convert("pc.ram", 3 * GIB, 8192, PageState::Shared);
    if before != PageState::Shared
        && (r.as_ref().map_err(|e| e.errno()) != Err(ENOSPC)
            || check(vm.state_at("pc.ram", 3 * GIB), "state") != before)
    {
        eprintln!("refusal not rolled back ({:?})", r);
        exit(1);
    }
    vfio.lock().unwrap().limit = limit;
    if vfio.lock().unwrap().mapped_bytes != bytes_in(&vm, PageState::Shared)
        || *private.lock().unwrap() != bytes_in(&vm, PageState::Private)
    {
        eprintln!("listeners out of step with the state");
        exit(1);
    }
    {
        let v = vfio.lock().unwrap();
        println!("source: {} DMA mappings for {} shared bytes", v.mappings, v.mapped_bytes);
    }

    let store = check(Store::open(dir.join("src")), "open store");
    println!("checkpoint: {} bytes", check(store.checkpoint(&vm, "guest"), "checkpoint"));
    run_guest(&vm, &mut seed, 100);
    println!("incremental checkpoint: {} bytes", check(store.checkpoint(&vm, "guest"), "checkpoint"));

    let (a, b) = check(UnixStream::pair().map_err(|e| cvmstate::Error::new(5, e.to_string())), "socketpair");
    let dst_db = dir.join("dst");
    let dest = std::thread::spawn(move || destination(b, dst_db));
    let mut src = check(Source::new_fd(&vm, "guest", &a, None), "source");
    check(src.begin(), "round 0");
    run_guest(&vm, &mut seed, 200); // the guest keeps converting during pre-copy
    check(src.round(), "pre-copy round");
    run_guest(&vm, &mut seed, 50);
    check(src.finish(), "stop-and-copy");
    for r in 0..src.rounds() {
        println!("round {}: {} bytes", r, src.round_bytes(r));
    }
    let received = match dest.join() {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            eprintln!("vmm_example: destination: {}", e);
            exit(1)
        }
        Err(_) => exit(1),
    };
    drop(src);

    let dst_store = check(Store::open(dir.join("dst")), "open destination store");
    let moved = check(dst_store.load("guest"), "load destination");
    let equal = check(moved.digest(), "digest") == check(vm.digest(), "digest") && received == check(vm.digest(), "digest");
    println!("{}", if equal { "destination equals source: OK" } else { "MISMATCH" });
    check(vm.unregister_listener(l1), "unregister");
    check(vm.unregister_listener(l2), "unregister");
    drop(dst_store);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    exit(if equal { 0 } else { 1 });
}
