//! The shipped artefacts: a static executable and man pages that render.

mod common;

use std::path::Path;
use std::process::Command;

/// (has PT_INTERP, DT_NEEDED entries) of an ELF64 little-endian file.
fn elf_links(path: &Path) -> (bool, Vec<u64>) {
    let d = std::fs::read(path).unwrap();
    assert_eq!(&d[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(d[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes(d[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    let phoff = u64_at(0x20) as usize;
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    let mut interp = false;
    let mut needed = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(d[ph..ph + 4].try_into().unwrap());
        match p_type {
            3 => interp = true, // PT_INTERP
            2 => {
                // PT_DYNAMIC: (tag, value) pairs up to DT_NULL.
                let (off, size) = (u64_at(ph + 8) as usize, u64_at(ph + 32) as usize);
                for e in (off..off + size).step_by(16) {
                    match u64_at(e) {
                        0 => break,
                        1 => needed.push(u64_at(e + 8)), // DT_NEEDED
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interp, needed)
}

fn assert_static(path: &Path) {
    let (interp, needed) = elf_links(path);
    assert!(!interp, "{} has a program interpreter", path.display());
    assert!(
        needed.is_empty(),
        "{} needs {} shared libraries",
        path.display(),
        needed.len()
    );
}

#[test]
fn binary_is_static() {
    assert_static(&common::xos());
    // scripts/test.sh builds the release binary and names it here.
    match std::env::var_os("XOS_RELEASE_BIN") {
        Some(p) => assert_static(Path::new(&p)),
        None => eprintln!("XOS_RELEASE_BIN not set: only the test build was checked"),
    }
}

#[test]
fn elf_check_sees_a_dynamic_binary() {
    // The checker itself must be able to fail.
    let (interp, needed) = elf_links(Path::new("/bin/sh"));
    assert!(interp && !needed.is_empty());
}

#[test]
fn man_pages_render() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut n = 0;
    for ent in std::fs::read_dir(&dir).unwrap() {
        let p = ent.unwrap().path();
        let o = Command::new("man")
            .arg("-l")
            .arg(&p)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .expect("man (Debian package man-db) is needed");
        assert!(
            o.status.success(),
            "man -l {}: {}",
            p.display(),
            common::show(&o)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        assert!(
            text.contains(&name) && text.contains("SYNOPSIS"),
            "{}: {text}",
            p.display()
        );
        n += 1;
    }
    assert!(n >= 11, "expected a page per applet, found {n}");
}
