//! xos-cert: make a VO CA and XOS-certs, revoke, show and verify them
//! (the certificate format is described in xos::vo::cert and xos-cert(1)).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use xos::fsutil;
use xos::vo::cert::{self, Ca, IssueSpec, VoAttributes};

use crate::common;

/// Create a VO certificate authority and XOS-certs (X.509 certificates with VO attributes).
///
/// The CA directory is what xos-amsd's CACertPath names: the CA certificate and its
/// CRL under the hashed names OpenSSL looks up (HASH.0, HASH.r0, as c_rehash makes
/// them), plus ca.pem, ca.key (mode 0600) and the list of revoked serials. The VO
/// attributes are X.509 extensions under the OID arc
/// 2.25.126757282113618962739081972203842004066: .1 global user id, .2 VO, .3 primary
/// group, .4 secondary groups (SEQUENCE OF UTF8String), .5 role; the others are UTF8String.
#[derive(Debug, Parser)]
#[command(name = "xos-cert", version = common::version(), after_help = AFTER)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a new CA for a VO in DIR
    Ca {
        /// The CA directory (created)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The VO's name (the O= of the CA and of the certificates it issues)
        #[arg(long)]
        vo: String,
        /// Validity in days
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a user XOS-cert: writes OUT.pem (certificate) and OUT.key (key, 0600)
    Issue {
        /// The CA directory
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Output path without extension
        #[arg(long, value_name = "OUT")]
        out: PathBuf,
        /// Common name of the subject
        #[arg(long)]
        cn: String,
        /// Global user id (left out if not given)
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// VO name attribute (left out if not given)
        #[arg(long)]
        vo: Option<String>,
        /// Primary VO group (left out if not given)
        #[arg(long)]
        group: Option<String>,
        /// Secondary VO groups, comma separated
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Role in the VO
        #[arg(long)]
        role: Option<String>,
        /// Start of validity in days from now (negative: in the past)
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        start: i64,
        /// Validity in days from the start
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke a certificate: add it to the CA's CRL
    Revoke {
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        cert: PathBuf,
    },
    /// Print the subject and VO attributes of a certificate (not verified)
    Show { cert: PathBuf },
    /// Verify a certificate against a CA directory, as xos-amsd does
    Verify {
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        cert: PathBuf,
    },
}

const AFTER: &str = "\
Examples:
  xos-cert ca --dir /etc/xos/nss_pam/ca --vo testbed0
  xos-cert issue --ca /etc/xos/nss_pam/ca --out /tmp/testbed1_usercert --cn alice \\
      --id 62a57c32-9c7f-4da2-a08d-1093f5e6bee8 --vo testbed0 --group users --groups cms,atlas
  xos-cert verify --ca /etc/xos/nss_pam/ca /tmp/testbed1_usercert.pem

Exit status: 0 on success; 1 on error or if verification refuses the certificate.";

pub fn command() -> clap::Command {
    Args::command()
}

pub fn main(args: Vec<OsString>) -> i32 {
    let a: Args = common::parse_args(args);
    match run(a.cmd) {
        Ok(()) => 0,
        Err(e) => common::fail("xos-cert", e),
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Ca { dir, vo, days } => {
            let ca = Ca::create(&dir, &vo, days)?;
            println!("{}", cert::subject_line(ca.cert()));
        }
        Cmd::Issue {
            ca,
            out,
            cn,
            id,
            vo,
            group,
            groups,
            role,
            start,
            days,
        } => {
            let ca = Ca::open(&ca)?;
            let spec = IssueSpec {
                common_name: cn,
                attrs: VoAttributes {
                    global_id: id.unwrap_or_default(),
                    vo: vo.unwrap_or_default(),
                    group: group.unwrap_or_default(),
                    groups,
                    role: role.unwrap_or_default(),
                },
                not_before: start * 86_400,
                not_after: (start + days) * 86_400,
            };
            let (c, key) = ca.issue(&spec)?;
            // Atomic writes sync the parent directory, which must have a name.
            let out = std::path::absolute(&out)?;
            let with = |ext: &str| {
                let mut p = out.clone().into_os_string();
                p.push(ext);
                PathBuf::from(p)
            };
            fsutil::write_atomic(&with(".key"), &key.private_key_to_pem_pkcs8()?, 0o600)?;
            fsutil::write_atomic(&with(".pem"), &c.to_pem()?, 0o644)?;
            println!("{}", with(".pem").display());
        }
        Cmd::Revoke { ca, cert: path } => {
            let ca = Ca::open(&ca)?;
            let c = cert::parse_pem(&fsutil::read(&path)?, &path.display().to_string())?;
            ca.revoke(&c)?;
        }
        Cmd::Show { cert: path } => {
            let c = cert::parse_pem(&fsutil::read(&path)?, &path.display().to_string())?;
            println!("subject: {}", cert::subject_line(&c));
            println!("not before: {}", c.not_before());
            println!("not after: {}", c.not_after());
            match cert::attributes(&c) {
                Ok(a) => print_attrs(&a),
                Err(e) => println!("VO attributes: {e}"),
            }
        }
        Cmd::Verify { ca, cert: path } => {
            let pem = fsutil::read(&path)?;
            let v = cert::verify(&ca, &pem, &path.display().to_string())?;
            println!("OK: {}", v.subject);
            print_attrs(&v.attrs);
        }
    }
    Ok(())
}

fn print_attrs(a: &VoAttributes) {
    println!("global id: {}", a.global_id);
    println!("VO: {}", a.vo);
    println!("group: {}", a.group);
    println!("groups: {}", a.groups.join(","));
    println!("role: {}", a.role);
}
