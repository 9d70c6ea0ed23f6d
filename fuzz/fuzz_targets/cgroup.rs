//! Fuzzes the reading of `/proc/<pid>/cgroup` text (any process on the node names its own
//! cgroups, so the text is untrusted): container id and pod UID.
//!
//! Checks: no panic; a container id is 64 hex digits; a pod UID is a dashed UUID (8-4-4-4-12
//! hex digits) or a static pod's 32-hex-digit config hash; both are found in the input (a UID's dashes
//! possibly written as underscores).
#![no_main]

use libfuzzer_sys::fuzz_target;
use periscope::metadata::cgroup::{container_id, pod_uid};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(id) = container_id(&text) {
        assert_eq!(id.len(), 64, "{id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
        assert!(text.contains(id.as_str()), "{id:?}");
    }
    if let Some(uid) = pod_uid(&text) {
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        let groups: Vec<&str> = uid.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert!(
            (lengths == [8, 4, 4, 4, 12] || lengths == [32]) && groups.iter().all(|g| hex(g)),
            "{uid:?}"
        );
        // Found in the text, systemd's underscores read as dashes.
        assert!(text.replace('_', "-").contains(uid.as_str()), "{uid:?}");
    }
});
