//! Fuzzes the bounded ELF reader that finds the TLS functions in files any pod can map
//! (`capture::elf`).
//!
//! Checks: no panic; every offset found lies inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::capture::elf::offsets_in;

fuzz_target!(|data: &[u8]| {
    let names = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"];
    if let Ok(found) = offsets_in(data, &names) {
        assert_eq!(found.len(), names.len());
        assert!(found.iter().flatten().all(|o| *o < data.len() as u64));
    }
});
