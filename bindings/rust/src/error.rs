//! Errors: the C API's negative errno and its message.
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_int;

/// A failed call: `errno` is positive (EINVAL, ENOENT, EEXIST, EBADMSG,
/// EIO, ETIMEDOUT, EACCES, ECANCELED, EBADF, ENOMEM, or a refusing
/// listener's own code), `message` the library's one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) const EINVAL: i32 = 22;
pub(crate) const EIO: i32 = 5;
pub(crate) const ENOMEM: i32 = 12;
pub(crate) const EBUSY: i32 = 16;
pub(crate) const EPERM: i32 = 1;

impl Error {
    pub fn new(errno: i32, message: impl Into<String>) -> Error {
        Error { errno: errno.abs(), message: message.into() }
    }
    /// The errno value, positive.
    pub fn errno(&self) -> i32 {
        self.errno
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The calling thread's last error, for the return code rc < 0.
    pub(crate) fn last(rc: c_int) -> Error {
        // SAFETY: cvmstate_last_error returns a valid C string for this thread.
        let msg = unsafe { CStr::from_ptr(crate::ffi::cvmstate_last_error()) };
        Error::new(rc, msg.to_string_lossy().into_owned())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for Error {}

/// Ok(rc) for rc >= 0, else the thread's last error.
pub(crate) fn check(rc: c_int) -> Result<c_int> {
    if rc < 0 {
        Err(Error::last(rc))
    } else {
        Ok(rc)
    }
}

/// A Rust string as a C one; a NUL inside is EINVAL (C would cut it there).
pub(crate) fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(EINVAL, format!("{} contains a NUL byte", what)))
}
