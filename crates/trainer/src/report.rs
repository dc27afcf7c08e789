//! Reports from run folders: `report.md` with the paper-style table per epoch and SVG plots of
//! one run ([`write_report`]), and the comparison of several runs ([`compare`]: the paper's
//! Tables 2–4 and its Fig. 2).
//!
//! Everything is read back from the CSVs of the run folders, so a report can be made while a
//! run is going on, after a crash, or on another machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::config::{Finetune, Metric, RunConfig, WeightingStrategy};
use crate::run_dir::{write_atomic, EpochRow, RunDir, RunDirError, StepRow};

/// Files a report wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    /// The Markdown file (`report.md` or `comparison.md`).
    pub markdown: PathBuf,
    /// The SVG plots, in the order they are linked from the Markdown.
    pub plots: Vec<PathBuf>,
}

/// Errors of the reports, each naming the folder or file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Run(#[from] RunDirError),
    #[error("{}: no epoch in metrics.csv yet", .0.display())]
    NoEpochs(PathBuf),
    #[error("plot `{plot}`: cannot draw: {message}")]
    Plot { plot: String, message: String },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Writes `report.md` and the plots (`task_weights.svg`, `losses.svg`, `metrics.svg`) into the
/// run folder `dir`. A plot with nothing to show (no `w_c` in a regression-only run) is left out.
pub fn write_report(dir: &Path) -> Result<ReportFiles, ReportError> {
    let run = RunDir::open(dir)?;
    let epochs = run.read_epochs()?;
    if epochs.is_empty() {
        return Err(ReportError::NoEpochs(dir.to_path_buf()));
    }
    let steps = run.read_steps()?;
    let config = read_config_if_any(&run)?;
    let best_metric = config
        .as_ref()
        .map(|c| c.train.best_metric)
        .unwrap_or_default();

    let mut plots = Vec::new();
    if let Some(svg) = task_weights_plot(&steps)? {
        plots.push(save(&run.file("task_weights.svg"), &svg)?);
    }
    if let Some(svg) = losses_plot(&steps)? {
        plots.push(save(&run.file("losses.svg"), &svg)?);
    }
    plots.push(save(&run.file("metrics.svg"), &metrics_plot(&epochs)?)?);

    let mut md = String::new();
    let name = folder_name(dir);
    let _ = writeln!(md, "# Run `{name}`\n");
    if let Some(c) = &config {
        let _ = writeln!(
            md,
            "{}; model `{}`; {} epochs, batch {}, lr {:e}, seed {}.\n",
            describe(c),
            c.model.path.display(),
            c.train.epochs,
            c.train.batch_size,
            c.train.lr,
            c.train.seed
        );
    }
    let best = best_epoch(&epochs, best_metric);
    let _ = writeln!(
        md,
        "Best epoch by {} ({}): **{}**. Total time {:.1} s.\n",
        best_metric.label(),
        if best_metric.higher_is_better() {
            "highest"
        } else {
            "lowest"
        },
        best.epoch,
        epochs.iter().map(|e| e.seconds).sum::<f64>()
    );
    md.push_str(&epoch_table(&epochs));
    md.push('\n');
    for plot in &plots {
        let file = folder_name(plot);
        let _ = writeln!(md, "![{file}]({file})\n");
    }
    let markdown = run.file(RunDir::REPORT);
    save(&markdown, &md)?;
    Ok(ReportFiles { markdown, plots })
}

/// The paper-style table, one row per epoch: errors with 6 decimals, classification scores in
/// percent with 2 decimals.
fn epoch_table(epochs: &[EpochRow]) -> String {
    let mut md = String::from(
        "| epoch | train loss | MSE | MAE | RMSE | R² | accuracy | precision | recall | F1 | seconds |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for e in epochs {
        let _ = writeln!(
            md,
            "| {} | {:.6} | {} | {:.1} |",
            e.epoch,
            e.train_loss,
            metric_cells(e),
            e.seconds
        );
    }
    md
}

