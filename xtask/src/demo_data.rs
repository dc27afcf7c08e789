//! `cargo xtask demo-data`: a deterministic, clearly synthetic data set of templated financial
//! headlines with sentiment scores, for trying the pipeline without real data.
//!
//! Every row is JSON Lines with `id` (`synthetic:<n>:<target>`), `text`, `target`, `score`
//! (in [-1, 1], 3 decimals) and `source: "synthetic"`. Scores come from the template's
//! polarity plus seeded noise, so the five classes are all present; some headlines name two
//! companies with opposite scores, as real aspect-level data does. Not real news: do not
//! report results on it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

const COMPANIES: &[&str] = &[
    "Acme Corp",
    "Borealis Bank",
    "Cobalt Mining",
    "Delta Freight",
    "Ember Energy",
    "Fjord Telecom",
    "Granite Insurance",
    "Helix Pharma",
    "Ion Motors",
    "Juniper Retail",
    "Kestrel Airlines",
    "Lumen Software",
    "Meridian Foods",
    "Nimbus Cloud",
    "Orchid Hotels",
    "Pioneer Steel",
    "Quartz Semiconductors",
    "Riverstone Capital",
    "Solace Health",
    "Tundra Oil",
];

const QUARTERS: &[&str] = &[
    "first-quarter",
    "second-quarter",
    "third-quarter",
    "fourth-quarter",
];
const PERCENTS: &[&str] = &["3%", "5%", "8%", "12%", "15%", "20%"];

/// One-company templates: (text with `{c}`, `{q}`, `{p}` slots, score range).
const SINGLE: &[(&str, f64, f64)] = &[
    ("{c} shares soar {p} after record {q} profit", 0.6, 0.95),
    ("{c} beats estimates and lifts dividend by {p}", 0.55, 0.9),
    ("{c} raises full-year guidance", 0.2, 0.5),
    ("{c} {q} revenue edges up {p}", 0.1, 0.4),
    ("{c} signs supply deal with a European partner", 0.06, 0.3),
    ("{c} to report {q} results next week", -0.04, 0.04),
    ("{c} names new chief financial officer", -0.04, 0.04),
    ("{c} shares little changed ahead of {q} update", -0.04, 0.04),
    ("{c} {q} sales slip {p}", -0.4, -0.1),
    ("{c} misses analyst estimates", -0.45, -0.15),
    ("{c} cuts outlook as costs rise", -0.5, -0.2),
    (
        "{c} shares plunge {p} as regulator opens probe",
        -0.95,
        -0.6,
    ),
    ("{c} warns of {q} loss and suspends dividend", -0.9, -0.55),
];

/// Two-company templates: the first company gets the first range, the second the second.
const PAIR: &[(&str, f64, f64, f64, f64)] = &[
    ("{a} wins market share from {b}", 0.3, 0.7, -0.6, -0.2),
    (
        "{a} outperforms {b} in {q} deliveries",
        0.2,
        0.6,
        -0.4,
        -0.1,
    ),
    ("{a} drops bid for {b}", -0.5, -0.1, -0.7, -0.3),
    (
        "{a} agrees to buy {b} at a {p} premium",
        -0.1,
        0.2,
        0.5,
        0.9,
    ),
];

/// Writes `rows` synthetic rows to the JSON Lines file `out` (parent folders created); the
/// same `seed` always gives the same file.
pub fn generate(out: &Path, rows: usize, seed: u64) -> std::io::Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = BufWriter::new(File::create(out)?);
    write_rows(&mut file, rows, seed)?;
    file.flush()
}

