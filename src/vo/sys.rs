//! The OpenSSL calls the `openssl` crate has no safe wrapper for: reading the raw
//! value of one extension of a certificate (X509_get_ext_by_OBJ(3ssl)).

use foreign_types::ForeignTypeRef;
use openssl::asn1::Asn1ObjectRef;
use openssl::x509::X509Ref;

/// The DER value (the contents of the extnValue OCTET STRING) of the first
/// extension of `cert` with OID `obj`, if there is one.
pub fn extension_data(cert: &X509Ref, obj: &Asn1ObjectRef) -> Option<Vec<u8>> {
    // SAFETY: both pointers come from live references; the extension and its data
    // are owned by `cert`, which outlives this function, and are only read here.
    unsafe {
        let idx = openssl_sys::X509_get_ext_by_OBJ(cert.as_ptr(), obj.as_ptr(), -1);
        if idx < 0 {
            return None;
        }
        let ext = openssl_sys::X509_get_ext(cert.as_ptr(), idx);
        if ext.is_null() {
            return None;
        }
        let data = openssl_sys::X509_EXTENSION_get_data(ext);
        if data.is_null() {
            return None;
        }
        let s = data as *const openssl_sys::ASN1_STRING;
        let len = openssl_sys::ASN1_STRING_length(s);
        let ptr = openssl_sys::ASN1_STRING_get0_data(s);
        if ptr.is_null() || len < 0 {
            return None;
        }
        Some(std::slice::from_raw_parts(ptr, len as usize).to_vec())
    }
}

/// The uid and pid of the peer of a connected Unix socket (SO_PEERCRED, socket(7)).
pub fn peer_cred(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<(u32, i32)> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.uid, cred.pid))
}