/// `MSE | MAE | RMSE | R² | accuracy | precision | recall | F1` of one epoch.
fn metric_cells(e: &EpochRow) -> String {
    format!(
        "{:.6} | {:.6} | {:.6} | {:.6} | {} | {} | {} | {}",
        e.mse,
        e.mae,
        e.rmse,
        e.r2,
        percent(e.accuracy),
        percent(e.precision),
        percent(e.recall),
        percent(e.f1)
    )
}

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The best epoch by `metric` (the first of equals); `epochs` must not be empty.
fn best_epoch(epochs: &[EpochRow], metric: Metric) -> &EpochRow {
    epochs.iter().fold(&epochs[0], |best, e| {
        if metric.improves(e.get(metric), best.get(metric)) {
            e
        } else {
            best
        }
    })
}

/// One run of a comparison: its best epoch and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonRow {
    /// The run folder's name.
    pub name: String,
    /// What the run is (`DAO + LoRA r=8`, `constant w_c = 0.10`, …), from its `config.toml`.
    pub setting: String,
    pub strategy: WeightingStrategy,
    /// `weighting.constant_w_cls` of a `constant` run.
    pub w_cls: Option<f64>,
    /// The metric that picked `best`.
    pub by: Metric,
    /// The best epoch's row of `metrics.csv`.
    pub best: EpochRow,
    /// Epochs run.
    pub epochs: usize,
    /// Seconds of all epochs.
    pub total_seconds: f64,
    /// Mean seconds per epoch divided by the reference run's (runs of different lengths, e.g.
    /// stopped early, compare fairly).
    pub relative_time: f64,
}

/// Several runs side by side, each at its best epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The metric that picked every run's best epoch; `None`: each run's own
    /// `train.best_metric` (the epoch `evaluate` and its report show).
    pub by: Option<Metric>,
    /// Name of the reference run of the time column.
    pub reference: String,
    pub rows: Vec<ComparisonRow>,
}

struct RunSummary {
    config: RunConfig,
    epochs: Vec<EpochRow>,
}

fn summarise(dir: &Path) -> Result<RunSummary, ReportError> {
    let run = RunDir::open(dir)?;
    let config = run.read_config()?;
    let epochs = run.read_epochs()?;
    if epochs.is_empty() {
        return Err(ReportError::NoEpochs(dir.to_path_buf()));
    }
    Ok(RunSummary { config, epochs })
}

fn seconds_per_epoch(epochs: &[EpochRow]) -> f64 {
    epochs.iter().map(|e| e.seconds).sum::<f64>() / epochs.len() as f64
}

/// Compares the runs in `run_dirs` at their best epoch (by `by`, or by each run's own
/// `train.best_metric`), with times relative to the run in `reference` (which need not be
/// among them). Each folder needs `config.toml` and at least one row in `metrics.csv`.
pub fn compare(
    run_dirs: &[PathBuf],
    reference: &Path,
    by: Option<Metric>,
) -> Result<Comparison, ReportError> {
    let reference_time = seconds_per_epoch(&summarise(reference)?.epochs);
    let mut rows = Vec::with_capacity(run_dirs.len());
    for dir in run_dirs {
        let RunSummary { config, epochs } = summarise(dir)?;
        let metric = by.unwrap_or(config.train.best_metric);
        let best = best_epoch(&epochs, metric).clone();
        let strategy = config.weighting.strategy;
        rows.push(ComparisonRow {
            name: folder_name(dir),
            setting: describe(&config),
            strategy,
            w_cls: (strategy == WeightingStrategy::Constant)
                .then_some(config.weighting.constant_w_cls),
            by: metric,
            best,
            epochs: epochs.len(),
            total_seconds: epochs.iter().map(|e| e.seconds).sum(),
            relative_time: if reference_time > 0.0 {
                seconds_per_epoch(&epochs) / reference_time
            } else {
                f64::NAN
            },
        });
    }
    Ok(Comparison {
        by,
        reference: folder_name(reference),
        rows,
    })
}

