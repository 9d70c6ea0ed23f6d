//! Member offsets of kernel structs, read from the kernel's BTF (`/sys/kernel/btf/vmlinux`) at
//! start-up, for the few places where a program must read a kernel struct (see
//! `ConnectConfig`). Only what that needs: the type section is walked once, and a member is
//! found through anonymous unions and structs (bounded depth).
//!
//! Format: `Documentation/bpf/btf.rst` in the kernel tree.

use std::collections::HashMap;

use anyhow::{bail, Context};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// Anonymous members nest this deep at most (`sock_common` needs 1).
const MAX_DEPTH: usize = 4;

/// One struct or union member: name (offset into the string section), type id, and offset in
/// bits (`kind_flag` structs keep a bitfield size in the top 8 bits).
#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// The structs and unions of a BTF blob, by type id.
pub struct Btf {
    strings: Vec<u8>,
    /// Type id → (kind, name offset, members) for structs and unions.
    aggregates: HashMap<u32, (u32, u32, Vec<Member>)>,
    /// Type id of each named struct, by name (the first one when names repeat).
    structs: HashMap<String, u32>,
}

impl Btf {
    pub fn from_sys_fs() -> anyhow::Result<Btf> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Btf::parse(&data).with_context(|| format!("parsing {path}"))
    }

    /// Parses a little-endian BTF blob. Lengths are checked against the blob, never trusted.
    pub fn parse(data: &[u8]) -> anyhow::Result<Btf> {
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
        };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
        };
        if u16_at(0) != Some(MAGIC) {
            bail!("not little-endian BTF (bad magic)");
        }
        let header = (|| {
            let hdr_len = u32_at(4)? as usize;
            let field = |i: usize| u32_at(8 + 4 * i).map(|v| v as usize);
            Some((hdr_len, field(0)?, field(1)?, field(2)?, field(3)?))
        })()
        .context("truncated header")?;
        let (hdr_len, type_off, type_len, str_off, str_len) = header;
        let range = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let end = start.checked_add(len)?;
            (end <= data.len()).then_some(start..end)
        };
        let types = range(type_off, type_len).context("type section out of bounds")?;
        let strs = range(str_off, str_len).context("string section out of bounds")?;
        let mut btf = Btf {
            strings: data[strs].to_vec(),
            aggregates: HashMap::new(),
            structs: HashMap::new(),
        };
        let (mut at, end) = (types.start, types.end);
        let mut id = 1u32;
        while at < end {
            let (name, info) = (u32_at(at), u32_at(at + 4));
            let (Some(name), Some(info)) = (name, info) else {
                bail!("type {id} truncated");
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,
                other => bail!("type {id} has unknown kind {other}"),
            };
            if at + extra > end {
                bail!("type {id} runs past the type section");
            }
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let members = (0..vlen)
                    .filter_map(|i| {
                        let m = at + 12 * i;
                        let offset = u32_at(m + 8)?;
                        Some(Member {
                            name: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        })
                    })
                    .collect();
                if kind == KIND_STRUCT && name != 0 {
                    let key = btf.string(name).to_owned();
                    btf.structs.entry(key).or_insert(id);
                }
                btf.aggregates.insert(id, (kind, name, members));
            }
            at += extra;
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in struct `name`, looking inside anonymous members.
    pub fn member_offset(&self, name: &str, member: &str) -> anyhow::Result<u32> {
        let id = *self
            .structs
            .get(name)
            .with_context(|| format!("no struct {name} in the kernel's BTF"))?;
        let bits = self
            .find(id, member, 0)
            .with_context(|| format!("no member {member} in struct {name}"))?;
        if bits % 8 != 0 {
            bail!("{name}.{member} is a bitfield");
        }
        Ok(bits / 8)
    }

    fn find(&self, id: u32, member: &str, depth: usize) -> Option<u32> {
        let (_, _, members) = self.aggregates.get(&id)?;
        for m in members {
            if m.name != 0 {
                if self.string(m.name) == member {
                    return Some(m.bit_offset);
                }
            } else if depth < MAX_DEPTH {
                if let Some(inner) = self.find(m.type_id, member, depth + 1) {
                    return Some(m.bit_offset + inner);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with: 1 `int`; 2 anonymous struct { a: int @0, b: int @32 }; 3 anonymous
    /// union { whole: int, <2> }; 4 struct outer { x: int @0, <3> @64 }.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0a\0b\0whole\0outer\0x\0".to_vec();
        let name = |s: &str, strings: &[u8]| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut word = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // 1: INT, size 4, encoding word.
        word(name("int", &strings));
        word(1 << 24);
        word(4);
        word(32);
        // 2: anonymous STRUCT with 2 members.
        word(0);
        word(4 << 24 | 2);
        word(8);
        for (n, off) in [("a", 0), ("b", 32)] {
            word(name(n, &strings));
            word(1);
            word(off);
        }
        // 3: anonymous UNION with 2 members.
        word(0);
        word(5 << 24 | 2);
        word(8);
        word(name("whole", &strings));
        word(1);
        word(0);
        word(0);
        word(2);
        word(0);
        // 4: STRUCT outer, kind_flag set (bitfield sizes in the top byte).
        word(name("outer", &strings));
        word(1 << 31 | 4 << 24 | 2);
        word(16);
        word(name("x", &strings));
        word(1);
        word(0);
        word(0);
        word(3);
        word(64);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, types.len() as u32, types.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&types);
        out.append(&mut strings);
        out
    }

    #[test]
    fn finds_members_inside_anonymous_unions_and_structs() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "whole").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 12);
        assert!(btf.member_offset("outer", "c").is_err());
        assert!(btf.member_offset("inner", "a").is_err());
    }

    #[test]
    fn truncated_or_corrupt_blobs_are_errors_not_panics() {
        let whole = blob();
        for len in 0..whole.len() {
            let _ = Btf::parse(&whole[..len]);
        }
        let mut bad = whole.clone();
        bad[0] = 0;
        assert!(Btf::parse(&bad).is_err());
        // A section length far past the blob.
        let mut long = whole;
        long[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&long).is_err());
    }

    /// On a kernel with BTF: `sock_common`'s address and port fields, which `ConnectConfig`
    /// needs, are where every kernel since 4.x keeps the IPv4 ones.
    #[test]
    fn finds_sock_common_fields_in_this_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no kernel BTF here: skipped");
            return;
        };
        let off = |m| btf.member_offset("sock_common", m).unwrap();
        assert_eq!(off("skc_daddr"), 0);
        assert_eq!(off("skc_rcv_saddr"), 4);
        assert_eq!(off("skc_dport"), 12);
        assert_eq!(off("skc_num"), 14);
        assert_eq!(off("skc_family"), 16);
        assert!(off("skc_v6_rcv_saddr") > 16);
        assert_eq!(btf.member_offset("sock", "__sk_common").unwrap(), 0);
    }
}
