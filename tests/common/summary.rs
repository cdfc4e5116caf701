//! The reliability summary: each fault, load and bad-input test records
//! one row as it passes; `scripts/test.sh` prints them as a table after
//! the suite. Rows go to a file because every test target is a process of
//! its own.

use std::io::Write;
use std::path::PathBuf;

/// Where the rows gather; `scripts/test.sh` empties it before the suite.
pub fn summary_file() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reliability-summary.tsv")
}

/// Records one passed scenario: what was done, under what load and
/// fault, what was seen, and how many bytes were checked to be intact.
pub fn record(scenario: &str, load: &str, fault: &str, outcome: &str, bytes_verified: u64) {
    let row = [scenario, load, fault, outcome, &bytes_verified.to_string()]
        .map(|field| field.replace(['\t', '\n'], " "))
        .join("\t");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(summary_file())
        .expect("the summary file opens");
    // One write per row: appends from concurrent tests do not interleave.
    file.write_all(format!("{row}\n").as_bytes())
        .expect("the summary row is written");
}