impl Comparison {
    /// The table: one row per run, its best epoch's metrics and its time.
    pub fn to_markdown(&self) -> String {
        let first = self.rows.first().map(|r| r.by);
        let mixed = self.rows.iter().any(|r| Some(r.by) != first);
        let chosen_by = match (self.by, first) {
            (Some(by), _) => by.label().to_string(),
            (None, Some(by)) if !mixed => format!("{} (the runs' best_metric)", by.label()),
            _ => "each run's best_metric".to_string(),
        };
        let mut md = format!(
            "# Comparison (best epoch by {chosen_by}; time relative to `{}` per epoch)\n\n",
            self.reference
        );
        md.push_str(
            "| run | setting | best epoch | MSE | MAE | RMSE | R² | accuracy | precision | recall | F1 | epochs | time (s) | time vs reference |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            let best = if mixed {
                format!("{} ({})", r.best.epoch, r.by.label())
            } else {
                r.best.epoch.to_string()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.1} | {:.2}× |",
                r.name,
                r.setting,
                best,
                metric_cells(&r.best),
                r.epochs,
                r.total_seconds,
                r.relative_time
            );
        }
        md
    }

    /// Writes `comparison.md` and, when there are constant-weight runs, the paper's Fig. 2:
    /// MSE and accuracy against `w_c` (`wc_mse.svg`, `wc_accuracy.svg`) with each DAO run as
    /// a horizontal line. `out` is created if needed.
    pub fn write(&self, out: &Path) -> Result<ReportFiles, ReportError> {
        std::fs::create_dir_all(out).map_err(|error| ReportError::Io {
            path: out.to_path_buf(),
            error,
        })?;
        let mut plots = Vec::new();
        for metric in [Metric::Mse, Metric::Accuracy] {
            if let Some(svg) = self.metric_against_w_cls(metric)? {
                plots.push(save(&out.join(format!("wc_{}.svg", metric.name())), &svg)?);
            }
        }
        let mut md = self.to_markdown();
        md.push('\n');
        for plot in &plots {
            let file = folder_name(plot);
            let _ = writeln!(md, "![{file}]({file})\n");
        }
        let markdown = out.join("comparison.md");
        save(&markdown, &md)?;
        Ok(ReportFiles { markdown, plots })
    }

    /// `metric` of the constant-weight runs against their `w_c`, DAO runs as horizontal lines;
    /// `None` without constant-weight runs.
    fn metric_against_w_cls(&self, metric: Metric) -> Result<Option<String>, ReportError> {
        let mut constant: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter_map(|r| r.w_cls.map(|w| (w, r.best.get(metric))))
            .collect();
        if constant.is_empty() {
            return Ok(None);
        }
        constant.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut series = vec![Series::new("constant w_c", constant, 0).with_markers()];
        let (x0, x1) = (series[0].points[0].0, series[0].points.last().unwrap().0);
        let (x0, x1) = if x0 == x1 {
            (x0 - 0.05, x1 + 0.05)
        } else {
            (x0, x1)
        };
        for (i, r) in self.rows.iter().filter(|r| is_dao(r.strategy)).enumerate() {
            let y = r.best.get(metric);
            series.push(Series::new(&r.setting, vec![(x0, y), (x1, y)], i + 1));
        }
        let title = format!("{} against the constant weight w_c", metric.label());
        line_chart(&title, "w_c", metric.label(), &series).map(Some)
    }
}

fn is_dao(strategy: WeightingStrategy) -> bool {
    matches!(
        strategy,
        WeightingStrategy::Dao
            | WeightingStrategy::DaoGradBalanceOnly
            | WeightingStrategy::DaoImbalanceOnly
    )
}

/// A short description of a run's setting.
fn describe(config: &RunConfig) -> String {
    let weighting = match config.weighting.strategy {
        WeightingStrategy::RegressionOnly => "regression only".to_string(),
        WeightingStrategy::Constant => {
            format!("constant w_c = {:.2}", config.weighting.constant_w_cls)
        }
        WeightingStrategy::Dao => "DAO".into(),
        WeightingStrategy::Uncertainty => "uncertainty weighting".into(),
        WeightingStrategy::Dwa => "DWA".into(),
        WeightingStrategy::GradNorm => "GradNorm".into(),
        WeightingStrategy::DaoGradBalanceOnly => "DAO (gradient balance only)".into(),
        WeightingStrategy::DaoImbalanceOnly => "DAO (imbalance loss only)".into(),
    };
    match config.train.finetune {
        Finetune::Full => weighting,
        Finetune::Lora => format!("{weighting} + LoRA r={}", config.lora.rank),
    }
}

