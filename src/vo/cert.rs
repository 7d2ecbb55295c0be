//! XOS-certs: X.509 certificates issued by a VO's CA that carry the VO attributes
//! in private extensions, their verification, and a small CA for sites and tests.
//!
//! Extensions (all non-critical, under the self-allocated UUID arc [`ARC`], see
//! ITU-T X.667; the value of each is the DER encoding shown):
//!
//! | OID | attribute | value |
//! |---|---|---|
//! | `ARC.1` | global user id | UTF8String |
//! | `ARC.2` | VO name | UTF8String |
//! | `ARC.3` | primary VO group | UTF8String |
//! | `ARC.4` | secondary VO groups | SEQUENCE OF UTF8String |
//! | `ARC.5` | role in the VO | UTF8String |
//!
//! Verification is OpenSSL's (`X509_verify_cert`) against a hashed CA directory as
//! `c_rehash` makes it (`HASH.0` certificates, `HASH.r0` CRLs), with CRL checking of
//! the user certificate, validity dates, and the TLS-client purpose (key usage
//! digitalSignature, extended key usage clientAuth). See verify(1ssl), x509v3_config(5ssl).

use std::fs;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{
    X509Builder, X509Crl, X509CrlBuilder, X509Extension, X509Name, X509NameBuilder, X509PurposeId,
    X509Ref, X509RevokedBuilder, X509StoreContext, X509,
};

use crate::fsutil::{self, PathError};

/// The private OID arc of the VO attributes: 2.25 followed by a random UUID
/// (5f5c9084-fbec-45aa-8cbd-867958616462) as an integer, so it needs no registration.
pub const ARC: &str = "2.25.126757282113618962739081972203842004066";

/// The OIDs, in the order of the table above.
pub fn oid(attr: u32) -> String {
    format!("{ARC}.{attr}")
}

const OID_GLOBAL_ID: u32 = 1;
const OID_VO: u32 = 2;
const OID_GROUP: u32 = 3;
const OID_GROUPS: u32 = 4;
const OID_ROLE: u32 = 5;

/// Initialises OpenSSL. Call it on the main thread before any other thread starts:
/// in a static executable OpenSSL's first initialisation goes through glibc's
/// static dlopen/dladdr emulation, which crashes when first run on a second thread
/// (seen as SIGSEGV in xos-amsd's connection threads).
pub fn init() {
    openssl::init();
    let _ = Asn1Object::from_str(&oid(OID_GLOBAL_ID));
}

/// Serialises verification: concurrent certificate parsing in the static xos-amsd
/// crashed (SIGSEGV/heap corruption inside OpenSSL on connection threads; root
/// cause not found yet), and mapping is not a hot path.
static OPENSSL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The VO attributes of a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VoAttributes {
    pub global_id: String,
    pub vo: String,
    pub group: String,
    pub groups: Vec<String>,
    pub role: String,
}

/// A verified XOS-cert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCert {
    /// The subject in OpenSSL's one-line form (`/O=VO/CN=alice`).
    pub subject: String,
    pub attrs: VoAttributes,
}

