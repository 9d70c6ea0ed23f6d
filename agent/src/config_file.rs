//! The configuration file (`--config FILE`, or `PERISCOPE_CONFIG`): a YAML mapping whose keys
//! are the long flag names, with the same values the flags take. One precedence rule for every
//! setting: a command-line flag, else its environment variable, else the file, else the
//! built-in default. File values are checked at start-up by the flag's own parser, and an
//! error names the file, the key and the value. `--print-config` prints the settings in
//! effect, each with where it came from, in the file's format.
//!
//! ```yaml
//! protocols: [http, http2, postgres]   # a list, or "http,http2,postgres"
//! syscalls: default
//! otlp-endpoint: http://jaeger-collector:4317
//! traces-stdout: false
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::config::Config;

/// Flags that are about the configuration itself, never set from the file.
const NOT_IN_FILE: &[&str] = &["config", "print-config", "help", "version"];

/// Parts of a flag name whose values are printed as `<redacted>` by `--print-config`.
const SECRET: &[&str] = &["headers", "token", "password", "secret"];

/// The parsed configuration, and what `--print-config` needs.
pub struct Loaded {
    pub config: Config,
    matches: ArgMatches,
    command: Command,
    file: Option<PathBuf>,
    /// The flags the file set.
    file_keys: Vec<String>,
}

/// Parses the process's arguments, environment and configuration file. Exits with clap's
/// usual message (and status 2) on a bad flag; returns an error naming the key for a bad file.
pub fn load() -> anyhow::Result<Loaded> {
    load_from(
        std::env::args_os().collect(),
        std::env::var_os("PERISCOPE_CONFIG"),
    )
}

/// [`load`] with the arguments and `PERISCOPE_CONFIG` given.
pub fn load_from(args: Vec<OsString>, env_file: Option<OsString>) -> anyhow::Result<Loaded> {
    let file = config_path(&args).or(env_file.map(PathBuf::from));
    let mut command = Config::command();
    let mut file_keys = Vec::new();
    if let Some(path) = &file {
        (command, file_keys) = with_file_defaults(command, path)?;
    }
    let matches = match command.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let config = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok(Loaded {
        config,
        matches,
        command,
        file,
        file_keys,
    })
}

/// `--config X` or `--config=X` among the arguments.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// The file's values as the flags' defaults, each checked by its flag's parser; and the keys
/// it set.
fn with_file_defaults(mut command: Command, path: &Path) -> anyhow::Result<(Command, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
    let mapping = match doc {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => return Ok((command, Vec::new())),
        _ => bail!(
            "{}: must be a mapping of flag names to values",
            path.display()
        ),
    };
    let mut keys = Vec::new();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_FILE.contains(l))
        .map(str::to_owned)
        .collect();
    for (key, value) in mapping {
        let Some(key) = key.as_str().map(|k| k.replace('_', "-")) else {
            bail!("{}: key {key:?} is not a string", path.display());
        };
        if !known.contains(&key) {
            bail!(
                "{}: unknown key `{key}` (the keys are the long flag names: {})",
                path.display(),
                known.join(", ")
            );
        }
        let value =
            scalar_or_list(&value).with_context(|| format!("{}: key `{key}`", path.display()))?;
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .expect("a known key")
            .clone();
        // Checked by the flag's own parser, as if given on the command line.
        let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let check = if switch {
            match value.as_str() {
                "true" | "false" => Ok(()),
                _ => Err("must be true or false".to_owned()),
            }
        } else {
            Config::command()
                .try_get_matches_from(["periscope".to_owned(), format!("--{key}={value}")])
                .map(|_| ())
                .map_err(|e| {
                    let why = e.to_string();
                    why.lines()
                        .next()
                        .unwrap_or("")
                        .trim_start_matches("error: ")
                        .to_owned()
                })
        };
        if let Err(why) = check {
            bail!(
                "{}: key `{key}`: bad value {value:?}: {why}",
                path.display()
            );
        }
        // Parsed once at start-up: the few bytes of each value live as long as the process.
        let value: &'static str = Box::leak(value.into_boxed_str());
        command = command.mut_arg(arg.get_id().clone(), |a| a.default_value(value));
        keys.push(key);
    }
    Ok((command, keys))
}

