//! A SQLite VFS that writes the frames of one WAL commit with one `pwrite`.
//!
//! SQLite writes each WAL frame as two writes, the 24-byte frame header and then the page, so a
//! group commit of 6–11 pages costs 12–22 `pwrite`s, and since a frame is 4120 bytes every write
//! also straddles page-cache pages: ~28% of the writer thread's time in the 32-task benchmark.
//! This VFS wraps the platform's default one and, for WAL files only, gathers contiguous writes in
//! a buffer that is written out in one `pwrite` as soon as the page of the *commit frame* (the
//! frame whose header carries a non-zero database size) has been appended, i.e. before SQLite
//! publishes the commit in the WAL index and before `COMMIT` returns. Nothing committed is ever
//! held back: an acknowledged commit is in the OS exactly as without this VFS (SIGKILL-safe), and
//! readers never see a commit whose frames are not in the file.
//!
//! Every other file (the database, the shared-memory index) is opened by the default VFS into
//! the same memory with its own methods, untouched. For WAL files, anything that could observe
//! the file — a read, a sync, a size query, a truncate, a file control, a non-contiguous write,
//! close — first writes the buffer out, so the file always looks as if each write had been made
//! at once. The buffer is also written when it reaches [`PENDING_BYTES_MAX`].
//!
//! Only the writer connection uses it (it is the only one that writes the WAL).
#![allow(unsafe_code)] // FFI with SQLite's VFS interface; every `unsafe` block says why it holds

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// Name under which the VFS is registered.
pub(crate) const VFS_NAME: &str = "tally-wal-coalesce";
const VFS_NAME_C: &CStr = c"tally-wal-coalesce";

/// Bytes gathered before they are written out even without a commit frame, and most bytes per
/// write handed to the default VFS (whose `unixWrite` writes at most 128 KiB - 1 per call and
/// reports a shorter write as `SQLITE_FULL`).
pub const PENDING_BYTES_MAX: usize = 64 << 10;
const _: () = assert!(PENDING_BYTES_MAX <= 0x1ffff);
/// Bytes of a WAL frame header; byte 4..8 is the database size after a commit frame, else 0.
const FRAME_HEADER_BYTES: usize = 24;

/// The default VFS, wrapped.
struct Base(*mut ffi::sqlite3_vfs);
// SAFETY: SQLite's VFS objects are immutable after registration and thread-safe to call.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

static REGISTERED: OnceLock<Result<Base, c_int>> = OnceLock::new();

/// Registers the VFS (once per process). Returns the SQLite error code on failure.
pub(crate) fn register() -> Result<(), c_int> {
    let result = REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS or NULL; the copy we register
        // is leaked, so it lives as long as the process, as SQLite requires.
        unsafe {
            let rc = ffi::sqlite3_initialize();
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
            let base = ffi::sqlite3_vfs_find(std::ptr::null());
            if base.is_null() {
                return Err(ffi::SQLITE_ERROR);
            }
            let mut vfs: ffi::sqlite3_vfs = *base;
            vfs.szOsFile = (HEADER_BYTES + (*base).szOsFile as usize) as c_int;
            vfs.pNext = std::ptr::null_mut();
            vfs.zName = VFS_NAME_C.as_ptr();
            vfs.xOpen = Some(open);
            let vfs = Box::into_raw(Box::new(vfs));
            let rc = ffi::sqlite3_vfs_register(vfs, 0);
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
            Ok(Base(base))
        }
    });
    match result {
        Ok(_) => Ok(()),
        Err(rc) => Err(*rc),
    }
}

fn base() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(base)) => base.0,
        _ => unreachable!("files are only opened through a registered VFS"),
    }
}

/// Our part of an open WAL file; the default VFS's file follows at [`HEADER_BYTES`].
#[repr(C)]
struct WalFile {
    /// Points at [`WAL_METHODS`] (must be the first field: SQLite sees a `sqlite3_file`).
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    pending: *mut Pending,
}

/// Size of [`WalFile`] rounded up to 16 so that the inner file is aligned.
const HEADER_BYTES: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

struct Pending {
    /// File offset of `bytes[0]`.
    offset: i64,
    bytes: Vec<u8>,
    /// The last write was the header of a commit frame: write out after its page.
    commit_page_next: bool,
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = base();
    // SAFETY: SQLite passes `file` pointing at `szOsFile` bytes (ours: header + the default
    // VFS's size), aligned for a pointer; the default VFS's `xOpen` gets its own VFS object.
    unsafe {
        let base_open = (*base).xOpen.expect("the default VFS opens files");
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            return base_open(base, name, file, flags, out_flags);
        }
        let wal = file.cast::<WalFile>();
        let inner = file
            .cast::<u8>()
            .add(HEADER_BYTES)
            .cast::<ffi::sqlite3_file>();
        (*wal).base.pMethods = std::ptr::null();
        (*inner).pMethods = std::ptr::null();
        let rc = base_open(base, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            if !(*inner).pMethods.is_null() {
                let close = (*(*inner).pMethods).xClose.expect("files close");
                close(inner);
            }
            return rc;
        }
        (*wal).inner = inner;
        (*wal).pending = Box::into_raw(Box::new(Pending {
            offset: 0,
            bytes: Vec::with_capacity(64 << 10),
            commit_page_next: false,
        }));
        (*wal).base.pMethods = &WAL_METHODS;
        ffi::SQLITE_OK
    }
}