/// Why a certificate was not accepted, or a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("{what}: not a PEM certificate: {source}")]
    Parse {
        what: String,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("certificate {subject}: {reason}")]
    Rejected { subject: String, reason: String },
    #[error("certificate {subject}: missing VO attribute {attr} ({oid})")]
    MissingAttribute {
        subject: String,
        attr: &'static str,
        oid: String,
    },
    #[error("certificate {subject}: VO attribute {oid} is not valid DER of its type")]
    BadAttribute { subject: String, oid: String },
    #[error("CA {}: {what}: {source}", dir.display())]
    Ca {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("invalid {what} '{value}': {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

// --- minimal DER for the two value types -------------------------------------

fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = (n as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// DER UTF8String.
pub fn der_utf8(s: &str) -> Vec<u8> {
    der_tlv(0x0c, s.as_bytes())
}

/// DER SEQUENCE OF UTF8String.
pub fn der_utf8_seq(items: &[String]) -> Vec<u8> {
    let body: Vec<u8> = items.iter().flat_map(|s| der_utf8(s)).collect();
    der_tlv(0x30, &body)
}

/// Splits one TLV off `data`: (tag, body, rest).
fn der_take(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&l0, mut rest) = rest.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let v = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        rest = &rest[n..];
        v
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Parses a whole DER UTF8String.
pub fn parse_utf8(data: &[u8]) -> Option<String> {
    match der_take(data)? {
        (0x0c, body, []) => String::from_utf8(body.to_vec()).ok(),
        _ => None,
    }
}

/// Parses a whole DER SEQUENCE OF UTF8String.
pub fn parse_utf8_seq(data: &[u8]) -> Option<Vec<String>> {
    let (0x30, mut body, []) = der_take(data)? else {
        return None;
    };
    let mut out = Vec::new();
    while !body.is_empty() {
        let (0x0c, s, rest) = der_take(body)? else {
            return None;
        };
        out.push(String::from_utf8(s.to_vec()).ok()?);
        body = rest;
    }
    Some(out)
}

/// The extensions that carry `attrs`; empty fields are left out (so tests can make
/// certificates that lack an attribute).
pub fn extensions(attrs: &VoAttributes) -> Result<Vec<X509Extension>, openssl::error::ErrorStack> {
    let mut out = Vec::new();
    let mut add = |n: u32, der: Vec<u8>| -> Result<(), openssl::error::ErrorStack> {
        let obj = Asn1Object::from_str(&oid(n))?;
        let val = Asn1OctetString::new_from_bytes(&der)?;
        out.push(X509Extension::new_from_der(&obj, false, &val)?);
        Ok(())
    };
    for (n, v) in [
        (OID_GLOBAL_ID, &attrs.global_id),
        (OID_VO, &attrs.vo),
        (OID_GROUP, &attrs.group),
        (OID_ROLE, &attrs.role),
    ] {
        if !v.is_empty() {
            add(n, der_utf8(v))?;
        }
    }
    if !attrs.groups.is_empty() {
        add(OID_GROUPS, der_utf8_seq(&attrs.groups))?;
    }
    Ok(out)
}

/// One-line subject of a certificate (`/O=testvo/CN=alice`).
pub fn subject_line(cert: &X509Ref) -> String {
    let mut s = String::new();
    for e in cert.subject_name().entries() {
        let key = e.object().nid().short_name().unwrap_or("?");
        let val = e.data().to_string().unwrap_or_default();
        s.push_str(&format!("/{key}={val}"));
    }
    s
}

/// Reads the VO attributes of `cert`. The global id, the VO and the primary group
/// are required; the role defaults to `member`.
pub fn attributes(cert: &X509Ref) -> Result<VoAttributes, CertError> {
    let subject = subject_line(cert);
    let get = |n: u32| -> Result<Option<Vec<u8>>, CertError> {
        let obj = Asn1Object::from_str(&oid(n)).map_err(|e| CertError::Parse {
            what: oid(n),
            source: e,
        })?;
        Ok(super::sys::extension_data(cert, &obj))
    };
    let text = |n: u32, attr: &'static str, required: bool| -> Result<String, CertError> {
        match get(n)? {
            Some(d) => parse_utf8(&d).ok_or_else(|| CertError::BadAttribute {
                subject: subject.clone(),
                oid: oid(n),
            }),
            None if required => Err(CertError::MissingAttribute {
                subject: subject.clone(),
                attr,
                oid: oid(n),
            }),
            None => Ok(String::new()),
        }
    };
    let global_id = text(OID_GLOBAL_ID, "global user id", true)?;
    let vo = text(OID_VO, "VO name", true)?;
    let group = text(OID_GROUP, "primary group", true)?;
    let mut role = text(OID_ROLE, "role", false)?;
    if role.is_empty() {
        role = "member".into();
    }
    let groups = match get(OID_GROUPS)? {
        Some(d) => parse_utf8_seq(&d).ok_or_else(|| CertError::BadAttribute {
            subject: subject.clone(),
            oid: oid(OID_GROUPS),
        })?,
        None => Vec::new(),
    };
    for (what, v) in [
        ("global user id", &global_id),
        ("VO name", &vo),
        ("group", &group),
    ] {
        check_name(what, v)?;
    }
    for g in &groups {
        check_name("group", g)?;
    }
    Ok(VoAttributes {
        global_id,
        vo,
        group,
        groups,
        role,
    })
}

/// VO names, groups and ids end up in passwd/group entries and file names: no
/// separators, no control characters, bounded length.
fn check_name(what: &'static str, v: &str) -> Result<(), CertError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@+=".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CertError::Invalid {
            what,
            value: v.to_string(),
            reason: "use 1 to 128 of A-Z a-z 0-9 - _ . @ + =",
        })
    }
}