/// A YAML scalar as the flag's text, or a list of scalars joined by commas.
fn scalar_or_list(value: &serde_yaml::Value) -> anyhow::Result<String> {
    use serde_yaml::Value;
    let scalar = |v: &Value| -> anyhow::Result<String> {
        Ok(match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => bail!("a value must be a string, number, boolean or a list of them"),
        })
    };
    match value {
        Value::Sequence(items) => Ok(items
            .iter()
            .map(scalar)
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(",")),
        other => scalar(other),
    }
}

impl Loaded {
    /// The settings in effect, as a configuration file: every flag with a value, and where it
    /// came from (`flag`, `env NAME`, `file`, `default`). Secrets are not printed.
    pub fn print(&self) -> String {
        let mut out = String::from("# Periscope's settings in effect");
        if let Some(f) = &self.file {
            out.push_str(&format!(" (configuration file {})", f.display()));
        }
        out.push('\n');
        for arg in self.command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_IN_FILE.contains(&long) {
                continue;
            }
            let id = arg.get_id().as_str();
            let Some(raw) = self.matches.get_raw(id) else {
                continue;
            };
            let value = raw
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            let source = match self.matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => format!(
                    "env {}",
                    arg.get_env()
                        .map(|e| e.to_string_lossy())
                        .unwrap_or_default()
                ),
                Some(ValueSource::DefaultValue) if self.file_keys.iter().any(|k| k == long) => {
                    "file".to_owned()
                }
                _ => "default".to_owned(),
            };
            let value = if SECRET.iter().any(|s| long.contains(s)) && !value.is_empty() {
                "<redacted>".to_owned()
            } else {
                value
            };
            // A JSON string is a YAML string.
            out.push_str(&format!(
                "{long}: {}  # {source}\n",
                serde_json::Value::String(value)
            ));
        }
        out
    }

    /// Whether `--print-config` was given.
    pub fn print_requested(&self) -> bool {
        self.config.print_config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        std::iter::once("periscope")
            .chain(a.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn file(text: &str) -> tempfile_path::Path {
        tempfile_path::Path::new(text)
    }

    mod tempfile_path {
        /// A file under the system's temp directory, removed on drop.
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn new(text: &str) -> Path {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "periscope-config-{}-{}.yaml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                Path(p)
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_values_lose_to_flags_and_win_over_defaults() {
        let f = file("protocols: [http, postgres]\ncapture_bytes: 512\ntraces-stdout: true\n");
        let path = f.0.to_str().unwrap();
        let l = load_from(args(&["--config", path]), None).unwrap();
        assert_eq!(l.config.capture_bytes, 512);
        assert!(l.config.traces_stdout);
        assert_eq!(
            l.config.protocols,
            crate::protocol::Protocols::parse("http,postgres").unwrap()
        );
        let printed = l.print();
        assert!(
            printed.contains("capture-bytes: \"512\"  # file\n"),
            "{printed}"
        );
        assert!(
            printed.contains("metrics-addr: \"0.0.0.0:9464\"  # default\n"),
            "{printed}"
        );
        // A flag wins; the file comes from PERISCOPE_CONFIG as well.
        let l = load_from(args(&["--capture-bytes=100"]), Some(OsString::from(path))).unwrap();
        assert_eq!(l.config.capture_bytes, 100);
        assert!(l.print().contains("capture-bytes: \"100\"  # flag\n"));
    }

    #[test]
    fn bad_files_name_the_key_and_the_value() {
        let cases = [
            ("capture-bytes: 0\n", "key `capture-bytes`: bad value \"0\""),
            ("protocols: smtp\n", "key `protocols`: bad value \"smtp\""),
            ("captur-bytes: 10\n", "unknown key `captur-bytes`"),
            ("capture-bytes: {a: 1}\n", "key `capture-bytes`"),
            ("- a\n", "must be a mapping"),
            ("a: [\n", "not YAML"),
        ];
        for (text, want) in cases {
            let f = file(text);
            let err = load_from(args(&["--config", f.0.to_str().unwrap()]), None)
                .err()
                .unwrap_or_else(|| panic!("{text:?} was accepted"));
            let err = format!("{err:#}");
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains(f.0.to_str().unwrap()), "{err}");
        }
        let err = load_from(args(&["--config=/nonexistent/p.yaml"]), None)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("/nonexistent/p.yaml"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let f = file("otlp-headers: authorization=Bearer%20s3cret\n");
        let l = load_from(args(&["--config", f.0.to_str().unwrap()]), None).unwrap();
        let printed = l.print();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("otlp-headers: \"<redacted>\"  # file"),
            "{printed}"
        );
    }
}