/// The inner file and its methods.
///
/// # Safety
/// `file` is a [`WalFile`] opened by [`open`] and not yet closed.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (
    *mut ffi::sqlite3_file,
    &'a ffi::sqlite3_io_methods,
    &'a mut Pending,
) {
    // SAFETY: per the contract; SQLite calls a file's methods from one thread at a time.
    unsafe {
        let wal = file.cast::<WalFile>();
        let inner = (*wal).inner;
        (inner, &*(*inner).pMethods, &mut *(*wal).pending)
    }
}

/// Writes out the gathered bytes.
///
/// # Safety
/// As [`parts`].
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: per the contract.
    let (inner, methods, pending) = unsafe { parts(file) };
    pending.commit_page_next = false;
    if pending.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let write = methods.xWrite.expect("files write");
    let mut rc = ffi::SQLITE_OK;
    let mut offset = pending.offset;
    for chunk in pending.bytes.chunks(PENDING_BYTES_MAX) {
        let len = c_int::try_from(chunk.len()).expect("bounded by PENDING_BYTES_MAX");
        // SAFETY: `chunk` is a live buffer of `len` bytes.
        rc = unsafe { write(inner, chunk.as_ptr().cast(), len, offset) };
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += i64::from(len);
    }
    pending.bytes.clear();
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls this on a file opened by `open` with `amount` readable bytes.
    unsafe {
        let data = std::slice::from_raw_parts(data.cast::<u8>(), amount as usize);
        let (_, _, pending) = parts(file);
        if !pending.bytes.is_empty() && offset != pending.offset + pending.bytes.len() as i64 {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        let (_, _, pending) = parts(file);
        if pending.bytes.is_empty() {
            pending.offset = offset;
        }
        pending.bytes.extend_from_slice(data);
        if pending.commit_page_next || pending.bytes.len() >= PENDING_BYTES_MAX {
            return flush(file);
        }
        pending.commit_page_next = data.len() == FRAME_HEADER_BYTES && data[4..8] != [0; 4];
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file opened by `open` once; `pending` came from `Box::into_raw`.
    unsafe {
        let rc = flush(file);
        let (inner, methods, _) = parts(file);
        let close = methods.xClose.expect("files close");
        let closed = close(inner);
        let wal = file.cast::<WalFile>();
        drop(Box::from_raw((*wal).pending));
        (*wal).pending = std::ptr::null_mut();
        (*wal).base.pMethods = std::ptr::null();
        if rc != ffi::SQLITE_OK { rc } else { closed }
    }
}

/// Writes out the gathered bytes, then runs `f` on the inner file.
///
/// # Safety
/// As [`parts`].
unsafe fn flushed(
    file: *mut ffi::sqlite3_file,
    f: impl FnOnce(*mut ffi::sqlite3_file, &ffi::sqlite3_io_methods) -> c_int,
) -> c_int {
    // SAFETY: per the contract.
    unsafe {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (inner, methods, _) = parts(file);
        f(inner, methods)
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        flushed(file, |inner, m| {
            m.xRead.expect("files read")(inner, data, amount, offset)
        })
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        flushed(file, |inner, m| {
            m.xTruncate.expect("files truncate")(inner, size)
        })
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe { flushed(file, |inner, m| m.xSync.expect("files sync")(inner, flags)) }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        flushed(file, |inner, m| {
            m.xFileSize.expect("files have a size")(inner, size)
        })
    }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        flushed(file, |inner, m| match m.xFileControl {
            Some(control) => control(inner, op, arg),
            None => ffi::SQLITE_NOTFOUND,
        })
    }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        let (inner, m, _) = parts(file);
        m.xLock.expect("files lock")(inner, level)
    }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        let (inner, m, _) = parts(file);
        m.xUnlock.expect("files unlock")(inner, level)
    }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        let (inner, m, _) = parts(file);
        m.xCheckReservedLock.expect("files lock")(inner, out)
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        let (inner, m, _) = parts(file);
        m.xSectorSize.map_or(4096, |f| f(inner))
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: delegation with SQLite's own arguments.
    unsafe {
        let (inner, m, _) = parts(file);
        m.xDeviceCharacteristics.map_or(0, |f| f(inner))
    }
}
