//! The fuzz targets' properties (fuzz/fuzz_targets/checks.rs) on stable Rust, in every test
//! run: seeded, deterministic mutations of the real inputs in fuzz/corpus/ fed to the SSE
//! parser, the OpenAI and Anthropic body parsers, the exchange-record reader and the config
//! loader. `cargo fuzz` explores further; this keeps what it established from regressing.

#[allow(dead_code)] // each test uses one of the checks
#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Fragments that matter to these formats, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"\n\n",
    b"\r\n",
    b"\r",
    b"\n",
    b"data: ",
    b"data:",
    b"event: ",
    b"id: ",
    b"retry: ",
    b": ",
    b"[DONE]",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud83d",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\xff",
    b"\xc3",
    b"\xf0\x9f",
    b"\0",
    b"\"content\":",
    b"\"choices\":[",
    b"\"delta\":{",
    b"\"type\":\"content_block_delta\"",
    b"\"index\":999999999",
    b"[[listener]]\n",
    b"[admin]\n",
    b" = ",
    b"\"\"\"",
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn mutate(rng: &mut StdRng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=v.len());
        match rng.random_range(0..8) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            2 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            3 => {
                let end = (at + rng.random_range(1..64)).min(v.len());
                v.drain(at..end);
            }
            4 => {
                let end = (at + rng.random_range(1..256)).min(v.len());
                let dup = v[at..end].to_vec();
                v.splice(at..at, dup);
            }
            5 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let end = (from + rng.random_range(1..512)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            6 => v.truncate(at),
            _ => {
                let n = rng.random_range(1..16);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(at..at, junk);
            }
        }
    }
    v
}

/// Runs `check` on every seed and on `cases` mutations, reporting the input that failed.
fn run(target: &str, check: fn(&[u8]), cases: usize) {
    let seeds = seeds(target);
    let mut rng = StdRng::seed_from_u64(0x005e_47a9);
    let mut inputs: Vec<Vec<u8>> = seeds.clone();
    for _ in 0..cases {
        let base = &seeds[rng.random_range(0..seeds.len())];
        let other = &seeds[rng.random_range(0..seeds.len())];
        inputs.push(mutate(&mut rng, base, other));
    }
    for (i, input) in inputs.iter().enumerate() {
        if std::panic::catch_unwind(|| check(input)).is_err() {
            let shown: String = input
                .escape_ascii()
                .to_string()
                .chars()
                .take(2000)
                .collect();
            panic!("{target}: case {i} failed on input (escaped, at most 2000 chars): {shown}");
        }
    }
}

#[test]
fn the_sse_parser_survives_mutated_streams_and_splitting_never_changes_the_events() {
    run("sse", checks::sse, 20_000);
}

#[test]
fn the_body_parsers_survive_mutated_bodies_and_streamed_equals_whole() {
    run("bodies", checks::bodies, 20_000);
}

#[test]
fn the_record_reader_accounts_for_every_line_of_a_mutated_capture() {
    run("record", checks::record, 5_000);
}

#[test]
fn the_config_loader_answers_every_mutated_file_with_a_config_or_named_issues() {
    run("config", checks::config, 5_000);
}