fn write_rows(out: &mut impl Write, rows: usize, seed: u64) -> std::io::Result<()> {
    let mut rng = SplitMix64(seed);
    let mut written = 0;
    while written < rows {
        let quarter = QUARTERS[rng.below(QUARTERS.len())];
        let percent = PERCENTS[rng.below(PERCENTS.len())];
        let fill = |template: &str, a: &str, b: &str| {
            template
                .replace("{c}", a)
                .replace("{a}", a)
                .replace("{b}", b)
                .replace("{q}", quarter)
                .replace("{p}", percent)
        };
        // About one headline in five names two companies.
        if rng.below(5) == 0 && rows - written >= 2 {
            let (template, lo_a, hi_a, lo_b, hi_b) = PAIR[rng.below(PAIR.len())];
            let a = COMPANIES[rng.below(COMPANIES.len())];
            let mut b = COMPANIES[rng.below(COMPANIES.len())];
            if a == b {
                b = COMPANIES
                    [(COMPANIES.iter().position(|c| *c == a).unwrap_or(0) + 1) % COMPANIES.len()];
            }
            let text = fill(template, a, b);
            let score_a = rng.uniform(lo_a, hi_a);
            let score_b = rng.uniform(lo_b, hi_b);
            write_row(out, written, &text, a, score_a)?;
            write_row(out, written + 1, &text, b, score_b)?;
            written += 2;
        } else {
            let (template, lo, hi) = SINGLE[rng.below(SINGLE.len())];
            let company = COMPANIES[rng.below(COMPANIES.len())];
            let text = fill(template, company, "");
            let score = rng.uniform(lo, hi);
            write_row(out, written, &text, company, score)?;
            written += 1;
        }
    }
    Ok(())
}

fn write_row(
    out: &mut impl Write,
    n: usize,
    text: &str,
    target: &str,
    score: f64,
) -> std::io::Result<()> {
    let mut score = (score.clamp(-1.0, 1.0) * 1000.0).round() / 1000.0;
    if score == 0.0 {
        score = 0.0; // no "-0.000"
    }
    writeln!(
        out,
        "{{\"id\": \"synthetic:{n}:{}\", \"text\": \"{}\", \"target\": \"{}\", \"score\": {score:.3}, \"source\": \"synthetic\"}}",
        json_escape(target),
        json_escape(text),
        json_escape(target),
    )
}

fn json_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            c if (c as u32) < 0x20 => escaped.push_str(&format!("\\u{:04x}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped
}

/// SplitMix64: a tiny seeded generator, the same on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n`; the modulo bias is negligible for these small `n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rows: usize, seed: u64) -> String {
        let mut bytes = Vec::new();
        write_rows(&mut bytes, rows, seed).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    fn score_of(line: &str) -> f64 {
        let at = line.find("\"score\": ").unwrap() + 9;
        line[at..].split(',').next().unwrap().parse().unwrap()
    }

    #[test]
    fn deterministic_row_count_and_labelled_synthetic() {
        let a = text(500, 42);
        assert_eq!(a, text(500, 42));
        assert_ne!(a, text(500, 43));
        assert_eq!(a.lines().count(), 500);
        assert!(a
            .lines()
            .all(|l| l.ends_with("\"source\": \"synthetic\"}")
                && l.starts_with("{\"id\": \"synthetic:")));
        assert_eq!(text(1, 7).lines().count(), 1);
        assert_eq!(text(0, 7), "");
    }

    #[test]
    fn scores_in_range_every_class_present_and_repeated_texts() {
        let t = text(1000, 42);
        let mut classes = [0usize; 5];
        for line in t.lines() {
            let y = score_of(line) as f32;
            assert!((-1.0..=1.0).contains(&y), "{line}");
            let class = if y > 0.5 {
                4
            } else if y > 0.049 {
                3
            } else if y >= -0.049 {
                2
            } else if y >= -0.5 {
                1
            } else {
                0
            };
            classes[class] += 1;
        }
        assert!(classes.iter().all(|&c| c >= 50), "{classes:?}");
        let texts: std::collections::HashSet<&str> = t
            .lines()
            .map(|l| {
                l.split("\"text\": ")
                    .nth(1)
                    .unwrap()
                    .split("\", ")
                    .next()
                    .unwrap()
            })
            .collect();
        assert!(
            texts.len() < 1000,
            "pair templates repeat a text with two targets"
        );
    }

    #[test]
    fn writes_a_file() {
        let dir = std::env::temp_dir().join(format!("demo-data-{}", std::process::id()));
        let path = dir.join("sub/demo.jsonl");
        generate(&path, 20, 1).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text(20, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn escapes_quotes_and_controls() {
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
