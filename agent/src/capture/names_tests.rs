//! The name table shared with the kernel crate (`agent_ebpf::names`) against the kernel object
//! this binary embeds: every name in the table is in the object, and every program and map in
//! the object is in the table. Parsing needs no privileges (loading would).

use std::collections::BTreeSet;

use agent_ebpf::names;
use aya_obj::btf::BtfKind;

use super::OBJECT;

/// The embedded object, parsed; `None` in a build without kernel programs (`AYA_BUILD_SKIP=1`).
fn object() -> Option<aya_obj::Object> {
    if OBJECT.is_empty() {
        eprintln!("built with AYA_BUILD_SKIP=1: no kernel object to check the names against");
        return None;
    }
    Some(aya_obj::Object::parse(OBJECT).expect("the embedded kernel object parses"))
}

fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    names.into_iter().collect()
}

#[test]
fn every_program_in_the_object_is_in_the_name_table_and_back() {
    let Some(object) = object() else { return };
    let in_object = set(object.programs.keys().map(String::as_str));
    let in_table = set(names::PROGRAMS.iter().copied());
    assert_eq!(
        in_table.len(),
        names::PROGRAMS.len(),
        "a program is listed twice"
    );
    assert_eq!(in_object, in_table);
}

#[test]
fn every_map_in_the_object_is_in_the_name_table_and_back() {
    let Some(object) = object() else { return };
    // Sections holding globals (`.rodata`, `.bss`, `.data`) are maps too: they are the
    // globals' business, checked below.
    let in_object = set(object
        .maps
        .keys()
        .map(String::as_str)
        .filter(|name| !name.starts_with('.')));
    let in_table = set(names::MAPS.iter().copied());
    assert_eq!(in_table.len(), names::MAPS.len(), "a map is listed twice");
    assert_eq!(in_object, in_table);
}

#[test]
fn every_global_the_loader_sets_is_in_the_object() {
    let Some(object) = object() else { return };
    let btf = object.btf.as_ref().expect("the kernel object carries BTF");
    for global in names::GLOBALS {
        assert!(
            btf.id_by_type_name_kind(global, BtfKind::Var).is_ok(),
            "global {global} is not in the kernel object"
        );
    }
}

#[test]
fn kernel_names_are_cut_to_fifteen_bytes() {
    assert_eq!(names::kernel_name("sys_exit_btf"), b"sys_exit_btf");
    assert_eq!(
        names::kernel_name(names::program::SYS_ENTER_STATS_BTF),
        b"sys_enter_stats"
    );
}

/// LLVM turns struct copies, `Default` values and runs of stores into calls to `memcpy`,
/// `memmove` or `memset`, which on BPF are subprograms that move one byte per iteration: they
/// cost ~400 ns on every framed syscall before they were taken out (`agent-ebpf/src/common.rs`,
/// `store` and `copy_words`). No program may call one again. (The functions themselves stay in
/// the object, unused: the linker keeps compiler_builtins' exported symbols.)
#[test]
fn no_program_calls_a_byte_at_a_time_memory_function() {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
    if OBJECT.is_empty() {
        return;
    }
    let file = object::File::parse(OBJECT).expect("the embedded kernel object parses");
    let banned = ["memcpy", "memmove", "memset", "memcmp", "bcmp"];
    let mut calls = Vec::new();
    let mut relocations = 0;
    for section in file.sections() {
        for (offset, relocation) in section.relocations() {
            relocations += 1;
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let symbol = file.symbol_by_index(index).expect("a relocation's symbol");
            let name = symbol.name().unwrap_or_default();
            if banned.contains(&name) {
                calls.push(format!(
                    "{} +{offset:#x} calls {name}",
                    section.name().unwrap_or("?")
                ));
            }
        }
    }
    // Calls between functions are relocations: without any, this test could not fail.
    assert!(
        relocations > 100,
        "only {relocations} relocations in the object"
    );
    assert!(
        calls.is_empty(),
        "byte-at-a-time memory functions are called (a struct copy or a run of stores; see \
         agent-ebpf/src/common.rs): {calls:#?}"
    );
}

/// Bytes of stack a BPF function uses: the deepest `r10 - off` its loads and stores reach.
fn stack_depth(code: &[u8]) -> u64 {
    let mut deepest = 0i64;
    let mut at = 0;
    while at + 8 <= code.len() {
        let insn = &code[at..at + 8];
        let (class, dst, src) = (insn[0] & 7, insn[1] & 0xf, insn[1] >> 4);
        let off = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
        // LDX reads from `src + off`; ST and STX write to `dst + off`.
        let base = match class {
            1 => src,
            2 | 3 => dst,
            _ => 0,
        };
        if base == 10 && off < 0 {
            deepest = deepest.max(-off);
        }
        // A 64-bit immediate load takes two instruction slots.
        at += if insn[0] == 0x18 { 16 } else { 8 };
    }
    deepest as u64
}

/// Linux 6.1 (and every kernel before 6.5 or so) counts a program's stack and its `bpf_loop`
/// callback's together against 512 bytes, each frame rounded up to 32: the framing walk's
/// callback (`io::framing::step`) and every program that may call it must fit, or the loader
/// falls back to prefix capture on those kernels (6.18 does not notice; `cargo xtask vm`
/// does).
#[test]
fn the_framing_walk_fits_the_stack_of_older_kernels() {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    if OBJECT.is_empty() {
        return;
    }
    let file = object::File::parse(OBJECT).expect("the embedded kernel object parses");
    let depth_of = |symbol: &object::Symbol<'_, '_>| {
        let section = file
            .section_by_index(symbol.section_index().expect("a function's section"))
            .expect("the section");
        let data = section.data().expect("the section's bytes");
        let start = symbol.address() as usize;
        stack_depth(&data[start..start + symbol.size() as usize])
    };
    let rounded = |n: u64| n.div_ceil(32) * 32;
    let step = file
        .symbols()
        .find(|s| {
            s.kind() == SymbolKind::Text && s.name().is_ok_and(|n| n.contains("framing4step"))
        })
        .expect("the framing walk's callback");
    let callback = depth_of(&step);
    assert!(callback > 0, "the callback's stack was not measured");
    let mut checked = 0;
    for program in file.symbols().filter(|s| {
        s.kind() == SymbolKind::Text
            && s.is_global()
            && s.name()
                .is_ok_and(|n| n.starts_with("frame_exit") || n.starts_with("fexit_"))
    }) {
        let depth = depth_of(&program);
        let name = program.name().unwrap_or("?");
        assert!(
            rounded(depth) + rounded(callback) <= 512,
            "{name}: {depth} bytes of stack and the walk's callback {callback}: over 512 together"
        );
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} framed programs found");
}
