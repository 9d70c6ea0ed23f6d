//! Where functions lie in an ELF file, read with bounded buffers.
//!
//! The TLS uprobes go on files that any pod can map (`capture::tls`), so the file is hostile:
//! it may be huge, claim huge tables, or be truncated while it is read. It is read with
//! `pread` into buffers whose sizes are checked first (never mapped: a file truncated under a
//! mapping would kill the agent with `SIGBUS`), symbols are walked in fixed-size chunks, and
//! every offset is checked before use. Only 64-bit little-endian files (x86_64, aarch64) are
//! read; symbols in a separate debug file (`.gnu_debuglink`) are not followed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Section headers read at most (64 bytes each).
const MAX_SECTIONS: usize = 16_384;
/// A symbol table's string table read at most. OpenSSL's `.dynstr` is ~40 KiB; node's, which
/// exports everything, ~10 MiB.
pub const MAX_STRINGS: u64 = 32 << 20;
/// Symbol table entries read per `pread`.
const SYMBOLS_PER_READ: usize = 4096;
/// Symbols examined at most per table.
const MAX_SYMBOLS: u64 = 4 << 20;

const SHT_SYMTAB: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const STT_FUNC: u8 = 2;
const SHN_LORESERVE: u16 = 0xff00;
const SYM_SIZE: usize = 24;
const SHDR_SIZE: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not a 64-bit little-endian ELF file, or unreadable: not a library the probes apply to.
    NotElf(String),
    /// A table larger than the bounds above.
    TooLarge(String),
}

impl std::fmt::Display for ElfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElfError::NotElf(m) | ElfError::TooLarge(m) => f.write_str(m),
        }
    }
}

struct Section {
    kind: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
}

/// What an ELF file is read from: a file, or bytes (tests and fuzzing).
pub trait Source {
    fn size(&self) -> u64;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Source for File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// The file offset of each function in `names` (None: not defined there), as uprobes take it.
/// `.dynsym` is searched first, then `.symtab`.
pub fn function_offsets(path: &Path, names: &[&str]) -> Result<Vec<Option<u64>>, ElfError> {
    let file = File::open(path).map_err(|e| ElfError::NotElf(format!("open: {e}")))?;
    offsets_in(&file, names)
}

/// `function_offsets` of the file `file` reads.
pub fn offsets_in<S: Source + ?Sized>(
    file: &S,
    names: &[&str],
) -> Result<Vec<Option<u64>>, ElfError> {
    let file_len = file.size();
    let mut ehdr = [0u8; 64];
    read_exact_at(file, &mut ehdr, 0)?;
    // 64-bit (class 2), little-endian (data 1).
    if &ehdr[0..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(ElfError::NotElf(
            "not a 64-bit little-endian ELF file".into(),
        ));
    }
    let shoff = u64_at(&ehdr, 0x28);
    let shentsize = usize::from(u16_at(&ehdr, 0x3a));
    let shnum = usize::from(u16_at(&ehdr, 0x3c));
    if shnum == 0 {
        return Ok(vec![None; names.len()]);
    }
    if shentsize != SHDR_SIZE || shnum > MAX_SECTIONS {
        return Err(ElfError::NotElf(format!(
            "section headers: {shnum} of {shentsize} bytes"
        )));
    }
    let mut table = vec![0u8; shnum * SHDR_SIZE];
    read_exact_at(file, &mut table, shoff)?;
    let sections: Vec<Section> = table
        .chunks_exact(SHDR_SIZE)
        .map(|h| Section {
            kind: u32_at(h, 4),
            addr: u64_at(h, 0x10),
            offset: u64_at(h, 0x18),
            size: u64_at(h, 0x20),
            link: u32_at(h, 0x28),
        })
        .collect();
    let mut found = vec![None; names.len()];
    for kind in [SHT_DYNSYM, SHT_SYMTAB] {
        for symtab in sections.iter().filter(|s| s.kind == kind) {
            search(file, file_len, &sections, symtab, names, &mut found)?;
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    Ok(found)
}

/// Looks for `names` in one symbol table, filling the gaps of `found`.
fn search<S: Source + ?Sized>(
    file: &S,
    file_len: u64,
    sections: &[Section],
    symtab: &Section,
    names: &[&str],
    found: &mut [Option<u64>],
) -> Result<(), ElfError> {
    let strtab = sections
        .get(symtab.link as usize)
        .ok_or_else(|| ElfError::NotElf("symbol table without strings".into()))?;
    if strtab.size > MAX_STRINGS {
        return Err(ElfError::TooLarge(format!(
            "string table of {} bytes (at most {MAX_STRINGS})",
            strtab.size
        )));
    }
    check_within(strtab, file_len)?;
    check_within(symtab, file_len)?;
    let mut strings = vec![0u8; strtab.size as usize];
    read_exact_at(file, &mut strings, strtab.offset)?;
    let count = symtab.size / SYM_SIZE as u64;
    if count > MAX_SYMBOLS {
        return Err(ElfError::TooLarge(format!(
            "{count} symbols (at most {MAX_SYMBOLS})"
        )));
    }
    let mut chunk = vec![0u8; SYMBOLS_PER_READ * SYM_SIZE];
    let mut index = 0u64;
    while index < count {
        let n = (count - index).min(SYMBOLS_PER_READ as u64) as usize;
        let bytes = &mut chunk[..n * SYM_SIZE];
        read_exact_at(file, bytes, symtab.offset + index * SYM_SIZE as u64)?;
        for sym in bytes.chunks_exact(SYM_SIZE) {
            let (name, info, shndx, value) = (
                u32_at(sym, 0) as usize,
                sym[4],
                u16_at(sym, 6),
                u64_at(sym, 8),
            );
            if info & 0xf != STT_FUNC || shndx == 0 || shndx >= SHN_LORESERVE {
                continue;
            }
            let Some(name) = strings.get(name..) else {
                continue;
            };
            for (want, slot) in names.iter().zip(found.iter_mut()) {
                let matches = slot.is_none()
                    && name.starts_with(want.as_bytes())
                    && name.get(want.len()) == Some(&0);
                if matches {
                    *slot = file_offset(sections.get(usize::from(shndx)), value)
                        .filter(|o| *o < file_len);
                }
            }
        }
        index += n as u64;
    }
    Ok(())
}

/// The file offset of address `value` in `section`, if it lies there.
fn file_offset(section: Option<&Section>, value: u64) -> Option<u64> {
    let s = section?;
    let end = s.addr.checked_add(s.size)?;
    (s.addr..end)
        .contains(&value)
        .then(|| s.offset.checked_add(value - s.addr))
        .flatten()
}

fn check_within(section: &Section, file_len: u64) -> Result<(), ElfError> {
    match section.offset.checked_add(section.size) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(ElfError::NotElf("a table lies outside the file".into())),
    }
}

fn read_exact_at<S: Source + ?Sized>(
    file: &S,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), ElfError> {
    file.read_exact_at(buf, offset)
        .map_err(|e| ElfError::NotElf(format!("read of {} bytes at {offset}: {e}", buf.len())))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests;
