//! The agent's log lines: text for people (the default), or one JSON object per line for log
//! pipelines (`--log-format json`: `ts`, `level`, `target`, `message`, as Loki, Elasticsearch
//! and Cloud Logging parse without configuration).

use std::io::Write;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The logger for `filters` (`--log-level`; `RUST_LOG` overrides it) in `format`.
pub fn builder(filters: &str, format: LogFormat) -> env_logger::Builder {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filters).parse_env("RUST_LOG");
    match format {
        LogFormat::Text => {
            builder.format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|buf, record| {
                let line = serde_json::json!({
                    "ts": buf.timestamp_millis().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
        }
    }
    builder
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use log::Log;

    use super::*;

    /// A pipe target that keeps what it is given.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_through(format: LogFormat, message: &str) -> String {
        let kept = Kept::default();
        let logger = builder("info", format)
            .target(env_logger::Target::Pipe(Box::new(kept.clone())))
            .build();
        logger.log(
            &log::Record::builder()
                .args(format_args!("{message}"))
                .level(log::Level::Warn)
                .target("periscope::capture")
                .build(),
        );
        logger.flush();
        let bytes = kept.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn json_lines_are_one_object_each_whatever_the_message_holds() {
        let message = "a \"quoted\" path\nwith a newline, a tab\t and a \\ backslash";
        let out = log_through(LogFormat::Json, message);
        assert_eq!(out.lines().count(), 1, "{out}");
        let line: serde_json::Value = serde_json::from_str(out.trim_end()).expect("JSON");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "periscope::capture");
        assert_eq!(line["message"], message);
        let ts = line["ts"].as_str().expect("a timestamp");
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.contains('T'),
            "{ts}"
        );
    }

    #[test]
    fn text_lines_stay_as_they_were() {
        let out = log_through(LogFormat::Text, "hello");
        assert!(
            out.starts_with('[') && out.trim_end().ends_with("hello"),
            "{out}"
        );
        assert!(
            out.contains("WARN") && out.contains("periscope::capture"),
            "{out}"
        );
    }
}