/// Parses a PEM certificate; `what` names it in errors (a file or "request").
pub fn parse_pem(pem: &[u8], what: &str) -> Result<X509, CertError> {
    X509::from_pem(pem).map_err(|e| CertError::Parse {
        what: what.to_string(),
        source: e,
    })
}

/// Verifies an XOS-cert against the hashed CA directory `ca_dir` and reads its
/// VO attributes. The store is built per call, so new CRLs count at once.
pub fn verify(ca_dir: &Path, pem: &[u8], what: &str) -> Result<VerifiedCert, CertError> {
    let _one_at_a_time = OPENSSL.lock().unwrap_or_else(|e| e.into_inner());
    let cert = parse_pem(pem, what)?;
    let subject = subject_line(&cert);
    let ca_err = |what: &'static str| {
        let dir = ca_dir.to_path_buf();
        move |source| CertError::Ca { dir, what, source }
    };
    let dir = ca_dir.to_str().ok_or_else(|| CertError::Invalid {
        what: "CA directory",
        value: ca_dir.display().to_string(),
        reason: "not UTF-8",
    })?;
    let mut b = X509StoreBuilder::new().map_err(ca_err("create store"))?;
    b.add_lookup(X509Lookup::hash_dir())
        .and_then(|l| l.add_dir(dir, openssl::ssl::SslFiletype::PEM))
        .map_err(ca_err("add directory"))?;
    b.set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::X509_STRICT)
        .map_err(ca_err("set flags"))?;
    b.set_purpose(X509PurposeId::SSL_CLIENT)
        .map_err(ca_err("set purpose"))?;
    let store = b.build();
    let chain = Stack::new().map_err(ca_err("create chain"))?;
    let mut ctx = X509StoreContext::new().map_err(ca_err("create context"))?;
    let result = ctx
        .init(&store, &cert, &chain, |c| {
            let ok = c.verify_cert()?;
            Ok((ok, c.error()))
        })
        .map_err(ca_err("verify"))?;
    if !result.0 {
        return Err(CertError::Rejected {
            subject,
            reason: result.1.error_string().to_string(),
        });
    }
    Ok(VerifiedCert {
        attrs: attributes(&cert)?,
        subject,
    })
}

// --- a small CA ---------------------------------------------------------------

/// A VO certificate authority kept in one directory: `ca.pem`, `ca.key` (0600),
/// `revoked` (one hexadecimal serial per line), and the hashed names OpenSSL looks
/// up: `HASH.0` (a link to ca.pem) and `HASH.r0` (the current CRL).
pub struct Ca {
    dir: PathBuf,
    cert: X509,
    key: PKey<Private>,
}

/// What to put into a user certificate.
#[derive(Debug, Clone, Default)]
pub struct IssueSpec {
    pub common_name: String,
    pub attrs: VoAttributes,
    /// Start of validity relative to now, in seconds (negative: in the past).
    pub not_before: i64,
    /// End of validity relative to now, in seconds.
    pub not_after: i64,
}

fn new_key() -> Result<PKey<Private>, openssl::error::ErrorStack> {
    // P-256 keeps certificate creation fast in tests (an RSA key takes ~100 ms).
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn name(cn: &str, o: &str) -> Result<X509Name, openssl::error::ErrorStack> {
    let mut n = X509NameBuilder::new()?;
    if !o.is_empty() {
        n.append_entry_by_nid(Nid::ORGANIZATIONNAME, o)?;
    }
    n.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(n.build())
}

fn time_from_now(secs: i64) -> Result<Asn1Time, openssl::error::ErrorStack> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Asn1Time::from_unix((now + secs) as libc::time_t)
}

fn random_serial() -> Result<Asn1Integer, openssl::error::ErrorStack> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    bn.to_asn1_integer()
}

