//! A progress bar with ETA over rows, for inference over a file (`predict`, `evaluate`,
//! `embed`); training has its own, with the loss (`train.rs`).

use std::io::IsTerminal;

/// A bar over rows with ETA on stderr, where that is a terminal and a bar is wanted; nothing
/// otherwise, so that scripts and logs get only a command's closing line. Cleared when dropped.
pub struct RowsProgress(Option<indicatif::ProgressBar>);

impl RowsProgress {
    /// A bar over `rows` rows, labelled `what` ("predict"), where wanted and stderr is a terminal.
    pub fn new(wanted: bool, rows: usize, what: &str) -> Self {
        if !(wanted && std::io::stderr().is_terminal()) {
            return Self::hidden();
        }
        let bar = indicatif::ProgressBar::new(rows as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {pos}/{len} rows [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        bar.set_message(what.to_string());
        Self(Some(bar))
    }

    /// No bar.
    pub fn hidden() -> Self {
        Self(None)
    }

    /// `rows` more done.
    pub fn advance(&self, rows: usize) {
        if let Some(bar) = &self.0 {
            bar.inc(rows as u64);
        }
    }
}

impl Drop for RowsProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
