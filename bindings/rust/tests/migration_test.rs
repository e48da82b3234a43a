// Live migration through the crate: a VMM's loop over a socket, over a Rust
// channel, and a cancel from another thread.
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cvmstate::{Destination, PageState, Source, Vm};

const GIB: u64 = 1 << 30;
const ECANCELED: i32 = 125;

fn guest_converts(vm: &Vm, seed: &mut u64, n: u32) {
    for _ in 0..n {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let r = *seed >> 11;
        let pages = 4 * GIB / 4096;
        let len = 1 + r % 64;
        let at = (r >> 8) % (pages - len);
        let state = [PageState::Shared, PageState::Private, PageState::Discarded][((r >> 40) % 3) as usize];
        vm.convert("ram", at * 4096, len * 4096, state).unwrap();
    }
}

// Receives on its own thread; returns (digest, vm id).
fn destination(stream: UnixStream) -> std::thread::JoinHandle<cvmstate::Result<(u64, String)>> {
    std::thread::spawn(move || {
        let mut dst = Destination::new_fd(&stream, None, Duration::from_secs(30))?;
        let vm = dst.receive()?;
        let layout = vm.blocks()?;
        if layout.len() != 1 || layout[0].size != 4 * GIB {
            dst.ack(false, Some("layout differs"))?;
        } else {
            dst.ack(true, None)?;
        }
        Ok((vm.digest()?, dst.vm_id()))
    })
}

#[test]
fn a_vmms_loop_migrates_while_the_guest_converts() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", 4 * GIB, 4096, PageState::Discarded).unwrap();
    let mut seed = 1u64;
    guest_converts(&vm, &mut seed, 50000);
    let (a, b) = UnixStream::pair().unwrap();
    let dest = destination(b);
    let mut src = Source::new_fd(&vm, "guest-1", &a, None).unwrap();
    src.set_timeout(Duration::from_secs(30)).unwrap();
    let budget = 8 << 10;
    let mut pending = src.pending().unwrap();
    let mut rounds = 0;
    let mut steps = 0;
    while pending > 2048 || rounds == 0 {
        let step = src.step(budget).unwrap();
        steps += 1;
        assert!(step.sent > 0);
        if steps > 1 {
            assert!(step.sent <= budget + 512, "step {} sent {}", steps, step.sent);
        }
        rounds += step.round_done as u32;
        guest_converts(&vm, &mut seed, 20);
        pending = src.pending().unwrap();
    }
    assert!(steps > 2);
    assert!(!src.end_sent());
    src.finish().unwrap();
    assert!(src.end_sent());
    let (digest, id) = dest.join().unwrap().unwrap();
    assert_eq!(digest, vm.digest().unwrap());
    assert_eq!(id, "guest-1");
    assert!(src.rounds() >= 2);
    assert_eq!(src.step(1).unwrap_err().errno(), 22, "after finish");
}

#[test]
fn a_rust_channel_carries_the_stream() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", 4 * GIB, 4096, PageState::Private).unwrap();
    let mut seed = 2u64;
    guest_converts(&vm, &mut seed, 1000);
    let (a, b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || {
        let mut dst = Destination::new_io(b, None, Duration::from_secs(30)).unwrap();
        let got = dst.receive().unwrap();
        dst.ack(true, None).unwrap();
        got.digest().unwrap()
    });
    let mut src = Source::new_io(&vm, "guest-2", a, None).unwrap();
    src.begin().unwrap();
    guest_converts(&vm, &mut seed, 100);
    src.round().unwrap();
    guest_converts(&vm, &mut seed, 10);
    src.finish().unwrap();
    assert_eq!(dest.join().unwrap(), vm.digest().unwrap());
}

#[test]
fn a_refusing_destination_is_an_error_on_both_sides() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", GIB, 4096, PageState::Private).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || {
        let mut dst = Destination::new_fd(&b, None, Duration::from_secs(30)).unwrap();
        let _got = dst.receive().unwrap();
        dst.ack(false, Some("no room for this guest")).unwrap();
    });
    let mut src = Source::new_fd(&vm, "guest-3", &a, None).unwrap();
    src.begin().unwrap();
    let e = src.finish().unwrap_err();
    assert_eq!(e.errno(), 13, "{}", e); // EACCES
    assert!(e.message().contains("no room for this guest"), "{}", e);
    assert!(src.end_sent()); // refused after the whole stream: resume the guest
    dest.join().unwrap();
}

#[test]
fn cancel_from_another_thread_ends_a_blocked_call() {
    let vm = Vm::new().unwrap();
    vm.add_block("ram", GIB, 4096, PageState::Private).unwrap();
    // The peer never sends its challenge: the first step blocks reading it.
    let (a, _b) = UnixStream::pair().unwrap();
    let mut src = Source::new_fd(&vm, "guest-4", &a, None).unwrap();
    let canceller = src.canceller();
    // A Canceller borrows what its migration borrows: scoped threads.
    std::thread::scope(|scope| {
        let t = scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let at = Instant::now();
            canceller.cancel();
            at
        });
        let e = src.step(1 << 20).unwrap_err();
        let returned = Instant::now();
        let cancelled = t.join().unwrap();
        assert_eq!(e.errno(), ECANCELED, "{}", e);
        assert!(returned.duration_since(cancelled) < Duration::from_secs(5));
    });
    assert_eq!(src.pending().unwrap_err().errno(), ECANCELED);
    // A destination waiting for a source that never comes.
    let (c, _d) = UnixStream::pair().unwrap();
    let mut dst = Destination::new_fd(&c, None, Duration::from_secs(1000)).unwrap();
    let canceller = dst.canceller();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            canceller.cancel();
        });
        assert_eq!(dst.receive().unwrap_err().errno(), ECANCELED);
    });
}
