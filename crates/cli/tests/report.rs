//! `cli report` as a user runs it: options that only a comparison reads are refused with one
//! run, not ignored.

mod common;

use common::{cli, scratch};

#[test]
fn report_of_one_run_refuses_the_comparison_options() {
    let dir = scratch("report-options");
    let run = dir.join("run");
    let out = dir.join("comparison");
    for (flag, value) in [
        ("--by", "f1"),
        ("--out", out.to_str().unwrap()),
        ("--reference", run.to_str().unwrap()),
    ] {
        let output = cli(&["report", "--run", run.to_str().unwrap(), flag, value]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flag}: {stderr}");
        assert!(stderr.contains("go with --compare"), "{flag}: {stderr}");
    }
    assert!(!out.exists());
}
