//! Reads the agent's own OpenMetrics exposition back into families of series, for the OTLP
//! metrics push: the registry is encoded as for a scrape and parsed here, so that the push
//! carries exactly what `/metrics` shows (every family, collectors included), by one path.
//!
//! Only the shapes prometheus-client writes are expected (`# HELP`, `# TYPE`, `# UNIT`,
//! samples with escaped label values, exemplars after ` # `, `# EOF`); a line that is not one
//! of them is skipped, never a panic.

/// What a family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// `info`, `stateset`, `unknown`, …: not pushed.
    Other,
}

/// One family: its name as `# TYPE` gives it (counters without `_total`), unit, help, and
/// its series.
#[derive(Debug, Default)]
pub struct Family {
    pub name: String,
    pub kind: Option<Kind>,
    pub unit: String,
    pub help: String,
    pub series: Vec<Series>,
}

/// Label pairs, in the exposition's order.
pub type Labels = Vec<(String, String)>;

/// One series: its labels (`le` left out for histograms) and its value.
#[derive(Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    /// Bucket bounds (without `+Inf`) and counts per bucket (not cumulative; one more than
    /// the bounds, the last being `+Inf`'s), with the sum and count.
    Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

/// Parses an exposition into its families, in order.
pub fn parse(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(what), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let arg = parts.next().unwrap_or("");
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name: name.to_owned(),
                    ..Family::default()
                });
            }
            let Some(family) = families.last_mut() else {
                continue;
            };
            match what {
                "HELP" => family.help = unescape(arg),
                "UNIT" => family.unit = arg.to_owned(),
                "TYPE" => {
                    family.kind = Some(match arg {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        _ => Kind::Other,
                    })
                }
                _ => {}
            }
            continue;
        }
        let Some(family) = families.last_mut() else {
            continue;
        };
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let Some(suffix) = name.strip_prefix(family.name.as_str()) else {
            continue;
        };
        match (family.kind, suffix) {
            (Some(Kind::Counter), "_total") | (Some(Kind::Gauge), "") => {
                family.series.push(Series {
                    labels,
                    value: Value::Number(value),
                });
            }
            (Some(Kind::Histogram), "_bucket" | "_sum" | "_count") => {
                histogram_sample(family, suffix, labels, value);
            }
            _ => {}
        }
    }
    families.retain(|f| f.kind.is_some_and(|k| k != Kind::Other));
    for family in &mut families {
        // A histogram is whole: increasing finite bounds, then `+Inf`, a count for each.
        family.series.retain(|s| match &s.value {
            Value::Histogram { bounds, counts, .. } => {
                counts.len() == bounds.len() + 1 && bounds.windows(2).all(|w| w[0] < w[1])
            }
            Value::Number(_) => true,
        });
        for series in &mut family.series {
            // Cumulative bucket counts (as exposed) → per bucket.
            if let Value::Histogram { counts, .. } = &mut series.value {
                for i in (1..counts.len()).rev() {
                    counts[i] = counts[i].saturating_sub(counts[i - 1]);
                }
            }
        }
    }
    families
}

/// Adds one histogram line to its series (the last one with the same labels, else a new one);
/// bucket counts stay cumulative until the family is done.
fn histogram_sample(family: &mut Family, suffix: &str, mut labels: Labels, v: f64) {
    let le = labels
        .iter()
        .position(|(k, _)| k == "le")
        .map(|i| labels.remove(i).1);
    let series = match family.series.last_mut() {
        Some(s) if s.labels == labels => s,
        _ => {
            family.series.push(Series {
                labels,
                value: Value::Histogram {
                    bounds: Vec::new(),
                    counts: Vec::new(),
                    sum: 0.0,
                    count: 0,
                },
            });
            let Some(last) = family.series.last_mut() else {
                return;
            };
            last
        }
    };
    let Value::Histogram {
        bounds,
        counts,
        sum,
        count,
    } = &mut series.value
    else {
        return;
    };
    match suffix {
        "_sum" => *sum = v,
        "_count" => *count = v as u64,
        _ => {
            let bound = le
                .as_deref()
                .and_then(parse_number)
                .unwrap_or(f64::INFINITY);
            if bound.is_finite() {
                bounds.push(bound);
            }
            counts.push(v as u64);
        }
    }
}

