//! Recorded traffic: the fixture files that `agent/tests/fixtures/<protocol>/record.py` writes
//! from real clients and servers, read back for the decoders' golden tests and for
//! `cargo xtask bench decode`.
//!
//! The JSON shape is fixed (one chunk object per line, `"stream"` before `"hex"`), so scanning
//! for the two keys is enough: no JSON crate.

use std::path::{Path, PathBuf};

use super::Stream;

/// One recorded connection: each syscall's bytes, in order.
pub struct Fixture {
    pub name: String,
    pub chunks: Vec<(Stream, Vec<u8>)>,
}

/// `agent/tests/fixtures/<protocol>`.
pub fn dir(protocol: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(protocol)
}

/// Every `*.json` fixture in `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Fixture>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(format!("{name}.json"));
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let chunks = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Fixture { name, chunks })
        })
        .collect()
}

/// The fixtures of one protocol; panics with the reason (for tests).
pub fn load(protocol: &str) -> Vec<Fixture> {
    load_dir(&dir(protocol)).unwrap_or_else(|e| panic!("{e}"))
}

/// Parses one fixture file's text.
pub fn parse(text: &str) -> Result<Vec<(Stream, Vec<u8>)>, String> {
    let field = |line: &str, key: &str| -> Option<String> {
        let at = line.find(&format!("\"{key}\": \""))? + key.len() + 5;
        let end = line[at..].find('"')?;
        Some(line[at..at + end].to_owned())
    };
    let mut chunks = Vec::new();
    for line in text.lines() {
        let (Some(stream), Some(hex)) = (field(line, "stream"), field(line, "hex")) else {
            continue;
        };
        let stream = match stream.as_str() {
            "request" => Stream::Request,
            "response" => Stream::Response,
            other => return Err(format!("unknown stream {other:?}")),
        };
        chunks.push((stream, hex_decode(&hex)?));
    }
    Ok(chunks)
}

fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("hex: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_recorded_shape() {
        let text = "{\"chunks\": [\n  {\"stream\": \"request\", \"hex\": \"4745\"},\n  {\"stream\": \"response\", \"hex\": \"00ff\"}\n]}\n";
        let chunks = parse(text).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0], (Stream::Request, b"GE".to_vec()));
        assert_eq!(chunks[1], (Stream::Response, vec![0, 255]));
        assert!(parse("{\"stream\": \"sideways\", \"hex\": \"00\"}").is_err());
        assert!(parse("{\"stream\": \"request\", \"hex\": \"0\"}").is_err());
    }

    #[test]
    fn every_protocol_has_fixtures() {
        for protocol in &super::super::REGISTRY {
            assert!(!load(protocol.fixtures).is_empty(), "{}", protocol.fixtures);
        }
    }
}