fn read_config_if_any(run: &RunDir) -> Result<Option<RunConfig>, ReportError> {
    if run.file(RunDir::CONFIG).is_file() {
        Ok(Some(run.read_config()?))
    } else {
        Ok(None)
    }
}

fn folder_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn save(path: &Path, text: &str) -> Result<PathBuf, ReportError> {
    write_atomic(path, text.as_bytes()).map_err(|error| ReportError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(path.to_path_buf())
}

/// `w_c` per batch and its mean per epoch (the paper's Fig. 5).
fn task_weights_plot(steps: &[StepRow]) -> Result<Option<String>, ReportError> {
    let per_step: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|s| s.w_cls.map(|w| (s.step as f64, w)))
        .collect();
    if per_step.is_empty() {
        return Ok(None);
    }
    // Each epoch's mean at the middle of its batches.
    let mut per_epoch: Vec<(u32, f64, f64, usize)> = Vec::new(); // epoch, Σ step, Σ w, n
    for s in steps {
        let Some(w) = s.w_cls else { continue };
        match per_epoch.last_mut() {
            Some(last) if last.0 == s.epoch => {
                last.1 += s.step as f64;
                last.2 += w;
                last.3 += 1;
            }
            _ => per_epoch.push((s.epoch, s.step as f64, w, 1)),
        }
    }
    let means = per_epoch
        .iter()
        .map(|&(_, steps, w, n)| (steps / n as f64, w / n as f64))
        .collect();
    let series = [
        Series::new("w_c per batch", per_step, 0),
        Series::new("w_c, mean per epoch", means, 1).with_markers(),
    ];
    line_chart("Classification task weight w_c", "batch", "w_c", &series).map(Some)
}

/// `L_total`, `L_r`, `L_c`, `L_imb` per batch.
fn losses_plot(steps: &[StepRow]) -> Result<Option<String>, ReportError> {
    if steps.is_empty() {
        return Ok(None);
    }
    type Pick = fn(&StepRow) -> Option<f64>;
    let columns: [(&str, Pick); 4] = [
        ("L_total", |s| Some(s.loss_total)),
        ("L_r", |s| s.loss_reg),
        ("L_c", |s| s.loss_cls),
        ("L_imb", |s| s.loss_imb),
    ];
    let series: Vec<Series> = columns
        .iter()
        .enumerate()
        .map(|(i, (label, pick))| {
            let points = steps
                .iter()
                .filter_map(|s| pick(s).map(|v| (s.step as f64, v)))
                .collect();
            Series::new(label, points, i)
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    line_chart("Training losses", "batch", "loss", &series).map(Some)
}

/// Every validation metric per epoch.
fn metrics_plot(epochs: &[EpochRow]) -> Result<String, ReportError> {
    let series: Vec<Series> = Metric::ALL
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let points = epochs
                .iter()
                .map(|e| (f64::from(e.epoch), e.get(m)))
                .collect();
            Series::new(m.label(), points, i).with_markers()
        })
        .collect();
    line_chart("Validation metrics", "epoch", "value", &series)
}

/// One line of a chart.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    markers: bool,
}

impl Series {
    fn new(label: &str, points: Vec<(f64, f64)>, index: usize) -> Self {
        const PALETTE: [RGBColor; 8] = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
        ];
        Self {
            label: label.to_string(),
            points: points
                .into_iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect(),
            color: PALETTE[index % PALETTE.len()],
            markers: false,
        }
    }

    fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// A padded range around `values` (a unit-wide one around a single value).
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    (lo - pad, hi + pad)
}

