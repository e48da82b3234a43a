// Finds libcvmstate: under CVMSTATE_PREFIX (a `cmake --install` prefix) if
// set, else through pkg-config (PKG_CONFIG_PATH), and links it with an
// rpath so tests and examples run without LD_LIBRARY_PATH.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn has_library(dir: &Path) -> bool {
    dir.join("libcvmstate.so").exists()
}

// lib/, lib64/ or a multiarch lib/<triplet>/ under the prefix.
fn find_in_prefix(prefix: &Path) -> Option<PathBuf> {
    for sub in ["lib", "lib64"] {
        let dir = prefix.join(sub);
        if has_library(&dir) {
            return Some(dir);
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if has_library(&e.path()) {
                    return Some(e.path());
                }
            }
        }
    }
    None
}

fn from_pkg_config() -> Option<PathBuf> {
    let out = Command::new("pkg-config").args(["--libs-only-L", "cvmstate"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("-L"))
        .map(PathBuf::from)
        .find(|d| has_library(d))
}

fn main() {
    println!("cargo:rerun-if-env-changed=CVMSTATE_PREFIX");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let libdir = match env::var_os("CVMSTATE_PREFIX") {
        Some(prefix) => find_in_prefix(Path::new(&prefix)).unwrap_or_else(|| {
            panic!("no libcvmstate.so under CVMSTATE_PREFIX={}", Path::new(&prefix).display())
        }),
        None => from_pkg_config().unwrap_or_else(|| {
            panic!(
                "libcvmstate not found: set CVMSTATE_PREFIX to a `cmake --install` prefix, \
                 or PKG_CONFIG_PATH to the directory holding cvmstate.pc"
            )
        }),
    };
    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=dylib=cvmstate");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libdir.display());
}
