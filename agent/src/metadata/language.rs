//! The language a process is written in, as far as its executable's name tells: `python3.11`
//! is Python, `java` is a JVM. The value is `telemetry.sdk.language` of the process's resource
//! (see `export::otlp::convert::resource` for why it is the workload's language and not the
//! agent's).
//!
//! Names only, on purpose: no reading of the binary (a Go build-info section, a .NET bundle
//! header), so a compiled program (Go, Rust, C++) and a renamed interpreter are unknown, and
//! unknown is `None`, never a guess.

/// The `telemetry.sdk.language` value (a well-known value of the conventions) of an
/// executable, by name: `python*`/`pypy*`, `java`, `node`/`nodejs`, `ruby*`, `php*` (and
/// `php-fpm*`), `dotnet`, each optionally followed by a version (`python3.11`, `php-fpm8.2`).
pub fn from_executable(name: &str) -> Option<&'static str> {
    const NAMES: [(&str, &str); 9] = [
        ("python", "python"),
        ("pypy", "python"),
        ("java", "java"),
        ("nodejs", "nodejs"),
        ("node", "nodejs"),
        ("ruby", "ruby"),
        ("php-fpm", "php"),
        ("php", "php"),
        ("dotnet", "dotnet"),
    ];
    NAMES.iter().find_map(|&(prefix, language)| {
        let version = name.strip_prefix(prefix)?;
        version
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.')
            .then_some(language)
    })
}

#[cfg(test)]
mod tests {
    use super::from_executable;

    #[test]
    fn interpreters_are_known_by_name_and_version() {
        let known = [
            ("python3.11", "python"),
            ("python3", "python"),
            ("python", "python"),
            ("pypy3", "python"),
            ("java", "java"),
            ("node", "nodejs"),
            ("nodejs", "nodejs"),
            ("ruby3.1", "ruby"),
            ("php", "php"),
            ("php8.2", "php"),
            ("php-fpm8.2", "php"),
            ("dotnet", "dotnet"),
        ];
        for (name, language) in known {
            assert_eq!(from_executable(name), Some(language), "{name}");
        }
    }

    #[test]
    fn anything_else_is_unknown() {
        for name in [
            "",
            "curl",
            "shop-bin",
            "javac",
            "pythonista",
            "node_exporter",
            "rubyist",
            "phpunit",
            "python3-config",
            "envoy",
            "periscope",
        ] {
            assert_eq!(from_executable(name), None, "{name}");
        }
    }
}
