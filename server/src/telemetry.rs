//! Logging: tracing to stderr, human-readable by default or JSON, filtered by `RUST_LOG`; and the
//! one line a fatal error ends the process with, in the same format, so a log collector reading
//! JSON never meets a plain-text line.

use std::ffi::OsString;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LOG_FORMAT_ENV, LogFormat};

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal, never into a file or a log collector.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Reports the error that ends the process: one JSON line at level ERROR with the whole cause
/// chain, or for a person `Error: ` and the chain one cause a line.
pub fn fatal(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Json => {
            init(format);
            tracing::error!(target: "flashsale", "{error:#}");
        }
        LogFormat::Human => eprintln!("Error: {error:?}"),
    }
}

/// The log format the command line asks for, read without parsing it: for errors in the
/// command line itself, which clap reports before there is a parsed `--log-format`. The last
/// `--log-format` given wins, as clap has it; else `FLASHSALE_LOG_FORMAT`; else human.
pub fn format_asked(args: &[OsString], env: Option<&OsString>) -> LogFormat {
    let mut asked = env.and_then(|value| value.to_str()).map(str::to_owned);
    let mut args = args.iter().filter_map(|arg| arg.to_str());
    while let Some(arg) = args.next() {
        if arg == "--log-format" {
            asked = args.next().map(str::to_owned);
        } else if let Some(value) = arg.strip_prefix("--log-format=") {
            asked = Some(value.to_owned());
        }
    }
    match asked.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Human,
    }
}

/// [`format_asked`] for this process.
pub fn format_asked_here() -> LogFormat {
    let args: Vec<OsString> = std::env::args_os().collect();
    format_asked(&args, std::env::var_os(LOG_FORMAT_ENV).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(args: &[&str], env: Option<&str>) -> LogFormat {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        format_asked(&args, env.map(OsString::from).as_ref())
    }

    #[test]
    fn the_format_asked_is_the_last_flag_then_the_environment_then_human() {
        assert_eq!(asked(&["flashsale", "serve"], None), LogFormat::Human);
        assert_eq!(
            asked(&["flashsale", "serve"], Some("json")),
            LogFormat::Json
        );
        assert_eq!(
            asked(&["flashsale", "--log-format", "json", "serve"], None),
            LogFormat::Json
        );
        assert_eq!(
            asked(&["flashsale", "serve", "--log-format=json"], Some("human")),
            LogFormat::Json
        );
        assert_eq!(
            asked(
                &["flashsale", "--log-format", "json", "--log-format", "human"],
                None
            ),
            LogFormat::Human
        );
    }
}
