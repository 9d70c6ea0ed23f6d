//! W3C trace context, sampling and the ids of new spans.

/// A valid incoming `traceparent` (version 00 layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a `traceparent` header strictly: `00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex, no
/// all-zero ids, version `ff` refused. Later versions may append `-...` fields, which are
/// ignored as the W3C spec asks. `None` for anything else: the caller starts a new trace.
pub fn parse_traceparent(header: &str) -> Option<TraceParent> {
    let header = header.trim_matches([' ', '\t']);
    let bytes = header.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let version = hex_byte(&bytes[0..2])?;
    if version == 0xff || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    // Version 00 is exactly 55 bytes; a later version may go on after a dash.
    if (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&bytes[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(*pair.first()?)? << 4 | digit(*pair.get(1)?)?)
}

/// Lower-case hex of an id.
pub fn hex(id: &[u8]) -> String {
    use std::fmt::Write;
    id.iter()
        .fold(String::with_capacity(id.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `OTEL_TRACES_SAMPLER` with its argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Keeps a trace when the last 8 bytes of its id, read big-endian, fall under
    /// `ratio * 2^64`: every agent that sees the trace decides alike.
    TraceIdRatio(f64),
    /// Follows the incoming `traceparent`'s sampled flag; the root sampler decides for new
    /// traces.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// Builds the sampler from `OTEL_TRACES_SAMPLER`'s name and `OTEL_TRACES_SAMPLER_ARG` (the
    /// ratio, default 1.0). The error names the setting and the bad value.
    pub fn from_settings(name: &str, arg: Option<&str>) -> anyhow::Result<Sampler> {
        let ratio = || -> anyhow::Result<f64> {
            match arg.map(str::trim) {
                None | Some("") => Ok(1.0),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => anyhow::bail!(
                        "OTEL_TRACES_SAMPLER_ARG (--traces-sampler-arg) must be a ratio in \
                         0.0..=1.0, not {a:?}"
                    ),
                },
            }
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(ratio()?)))
            }
            other => anyhow::bail!(
                "OTEL_TRACES_SAMPLER (--traces-sampler) must be always_on, always_off, \
                 traceidratio, parentbased_always_on, parentbased_always_off or \
                 parentbased_traceidratio, not {other:?}"
            ),
        })
    }

    /// Whether a span of this trace is kept; `parent` is the incoming context, if any.
    pub fn sample(&self, trace_id: &[u8; 16], parent: Option<&TraceParent>) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(ratio) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                let x = u64::from_be_bytes(low);
                (x as f64) < ratio * (u64::MAX as f64 + 1.0)
            }
            Sampler::ParentBased(root) => match parent {
                Some(p) => p.sampled,
                None => root.sample(trace_id, None),
            },
        }
    }
}

/// Ids for new spans and traces: splitmix64 seeded once from the OS random source (ids need to
/// be unique, not secret; one `getrandom` per span would be a syscall per span).
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    pub fn new() -> IdGenerator {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            // No OS randomness: the clock still makes ids differ between runs.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            seed = (now ^ u64::from(std::process::id())).to_le_bytes();
        }
        IdGenerator {
            state: u64::from_le_bytes(seed),
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A non-zero span id.
    pub fn span_id(&mut self) -> [u8; 8] {
        loop {
            let v = self.next();
            if v != 0 {
                return v.to_be_bytes();
            }
        }
    }

    /// A non-zero trace id.
    pub fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&self.span_id());
        id
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let tp = parse_traceparent(GOOD).expect("valid");
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled);
        assert!(
            !parse_traceparent(&GOOD.replace("-01", "-00"))
                .expect("valid")
                .sampled
        );
        // A later version may carry more fields.
        assert!(parse_traceparent(&format!("01{}-extra", &GOOD[2..])).is_some());
    }

    #[test]
    fn bad_traceparents_are_refused() {
        for bad in [
            "",
            &GOOD[..54],
            &format!("{GOOD}0"),
            &GOOD.to_uppercase(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            &format!("ff{}", &GOOD[2..]),
            &GOOD.replace('-', "_"),
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            &format!("01{}x", &GOOD[2..]),
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn samplers_follow_their_settings() {
        let id = [0xff; 16];
        let parent = parse_traceparent(GOOD).expect("valid");
        let unsampled = TraceParent {
            sampled: false,
            ..parent
        };
        let pb = Sampler::from_settings("parentbased_always_on", None).expect("valid");
        assert!(pb.sample(&id, None));
        assert!(pb.sample(&id, Some(&parent)));
        assert!(!pb.sample(&id, Some(&unsampled)));
        let half = Sampler::from_settings("traceidratio", Some("0.5")).expect("valid");
        assert!(!half.sample(&id, None));
        assert!(half.sample(&[0; 16], None));
        assert!(!Sampler::AlwaysOff.sample(&id, Some(&parent)));
        assert!(Sampler::from_settings("traceidratio", Some("2")).is_err());
        assert!(Sampler::from_settings("sometimes", None).is_err());
    }

    #[test]
    fn generated_ids_differ_and_are_not_zero() {
        let mut ids = IdGenerator::new();
        let a = ids.trace_id();
        let b = ids.trace_id();
        assert_ne!(a, b);
        assert_ne!(ids.span_id(), [0; 8]);
    }

    /// Issue 15: an untrusted caller's `traceparent` must not force sampling. With the
    /// default sampler (clap's default for `--traces-sampler`) and a ratio, a flag set by the
    /// caller changes nothing: the trace id alone decides.
    #[test]
    fn the_default_sampler_ignores_an_incoming_sampled_flag() {
        use clap::Parser;
        let config = crate::config::Config::parse_from(["periscope"]);
        let sampler = Sampler::from_settings(&config.traces_sampler, Some("0.25")).unwrap();
        let mut ids = IdGenerator::new();
        let (mut kept, mut kept_with_flag) = (0, 0);
        for _ in 0..4000 {
            let trace_id = ids.trace_id();
            let forced = TraceParent {
                trace_id,
                parent_id: [1; 8],
                sampled: true,
            };
            kept += u32::from(sampler.sample(&trace_id, None));
            kept_with_flag += u32::from(sampler.sample(&trace_id, Some(&forced)));
        }
        assert_eq!(kept, kept_with_flag);
        assert!((800..1200).contains(&kept), "{kept} of 4000 at 0.25");
        // Without an argument the default keeps everything.
        let all = Sampler::from_settings(&config.traces_sampler, None).unwrap();
        assert!(all.sample(&[7; 16], None));
    }
}
