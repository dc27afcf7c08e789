//! `cli train`: one fine-tuning run from a config file.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use trainer::{RunConfig, RunDir, TrainOptions};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run configuration (TOML, see configs/). With --resume and no --config, the run
    /// folder's config.toml is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a key, e.g. --set train.lr=2e-5 (repeatable, applied in order).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run folder (default: runs/<config file stem>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda or cuda:N; several, comma-separated (cuda:0,cuda:1), train data-parallel
    /// (same as --set train.device=...).
    #[arg(long)]
    device: Option<String>,
    /// Continue from the run folder's checkpoints/last.
    #[arg(long)]
    resume: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mut overrides = args.overrides;
    if let Some(device) = &args.device {
        overrides.push(format!("train.device={device}"));
    }
    let (config_file, out) = match (&args.config, &args.out) {
        (Some(file), out) => {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            let out = out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(stem));
            (file.clone(), out)
        }
        (None, Some(out)) if args.resume => {
            let file = out.join(RunDir::CONFIG);
            if !file.is_file() {
                bail!(
                    "--resume: {} is not a run folder (no {}); give the --out of an earlier run",
                    out.display(),
                    RunDir::CONFIG
                );
            }
            (file, out.clone())
        }
        _ => bail!("--config FILE is required (or --resume --out RUN_DIR)"),
    };
    let config = RunConfig::load(Some(&config_file), &overrides)?;
    let options = TrainOptions {
        resume: args.resume,
        progress: true,
        stop_after_steps: None,
    };
    say_how_to_resume_when_stopped(&out);
    let summary = trainer::train(&config, &out, &options)?;
    println!("{}", summary.text(config.train.best_metric));
    Ok(())
}

/// Ctrl-C (or SIGTERM) stops a run at once, as a crash would, and its last checkpoint stays
/// (each is written whole before it replaces the one before): instead of a half-drawn progress
/// bar, say how to go on from it.
#[cfg(unix)]
fn say_how_to_resume_when_stopped(out: &std::path::Path) {
    use std::sync::OnceLock;
    static MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();
    extern "C" fn on_signal(signal: libc::c_int) {
        if let Some(message) = MESSAGE.get() {
            // SAFETY: write(2) is async-signal-safe; the message is set before the handler.
            unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
        }
        // SAFETY: _exit(2) is async-signal-safe and runs no destructors.
        unsafe { libc::_exit(128 + signal) };
    }
    let out = out.display();
    let message = format!(
        "\nstopped: {out} keeps its last checkpoint, if the run had written one; \
         `cli train --resume --out {out}` goes on from it\n"
    );
    if MESSAGE.set(message.into_bytes()).is_ok() {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
    }
}

#[cfg(not(unix))]
fn say_how_to_resume_when_stopped(_out: &std::path::Path) {}