/// An SVG line chart of `series` as a string.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<String, ReportError> {
    let plot_error = |e: &dyn std::fmt::Display| ReportError::Plot {
        plot: title.to_string(),
        message: e.to_string(),
    };
    let (x0, x1) = span(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = span(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_error(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| plot_error(&e))?;
        for s in series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
                .map_err(|e| plot_error(&e))?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            if s.markers {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| plot_error(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| plot_error(&e))?;
        root.present().map_err(|e| plot_error(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write_run(dir: &Path, settings: &str, epochs: &[(f64, f64, f64)], with_steps: bool) {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join("config.toml"),
            format!("[model]\npath = \"m\"\n[data]\ntrain = \"t\"\n{settings}"),
        )
        .unwrap();
        let mut metrics = format!("{}\n", EpochRow::COLUMNS.join(","));
        for (i, (mse, acc, secs)) in epochs.iter().enumerate() {
            let _ = writeln!(
                metrics,
                "{},0.5,{mse},0.1,{},0.25,{acc},0.8,{acc},0.75,{secs},",
                i + 1,
                mse.sqrt()
            );
        }
        fs::write(dir.join("metrics.csv"), metrics).unwrap();
        if with_steps {
            let mut steps = format!("{}\n", StepRow::COLUMNS.join(","));
            for step in 1..=6u32 {
                let epoch = step.div_ceil(3);
                let w_c = 0.5 - 0.05 * f64::from(step);
                let _ = writeln!(
                    steps,
                    "{step},{epoch},1e-5,0.3,0.2,1.1,1.0,0.6,0.4,{},{w_c},0.1,0.5",
                    1.0 - w_c
                );
            }
            fs::write(dir.join("steps.csv"), steps).unwrap();
        }
    }

    #[test]
    fn report_table_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("dao");
        write_run(
            &run,
            "[weighting]\nstrategy = \"dao\"\n",
            &[(0.0425, 0.7, 10.0), (0.018848, 0.7706, 12.0)],
            true,
        );
        let files = write_report(&run).unwrap();
        let md = fs::read_to_string(&files.markdown).unwrap();
        assert!(
            md.contains("| 2 | 0.500000 | 0.018848 | 0.100000 | 0.137288 | 0.250000 | 77.06% | 80.00% | 77.06% | 75.00% | 12.0 |"),
            "{md}"
        );
        assert!(md.contains("| 1 | 0.500000 | 0.042500 |"), "{md}");
        assert!(md.contains("Best epoch by MSE (lowest): **2**"), "{md}");
        assert!(md.contains("Total time 22.0 s"), "{md}");
        let names: Vec<_> = files.plots.iter().map(|p| folder_name(p)).collect();
        assert_eq!(names, ["task_weights.svg", "losses.svg", "metrics.svg"]);
        for plot in &files.plots {
            let svg = fs::read_to_string(plot).unwrap();
            assert!(svg.contains("<svg"), "{}", plot.display());
            assert!(md.contains(&format!("]({})", folder_name(plot))));
        }
        let weights = fs::read_to_string(run.join("task_weights.svg")).unwrap();
        assert!(weights.contains("w_c, mean per epoch"));
    }

    #[test]
    fn per_epoch_mean_of_w_c() {
        // Steps 1–3 in epoch 1 (w_c 0.45, 0.40, 0.35 → mean 0.40 at step 2), 4–6 in epoch 2.
        let steps: Vec<StepRow> = (1..=6u64)
            .map(|s| StepRow {
                step: s,
                epoch: s.div_ceil(3) as u32,
                w_cls: Some(0.5 - 0.05 * s as f64),
                ..StepRow::default()
            })
            .collect();
        let svg = task_weights_plot(&steps).unwrap().unwrap();
        assert!(svg.contains("<svg"));
        assert!(task_weights_plot(&[StepRow::default()]).unwrap().is_none());
    }

    #[test]
    fn comparison_best_epochs_and_relative_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let runs = [
            (
                "c05",
                "[weighting]\nstrategy = \"constant\"\nconstant_w_cls = 0.05\n",
                [(0.03, 0.70, 10.0), (0.025, 0.72, 10.0)],
            ),
            (
                "c10",
                "[weighting]\nstrategy = \"constant\"\nconstant_w_cls = 0.1\n",
                [(0.022326, 0.7611, 10.0), (0.024, 0.75, 10.0)],
            ),
            (
                "dao",
                "[weighting]\nstrategy = \"dao\"\n",
                [(0.02, 0.76, 16.0), (0.018848, 0.7706, 16.4)],
            ),
            (
                "lora8",
                "[weighting]\nstrategy = \"dao\"\n[train]\nfinetune = \"lora\"\n[lora]\nrank = 8\n",
                [(0.03, 0.7, 5.0), (0.029, 0.71, 5.0)],
            ),
        ];
        let mut dirs = Vec::new();
        for (name, settings, epochs) in &runs {
            write_run(&root.join(name), settings, epochs, false);
            dirs.push(root.join(name));
        }
        let cmp = compare(&dirs, &root.join("c10"), None).unwrap();
        assert_eq!(cmp.reference, "c10");
        let best: Vec<u32> = cmp.rows.iter().map(|r| r.best.epoch).collect();
        assert_eq!(best, [2, 1, 2, 2]);
        assert_eq!(cmp.rows[1].best.mse, 0.022326);
        assert_eq!(cmp.rows[0].w_cls, Some(0.05));
        assert_eq!(cmp.rows[2].w_cls, None);
        assert!((cmp.rows[2].relative_time - 1.62).abs() < 1e-12);
        assert!((cmp.rows[2].total_seconds - 32.4).abs() < 1e-12);
        assert_eq!(cmp.rows[3].setting, "DAO + LoRA r=8");
        assert_eq!(cmp.rows[1].setting, "constant w_c = 0.10");

        let by_acc = compare(&dirs, &root.join("c10"), Some(Metric::Accuracy)).unwrap();
        assert_eq!(by_acc.rows[1].best.epoch, 1);
        assert_eq!(by_acc.rows[0].best.epoch, 2);
        // Without --by, each run at the epoch its own best_metric picks (what `evaluate` and
        // its report show): c05 by accuracy, the others by the default, MSE.
        let settings = format!("{}[train]\nbest_metric = \"accuracy\"\n", runs[0].1);
        write_run(
            &dirs[0],
            &settings,
            &[(0.03, 0.73, 10.0), (0.025, 0.72, 10.0)],
            false,
        );
        let own = compare(&dirs, &root.join("c10"), None).unwrap();
        let by: Vec<(Metric, u32)> = own.rows.iter().map(|r| (r.by, r.best.epoch)).collect();
        assert_eq!(
            by,
            [
                (Metric::Accuracy, 1),
                (Metric::Mse, 1),
                (Metric::Mse, 2),
                (Metric::Mse, 2)
            ]
        );
        let md = own.to_markdown();
        assert!(md.contains("best epoch by each run's best_metric"), "{md}");
        assert!(
            md.contains("| c05 | constant w_c = 0.05 | 1 (accuracy) |"),
            "{md}"
        );
        write_run(&dirs[0], runs[0].1, &runs[0].2, false);

        let out = root.join("cmp");
        let files = cmp.write(&out).unwrap();
        let md = fs::read_to_string(&files.markdown).unwrap();
        assert!(
            md.contains("| dao | DAO | 2 | 0.018848 | 0.100000 | 0.137288 | 0.250000 | 77.06% | 80.00% | 77.06% | 75.00% | 2 | 32.4 | 1.62× |"),
            "{md}"
        );
        assert!(
            md.contains("| c10 | constant w_c = 0.10 | 1 | 0.022326 |"),
            "{md}"
        );
        let names: Vec<_> = files.plots.iter().map(|p| folder_name(p)).collect();
        assert_eq!(names, ["wc_mse.svg", "wc_accuracy.svg"]);
        for plot in &files.plots {
            let svg = fs::read_to_string(plot).unwrap();
            assert!(svg.contains("<svg") && svg.contains("constant w_c"));
            assert!(svg.contains("DAO + LoRA r=8"), "every DAO run is a line");
        }
    }

    #[test]
    fn missing_or_empty_runs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_report(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let empty = dir.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            write_report(&empty),
            Err(ReportError::NoEpochs(_))
        ));
    }
}
