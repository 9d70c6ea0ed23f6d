use super::*;

const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const NAMES: &[&str] = &[
    "SSL_read",
    "SSL_write",
    "SSL_read_ex",
    "SSL_write_ex",
    "no_such",
];

/// `readelf`'s view of where `name` lies in the file: its value and section, translated with
/// the section's address and offset.
fn readelf_offset(path: &str, name: &str) -> u64 {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("readelf")
            .args(args)
            .arg(path)
            .output()
            .expect("readelf runs");
        String::from_utf8(out.stdout).unwrap()
    };
    let symbols = run(&["-Ws", "--dyn-syms"]);
    let (value, ndx) = symbols
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 8 && f[7].split('@').next() == Some(name) && f[3] == "FUNC")
        .map(|f| {
            (
                u64::from_str_radix(f[1], 16).unwrap(),
                f[6].parse::<usize>().unwrap(),
            )
        })
        .expect("symbol listed");
    let sections = run(&["-SW"]);
    let fields: Vec<&str> = sections
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("[{ndx:>2}]")))
        .expect("section listed")
        .split(']')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    // Name Type Address Off Size ...
    let addr = u64::from_str_radix(fields[2], 16).unwrap();
    let off = u64::from_str_radix(fields[3], 16).unwrap();
    value - addr + off
}

#[test]
fn finds_the_tls_functions_where_readelf_does() {
    let found = function_offsets(Path::new(LIBSSL), NAMES).unwrap();
    for (name, offset) in NAMES[..4].iter().zip(&found) {
        assert_eq!(*offset, Some(readelf_offset(LIBSSL, name)), "{name}");
    }
    assert_eq!(found[4], None);
}

#[test]
fn files_that_are_not_64_bit_elf_are_refused() {
    for bytes in [
        &b""[..],
        b"#!/bin/sh\n",
        b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0",
    ] {
        assert!(matches!(offsets_in(bytes, NAMES), Err(ElfError::NotElf(_))));
    }
}

/// A header that claims a string table larger than the bound is refused before anything of
/// that size is allocated.
#[test]
fn a_huge_string_table_is_refused_without_reading_it() {
    let mut bytes = std::fs::read(LIBSSL).unwrap();
    let shoff = u64_at(&bytes, 0x28) as usize;
    let shnum = usize::from(u16_at(&bytes, 0x3c));
    let dynsym = (0..shnum)
        .map(|i| shoff + i * SHDR_SIZE)
        .find(|h| u32_at(&bytes, h + 4) == SHT_DYNSYM)
        .unwrap();
    let strtab = shoff + u32_at(&bytes, dynsym + 0x28) as usize * SHDR_SIZE;
    bytes[strtab + 0x20..strtab + 0x28].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        offsets_in(&bytes[..], NAMES),
        Err(ElfError::TooLarge(_))
    ));
}

/// Every truncation and many corruptions of a real library: an answer or an error, never a
/// panic, and a found offset always lies inside the file.
#[test]
fn truncated_and_corrupted_files_never_panic() {
    let original = std::fs::read(LIBSSL).unwrap();
    let cuts = (0..4096).chain((4096..original.len()).step_by(997));
    for cut in cuts {
        let _ = offsets_in(&original[..cut], NAMES);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let shoff = u64_at(&original, 0x28) as usize;
    for _ in 0..3000 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 8 {
            // The header, the section table, or anywhere.
            let at = match next() % 3 {
                0 => next() as usize % 64,
                1 => shoff + next() as usize % (original.len() - shoff),
                _ => next() as usize % original.len(),
            };
            bytes[at] = next() as u8;
        }
        if let Ok(found) = offsets_in(&bytes[..], NAMES) {
            assert!(found.iter().flatten().all(|o| *o < bytes.len() as u64));
        }
    }
}
