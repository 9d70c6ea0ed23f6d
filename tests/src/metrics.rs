//! A parser for the Prometheus text exposition format (0.0.4) and its OpenMetrics flavour,
//! strict enough to catch malformed output, small enough to read.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context};

/// One sample line: a series' labels and its value. The name is kept by [`Metrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label pairs, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}} {}", self.value)
    }
}

/// A parsed exposition: every sample by exact sample name (so a histogram `foo` appears as
/// `foo_bucket`, `foo_sum` and `foo_count`), plus the `# TYPE` and `# HELP` lines.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    text: String,
    samples: Vec<(String, Sample)>,
    types: BTreeMap<String, String>,
    help: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses `text`; errors name the offending line.
    pub fn parse(text: &str) -> anyhow::Result<Metrics> {
        let mut metrics = Metrics {
            text: text.to_owned(),
            ..Metrics::default()
        };
        let mut seen_eof = false;
        for (number, line) in text.lines().enumerate() {
            let context = || format!("exposition line {}: {line:?}", number + 1);
            if seen_eof && !line.trim().is_empty() {
                bail!("content after `# EOF` at {}", context());
            }
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("EOF"), None, None) => seen_eof = true,
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        metrics
                            .types
                            .insert(name.to_owned(), kind.trim().to_owned());
                    }
                    (Some("HELP"), Some(name), help) => {
                        let help = unescape(help.unwrap_or_default(), false);
                        metrics.help.insert(name.to_owned(), help);
                    }
                    _ => {} // Plain comments and `# UNIT` carry nothing we assert on.
                }
                continue;
            }
            let (name, sample) = parse_sample(line).with_context(context)?;
            metrics.samples.push((name, sample));
        }
        Ok(metrics)
    }

    /// The raw exposition text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// All samples named exactly `name`, in exposition order.
    pub fn samples(&self, name: &str) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Sum of the samples named exactly `name` whose labels include every `(label, value)`
    /// pair given (other labels may have any value). 0 when nothing matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        // Folded from +0.0: `Sum for f64` starts at -0.0, which would print as "-0".
        self.matching(name, labels)
            .fold(0.0, |acc, s| acc + s.value)
    }

    /// The samples [`Metrics::sum`] would add up.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |(n, s)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
            })
            .map(|(_, s)| s)
    }

    /// Every distinct sample name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.samples.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The `# TYPE` declared for metric family `family` (e.g. `counter`, `histogram`).
    pub fn metric_type(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// The `# HELP` text declared for metric family `family`, unescaped.
    pub fn help(&self, family: &str) -> Option<&str> {
        self.help.get(family).map(String::as_str)
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_sample(line: &str) -> anyhow::Result<(String, Sample)> {
    let name_len = line
        .char_indices()
        .find(|&(i, c)| {
            !(if i == 0 {
                is_name_start(c)
            } else {
                is_name_char(c)
            })
        })
        .map_or(line.len(), |(i, _)| i);
    if name_len == 0 {
        bail!("expected a metric name");
    }
    let name = line[..name_len].to_owned();
    let mut rest = &line[name_len..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    if !rest.starts_with([' ', '\t']) {
        bail!("expected whitespace before the value");
    }
    // Drop an OpenMetrics exemplar (` # {trace_id="…"} 1.0`), then the optional timestamp.
    let rest = rest.split(" # ").next().unwrap_or_default();
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().context("missing value")?;
    let value = value_text
        .parse::<f64>()
        .with_context(|| format!("bad value {value_text:?}"))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<f64>()
            .with_context(|| format!("bad timestamp {timestamp:?}"))?;
    }
    if let Some(extra) = fields.next() {
        bail!("unexpected {extra:?} after the value and timestamp");
    }
    Ok((name, Sample { labels, value }))
}

/// Parses `name="value",…}` (the opening brace already consumed) into `labels`, returning
/// what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> anyhow::Result<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let name_len = s
            .char_indices()
            .find(|&(i, c)| {
                !(if i == 0 {
                    c.is_ascii_alphabetic() || c == '_'
                } else {
                    c.is_ascii_alphanumeric() || c == '_'
                })
            })
            .map_or(s.len(), |(i, _)| i);
        if name_len == 0 {
            bail!("expected a label name or `}}` at {s:?}");
        }
        let label = &s[..name_len];
        s = s[name_len..].trim_start();
        s = s
            .strip_prefix('=')
            .with_context(|| format!("expected `=` after label {label}"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .with_context(|| format!("expected `\"` to open the value of label {label}"))?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.with_context(|| format!("unterminated value of label {label}"))?;
        if labels
            .insert(label.to_owned(), unescape(&s[..end], true))
            .is_some()
        {
            bail!("label {label} appears twice");
        }
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            bail!("expected `,` or `}}` after the value of label {label}");
        }
    }
}

/// Undoes the exposition escapes: `\\` and `\n` everywhere, `\"` in label values only.
fn unescape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            // Unknown escapes are kept verbatim, as Prometheus does.
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}