/// `name{k="v",...} value [timestamp] [# exemplar]` → (name, labels, value).
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // key
            let start = chars.peek()?.0;
            let mut key_end = start;
            let mut closed = false;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                if c == '}' {
                    closed = true;
                    key_end = i;
                    break;
                }
            }
            if closed {
                rest = &inner[key_end + 1..];
                break;
            }
            let key = inner[start..key_end].trim_start_matches(',').to_owned();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next()? {
                (_, ',') => continue,
                (i, '}') => {
                    rest = &inner[i + 1..];
                    break;
                }
                _ => return None,
            }
        }
    }
    let value = rest.trim_start().split(' ').next()?;
    Some((name, labels, parse_number(value)?))
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// `# HELP` text escapes: `\\` and `\n`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP d_seconds A duration.
# TYPE d_seconds histogram
# UNIT d_seconds seconds
d_seconds_sum{route="/a \"b\"",code="200"} 0.5
d_seconds_count{route="/a \"b\"",code="200"} 4
d_seconds_bucket{le="0.1",route="/a \"b\"",code="200"} 1 # {trace_id="ab",span_id="cd"} 0.05 1.5
d_seconds_bucket{le="1.0",route="/a \"b\"",code="200"} 3
d_seconds_bucket{le="+Inf",route="/a \"b\"",code="200"} 4
d_seconds_sum{route="/b",code="500"} 2.0
d_seconds_count{route="/b",code="500"} 1
d_seconds_bucket{le="0.1",route="/b",code="500"} 0
d_seconds_bucket{le="1.0",route="/b",code="500"} 0
d_seconds_bucket{le="+Inf",route="/b",code="500"} 1
# HELP c Things.
# TYPE c counter
c_total{reason="x\\y\nz"} 7
c_total 2
# HELP g A gauge.
# TYPE g gauge
g 1.5
# HELP target Target metadata.
# TYPE target info
target_info{service_name="x"} 1
# EOF
"#;

    #[test]
    fn histograms_counters_and_gauges_come_back_with_their_labels() {
        let families = parse(TEXT);
        let names: Vec<_> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["d_seconds", "c", "g"]);
        let d = &families[0];
        assert_eq!(
            (d.kind, d.unit.as_str()),
            (Some(Kind::Histogram), "seconds")
        );
        assert_eq!(d.help, "A duration.");
        assert_eq!(d.series.len(), 2);
        assert_eq!(
            d.series[0],
            Series {
                labels: vec![
                    ("route".into(), "/a \"b\"".into()),
                    ("code".into(), "200".into())
                ],
                value: Value::Histogram {
                    bounds: vec![0.1, 1.0],
                    counts: vec![1, 2, 1],
                    sum: 0.5,
                    count: 4,
                },
            }
        );
        assert_eq!(
            d.series[1].value,
            Value::Histogram {
                bounds: vec![0.1, 1.0],
                counts: vec![0, 0, 1],
                sum: 2.0,
                count: 1,
            }
        );
        let c = &families[1];
        assert_eq!(c.kind, Some(Kind::Counter));
        assert_eq!(c.series[0].labels, [("reason".into(), "x\\y\nz".into())]);
        assert_eq!(c.series[0].value, Value::Number(7.0));
        assert_eq!(c.series[1].labels, []);
        assert_eq!(families[2].series[0].value, Value::Number(1.5));
    }

    /// Label values come from tenants' traffic (routes, topics): whatever they hold, the
    /// registry's escaping and this parser give them back as they were.
    #[test]
    fn any_label_value_comes_back_as_encoded() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family as PromFamily;
        let mut rng = crate::protocol::testkit::Xorshift(3);
        let alphabet = [
            'a', '"', '\\', '\n', '}', '{', ' ', '#', ',', '=', 'é', '\u{0}',
        ];
        let mut values: Vec<String> = vec![
            "} # {trace_id=\"x\"} 1".into(),
            "\\\"".into(),
            String::new(),
        ];
        for _ in 0..200 {
            let n = (rng.u64() % 12) as usize;
            values.push(
                (0..n)
                    .map(|_| alphabet[(rng.u64() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        let mut registry = prometheus_client::registry::Registry::default();
        let family: PromFamily<Vec<(String, String)>, Counter> = PromFamily::default();
        registry.register("c", "C", family.clone());
        for (i, v) in values.iter().enumerate() {
            family
                .get_or_create(&vec![
                    ("route".to_owned(), v.clone()),
                    ("i".to_owned(), i.to_string()),
                ])
                .inc_by(i as u64 + 1);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let families = parse(&text);
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].series.len(), values.len());
        for series in &families[0].series {
            let i: usize = series.labels[1].1.parse().unwrap();
            assert_eq!(series.labels[0].1, values[i], "{text}");
            assert_eq!(series.value, Value::Number(i as f64 + 1.0));
        }
    }

    #[test]
    fn a_histogram_that_is_not_whole_is_left_out() {
        let text = "# TYPE h histogram\nh_bucket{le=\"x\"} 1\nh_bucket{le=\"y\"} 1\nh_count 1\n# TYPE g gauge\ng 1\n";
        let families = parse(text);
        assert!(families[0].series.is_empty());
        assert_eq!(families[1].series.len(), 1);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        for text in [
            "x{a=\"1\" 3\n",
            "# TYPE\n{}\n",
            "# TYPE h histogram\nh_bucket{le=\"x\"} 1\nh_count 1\n",
            "# TYPE c counter\nc_total{a=1} 2\nc_total{a=\"1\",} 3\n",
            "\u{0}\n# TYPE g gauge\ng{a=\"\\\"} 1\n",
        ] {
            let _ = parse(text);
        }
    }
}