impl Ca {
    /// Creates a new CA named `vo` in `dir` (created if needed), valid for `days`.
    pub fn create(dir: &Path, vo: &str, days: u32) -> Result<Ca, CertError> {
        fsutil::create_dir_all(dir, 0o755)?;
        let e = |what| {
            let dir = dir.to_path_buf();
            move |source| CertError::Ca { dir, what, source }
        };
        let key = new_key().map_err(e("generate key"))?;
        let cert = (|| -> Result<X509, openssl::error::ErrorStack> {
            let mut b = X509Builder::new()?;
            b.set_version(2)?;
            b.set_serial_number(&*random_serial()?)?;
            let n = name(&format!("{vo} VO CA"), vo)?;
            b.set_subject_name(&n)?;
            b.set_issuer_name(&n)?;
            b.set_pubkey(&key)?;
            b.set_not_before(&*time_from_now(-3600)?)?;
            b.set_not_after(&*Asn1Time::days_from_now(days)?)?;
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()?,
            )?;
            let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
            b.append_extension(ski)?;
            b.sign(&key, MessageDigest::sha256())?;
            Ok(b.build())
        })()
        .map_err(e("create certificate"))?;
        let pem = cert.to_pem().map_err(e("encode certificate"))?;
        let key_pem = key.private_key_to_pem_pkcs8().map_err(e("encode key"))?;
        fsutil::write_atomic(&dir.join("ca.key"), &key_pem, 0o600)?;
        fsutil::write_atomic(&dir.join("ca.pem"), &pem, 0o644)?;
        fsutil::write_atomic(&dir.join("revoked"), b"", 0o644)?;
        let ca = Ca {
            dir: dir.to_path_buf(),
            cert,
            key,
        };
        ca.link_hashed()?;
        ca.write_crl()?;
        Ok(ca)
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca, CertError> {
        let cert = parse_pem(
            &fsutil::read(&dir.join("ca.pem"))?,
            &dir.join("ca.pem").display().to_string(),
        )?;
        let key =
            PKey::private_key_from_pem(&fsutil::read(&dir.join("ca.key"))?).map_err(|source| {
                CertError::Ca {
                    dir: dir.to_path_buf(),
                    what: "read ca.key",
                    source,
                }
            })?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert,
            key,
        })
    }

    pub fn cert(&self) -> &X509Ref {
        &self.cert
    }

    fn hash(&self) -> String {
        format!("{:08x}", self.cert.subject_name_hash())
    }

    /// `HASH.0 -> ca.pem`, as c_rehash makes it.
    fn link_hashed(&self) -> Result<(), CertError> {
        let link = self.dir.join(format!("{}.0", self.hash()));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("ca.pem", &link)
            .map_err(|e| PathError::new("create link", &link, e))?;
        Ok(())
    }

    fn err(&self, what: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> CertError {
        let dir = self.dir.clone();
        move |source| CertError::Ca { dir, what, source }
    }

    /// Rewrites `HASH.r0`, the CRL of every serial in `revoked`.
    fn write_crl(&self) -> Result<(), CertError> {
        let revoked = fsutil::read_string(&self.dir.join("revoked"))?;
        let crl = (|| -> Result<X509Crl, openssl::error::ErrorStack> {
            let mut b = X509CrlBuilder::new()?;
            b.set_issuer_name(self.cert.subject_name())?;
            b.set_last_update(&*time_from_now(-3600)?)?;
            b.set_next_update(&*Asn1Time::days_from_now(30)?)?;
            for serial in revoked.split_whitespace() {
                let mut r = X509RevokedBuilder::new()?;
                r.set_serial_number(&*BigNum::from_hex_str(serial)?.to_asn1_integer()?)?;
                r.set_revocation_date(&*time_from_now(0)?)?;
                b.add_revoked(r.build())?;
            }
            // The AKI names the CA key; only the issuer matters for its value.
            let tmp = X509Builder::new()?;
            let aki = AuthorityKeyIdentifier::new()
                .keyid(true)
                .build(&tmp.x509v3_context(Some(&self.cert), None))?;
            b.append_extension(aki)?;
            // CRL numbers must grow; the time of issue does.
            let number = BigNum::from_u32(super::lease::now() as u32)?;
            b.append_extension(openssl::x509::CrlNumber::new(number)?.build()?)?;
            b.sort()?;
            b.sign(&self.key, MessageDigest::sha256())?;
            b.build()
        })()
        .map_err(self.err("create CRL"))?;
        let pem = crl.to_pem().map_err(self.err("encode CRL"))?;
        fsutil::write_atomic(&self.dir.join(format!("{}.r0", self.hash())), &pem, 0o644)?;
        Ok(())
    }

    /// Issues a user XOS-cert; returns the certificate and its private key.
    pub fn issue(&self, spec: &IssueSpec) -> Result<(X509, PKey<Private>), CertError> {
        let key = new_key().map_err(self.err("generate key"))?;
        let vo = self
            .cert
            .subject_name()
            .entries_by_nid(Nid::ORGANIZATIONNAME)
            .next()
            .map(|e| e.data().to_string().unwrap_or_default())
            .unwrap_or_default();
        let cert = (|| -> Result<X509, openssl::error::ErrorStack> {
            let mut b = X509Builder::new()?;
            b.set_version(2)?;
            b.set_serial_number(&*random_serial()?)?;
            b.set_subject_name(&*name(&spec.common_name, &vo)?)?;
            b.set_issuer_name(self.cert.subject_name())?;
            b.set_pubkey(&key)?;
            b.set_not_before(&*time_from_now(spec.not_before)?)?;
            b.set_not_after(&*time_from_now(spec.not_after)?)?;
            b.append_extension(BasicConstraints::new().critical().build()?)?;
            b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
            b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
            let ctx = b.x509v3_context(Some(&self.cert), None);
            let ski = SubjectKeyIdentifier::new().build(&ctx)?;
            let aki = AuthorityKeyIdentifier::new().keyid(true).build(&ctx)?;
            b.append_extension(ski)?;
            b.append_extension(aki)?;
            for ext in extensions(&spec.attrs)? {
                b.append_extension(ext)?;
            }
            b.sign(&self.key, MessageDigest::sha256())?;
            Ok(b.build())
        })()
        .map_err(self.err("issue certificate"))?;
        Ok((cert, key))
    }

    /// Adds `cert` to the CRL.
    pub fn revoke(&self, cert: &X509Ref) -> Result<(), CertError> {
        let serial = cert
            .serial_number()
            .to_bn()
            .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
            .map_err(self.err("read serial"))?;
        let path = self.dir.join("revoked");
        let mut list = fsutil::read_string(&path)?;
        if !list.split_whitespace().any(|s| s == serial) {
            list.push_str(&serial);
            list.push('\n');
            fsutil::write_atomic(&path, list.as_bytes(), 0o644)?;
        }
        self.write_crl()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_round_trip() {
        assert_eq!(der_utf8("ab"), vec![0x0c, 2, b'a', b'b']);
        assert_eq!(parse_utf8(&der_utf8("grp")).as_deref(), Some("grp"));
        let long = "x".repeat(300);
        assert_eq!(parse_utf8(&der_utf8(&long)), Some(long.clone()));
        let seq = vec!["a".to_string(), long];
        assert_eq!(parse_utf8_seq(&der_utf8_seq(&seq)), Some(seq));
        assert_eq!(parse_utf8_seq(&der_utf8_seq(&[])), Some(vec![]));
        assert!(parse_utf8(&[0x0c, 5, b'a']).is_none(), "truncated");
        assert!(parse_utf8(&[0x13, 1, b'a']).is_none(), "wrong type");
        assert!(parse_utf8(&[0x0c, 1, b'a', 0]).is_none(), "trailing data");
    }

    fn attrs() -> VoAttributes {
        VoAttributes {
            global_id: "62a57c32-9c7f".into(),
            vo: "testbed0".into(),
            group: "physics".into(),
            groups: vec!["cms".into(), "atlas".into()],
            role: "admin".into(),
        }
    }

    #[test]
    fn issue_and_verify() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::create(d.path(), "testbed0", 30).unwrap();
        let spec = IssueSpec {
            common_name: "alice".into(),
            attrs: attrs(),
            not_before: -60,
            not_after: 3600,
        };
        let (cert, _) = ca.issue(&spec).unwrap();
        let pem = cert.to_pem().unwrap();
        let v = verify(d.path(), &pem, "alice.pem").unwrap();
        assert_eq!(v.attrs, attrs());
        assert_eq!(v.subject, "/O=testbed0/CN=alice");
        ca.revoke(&cert).unwrap();
        let e = verify(d.path(), &pem, "alice.pem").unwrap_err().to_string();
        assert!(e.contains("revoked"), "{e}");
        let mut missing = spec.clone();
        missing.attrs.vo.clear();
        let (c2, _) = ca.issue(&missing).unwrap();
        let e = verify(d.path(), &c2.to_pem().unwrap(), "x").unwrap_err();
        assert!(
            matches!(
                e,
                CertError::MissingAttribute {
                    attr: "VO name",
                    ..
                }
            ),
            "{e}"
        );
    }
}
