//! `fq-server`: the township and county server of the fq case ledger, and the county CA tool.
//!
//! Exit codes: 0 ok (also after a graceful shutdown on SIGTERM/SIGINT), 1 failure, 2 bad usage
//! or bad input.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fq_core::county::County;
use fq_core::lang::Lang;
use fq_core::ledger::{LedgerError, Tier};
use fq_core::roster::Roster;
use fq_sync_server::ca::{
    AdminCode, CA_CERT_FILE, CertificateAuthority, GrantRole, InitError, IssueError, OpenError, POLICY_FILE,
    PolicyIssueError, RevokeError, SubjectId,
};
use fq_sync_server::config::{ConfigError, FileConfig, ServerConfig};
use fq_sync_server::server::{self, ServeError};
use fq_sync_server::status::{self, Status};
use serde_json::json;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fq-server: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Township and county sync server for the fq case ledger.
#[derive(Debug, Parser)]
#[command(name = "fq-server", version)]
struct Cli {
    /// Print what was done as one JSON object instead of a sentence.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a township or county sync server (until SIGTERM or SIGINT).
    Run(RunArgs),
    /// Show a server replica's identity, counts, peers and recent refusals (read-only; works
    /// while the server runs).
    Status(StatusArgs),
    /// Run the county's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TierArg {
    County,
    Township,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One line of text per event.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// county | township
    #[arg(long, value_enum)]
    tier: TierArg,
    /// UDP address to listen on, e.g. 0.0.0.0:4433.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Directory of the server's replica (ledger.db is created there on first run).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The server's bundle (from `fq-server ca issue --role county|township`).
    #[arg(long, value_name = "BUNDLE_FILE")]
    bundle: PathBuf,
    /// The county server's address (township servers only).
    #[arg(long, value_name = "ADDR")]
    upstream: Option<SocketAddr>,
    /// Settings file, TOML or JSON: sync_interval_secs, revocations_file, revocation_poll_secs,
    /// keep_alive_secs, idle_timeout_secs, ack_timeout_secs (see docs/OPERATIONS.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format (filter with RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Directory of the server's replica.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the county CA (key, certificate, empty ledger and revocation list).
    Init(InitArgs),
    /// Issue a certificate bundle for a device or server.
    Issue(IssueArgs),
    /// Revoke every certificate issued to an id.
    Revoke(RevokeArgs),
    /// Sign the county policy (deadlines, follow-ups, routing) and roster with the next version.
    Policy(PolicyArgs),
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// The CA directory.
    #[arg(long, value_name = "CA_DIR")]
    ca: PathBuf,
    /// The policy, TOML (keys: [deadlines] village/township/county, [follow_up] days,
    /// [routing] high_risk_to_township/flags_to_township/flag_overdue_village/township_categories).
    #[arg(long, value_name = "POLICY_TOML")]
    file: PathBuf,
    /// The county's roster: a county file with staff ids (like fixtures/county-532924.json).
    /// Without it the roster of the CA's newest policy is kept.
    #[arg(long, value_name = "COUNTY_JSON")]
    roster: Option<PathBuf>,
    /// Also write the signed policy here (it is always kept as CA_DIR/policy.json).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Directory for the CA (created if missing; must not already hold a CA).
    #[arg(long, value_name = "CA_DIR")]
    dir: PathBuf,
    /// The county's 6-digit administrative code, e.g. 532924.
    #[arg(long)]
    county: AdminCode,
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// The CA directory.
    #[arg(long, value_name = "CA_DIR")]
    ca: PathBuf,
    /// Subject id of the holder (device or server), e.g. d07: 1-64 of A-Z a-z 0-9 . _ -
    #[arg(long)]
    id: SubjectId,
    /// county | township | mediator | grid-worker | township-officer | county-admin
    #[arg(long, value_parser = parse_role)]
    role: GrantRole,
    /// Administrative code the role applies to: 6 digits for county roles, 9 for township
    /// roles, 12 for mediators and grid workers.
    #[arg(long)]
    scope: AdminCode,
    /// Bundle file to write (mode 0600; must not exist).
    #[arg(long, value_name = "BUNDLE_FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The CA directory.
    #[arg(long, value_name = "CA_DIR")]
    ca: PathBuf,
    /// Subject id whose certificates are revoked.
    #[arg(long)]
    id: SubjectId,
}

/// Input the CLI itself refuses (as opposed to the library's errors, which classify
/// themselves with `is_bad_input`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

/// Parses `--role`, naming every valid role when the value is not one.
fn parse_role(text: &str) -> Result<GrantRole, String> {
    GrantRole::parse(text).map_err(|err| {
        let codes: Vec<&str> = GrantRole::ALL.iter().map(|role| role.code()).collect();
        format!("{err}: expected {}", codes.join(", "))
    })
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let now = SystemTime::now();
    match cli.command {
        Command::Run(args) => run_server(args),
        Command::Status(args) => show_status(&args, cli.json),
        Command::Ca(CaCommand::Init(args)) => ca_init(&args, now, cli.json),
        Command::Ca(CaCommand::Issue(args)) => ca_issue(&args, now, cli.json),
        Command::Ca(CaCommand::Revoke(args)) => ca_revoke(&args, now, cli.json),
        Command::Ca(CaCommand::Policy(args)) => ca_policy(&args, now, cli.json),
    }
}

/// Largest policy or county file read by `ca policy`.
const MAX_INPUT_FILE_BYTES: u64 = 16 * 1024 * 1024;

fn read_input(path: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > MAX_INPUT_FILE_BYTES {
        return Err(BadInput(format!("{} is larger than any policy or county file", path.display())).into());
    }
    std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("cannot read {} as UTF-8 text: {e}", path.display())).into())
}

fn ca_policy(args: &PolicyArgs, now: SystemTime, json: bool) -> anyhow::Result<()> {
    let text = read_input(&args.file)?;
    let roster = match &args.roster {
        Some(path) => {
            let county = County::load(&read_input(path)?)
                .map_err(|e| BadInput(format!("{} is not a county file: {e}", path.display())))?;
            let roster = Roster::from_county(&county)
                .map_err(|e| BadInput(format!("the roster in {} is inconsistent: {e}", path.display())))?;
            Some((roster.staff().to_vec(), fq_core::policy::areas_of(&county)))
        }
        None => None,
    };
    let ca = open_ca(&args.ca)?;
    let signed = ca.sign_policy(&text, roster, now).with_context(|| format!("cannot sign {}", args.file.display()))?;
    let kept = args.ca.join(POLICY_FILE);
    if let Some(out) = &args.out {
        let bytes = signed.to_json().map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
    }
    let human = match Lang::from_env() {
        Lang::Zh => format!(
            "已签发县级政策第 {} 版（县 {}，花名册 {} 人），保存在 {}",
            signed.version(),
            signed.county(),
            signed.staff().len(),
            kept.display()
        ),
        Lang::En => format!(
            "signed county policy version {} for county {} ({} staff in the roster) to {}",
            signed.version(),
            signed.county(),
            signed.staff().len(),
            kept.display()
        ),
    };
    report(
        json,
        &json!({
            "command": "ca policy",
            "county": signed.county(),
            "version": signed.version(),
            "staff": signed.staff().len(),
            "policy_file": kept,
            "out": args.out,
        }),
        &human,
    )
}

fn ca_init(args: &InitArgs, now: SystemTime, json: bool) -> anyhow::Result<()> {
    let ca = CertificateAuthority::init(&args.dir, &args.county, now)
        .with_context(|| format!("cannot create ca in {}", args.dir.display()))?;
    let list = ca.revocations().context("cannot read the new revocation list")?;
    report(
        json,
        &json!({
            "command": "ca init",
            "dir": args.dir,
            "county": ca.county(),
            "ca_certificate": args.dir.join(CA_CERT_FILE),
            "revocation_version": list.version(),
        }),
        &format!("created ca for county {} in {}", ca.county(), args.dir.display()),
    )
}

fn ca_issue(args: &IssueArgs, now: SystemTime, json: bool) -> anyhow::Result<()> {
    if args.out.exists() {
        return Err(BadInput(format!("{} already exists; refusing to overwrite a bundle", args.out.display())).into());
    }
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(BadInput(format!("directory of {} does not exist", args.out.display())).into());
    }
    let ca = open_ca(&args.ca)?;
    let bundle = ca
        .issue(&args.id, args.role, &args.scope, now)
        .with_context(|| format!("cannot issue a certificate for {}", args.id))?;
    bundle.save(&args.out).with_context(|| format!("certificate {} was recorded but not saved", bundle.serial()))?;
    report(
        json,
        &json!({
            "command": "ca issue",
            "id": bundle.id(),
            "role": bundle.role(),
            "scope": bundle.scope(),
            "county": bundle.county(),
            "serial": bundle.serial(),
            "bundle": args.out,
            "revocation_version": bundle.revocations().version(),
        }),
        &format!(
            "issued {} certificate for {} over {} (serial {}) to {}",
            bundle.role(),
            bundle.id(),
            bundle.scope(),
            bundle.serial(),
            args.out.display()
        ),
    )
}

fn ca_revoke(args: &RevokeArgs, now: SystemTime, json: bool) -> anyhow::Result<()> {
    let ca = open_ca(&args.ca)?;
    let revocation = ca.revoke(&args.id, now).with_context(|| format!("cannot revoke {}", args.id))?;
    let version = revocation.list.version();
    let human = if revocation.newly_revoked.is_empty() {
        format!("{} was already revoked; revocation list stays at version {version}", args.id)
    } else {
        let serials: Vec<String> = revocation.newly_revoked.iter().map(ToString::to_string).collect();
        format!(
            "revoked {} certificate(s) of {} ({}); revocation list is now version {version}",
            serials.len(),
            args.id,
            serials.join(", ")
        )
    };
    report(
        json,
        &json!({
            "command": "ca revoke",
            "id": args.id,
            "revoked": revocation.newly_revoked,
            "changed": !revocation.newly_revoked.is_empty(),
            "revocation_version": version,
        }),
        &human,
    )
}

fn run_server(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format)?;
    let tier = match args.tier {
        TierArg::County => Tier::County,
        TierArg::Township => Tier::Township,
    };
    let mut config = ServerConfig::new(tier, args.listen, args.data_dir, args.bundle);
    config.upstream = args.upstream;
    if let Some(path) = &args.config {
        config.apply(&FileConfig::load(path)?);
    }
    if tier == Tier::Township && config.upstream.is_none() {
        tracing::warn!("no --upstream: this township server will not sync with the county");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let server = server::bind(config)?;
        server.run(shutdown).await.map_err(anyhow::Error::from)
    })?;
    Ok(())
}

/// Registers for SIGTERM and SIGINT now, and returns a future that completes
/// on either. Registering before the server binds matters: a SIGTERM that
/// arrives right after "listening" must shut down gracefully, not kill the
/// process with the default action.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Human => builder.try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn show_status(args: &StatusArgs, json: bool) -> anyhow::Result<()> {
    let status =
        status::read(&args.data_dir).with_context(|| format!("server data directory {}", args.data_dir.display()))?;
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &status).context("cannot write json output")?;
        writeln!(out).context("cannot write output")?;
    } else {
        write_status(&mut out, &status).context("cannot write output")?;
    }
    out.flush().context("cannot write output")
}

fn write_status(out: &mut impl Write, s: &Status) -> io::Result<()> {
    let id = &s.identity;
    writeln!(out, "{} server {} ({}), replica {}", id.tier.code(), id.name, id.scope, id.replica)?;
    let c = &s.counts;
    writeln!(
        out,
        "cases {}, changes {} (log head {}), pending {}, audit records {}",
        c.cases, c.changes, s.log_head, c.pending, c.audit
    )?;
    if s.peers.is_empty() {
        writeln!(out, "no peer has synced yet")?;
    } else {
        writeln!(out, "peers:")?;
        for p in &s.peers {
            let when = p.last_sync.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
            writeln!(
                out,
                "  {} {} {}: holds their log to {}, they acknowledged ours to {}, last sync {when}",
                p.tier, p.scope, p.replica, p.their_seq, p.acked_seq
            )?;
        }
    }
    writeln!(out, "county policy version {}", s.policy_version)?;
    match &s.newest_report {
        Some(r) => writeln!(
            out,
            "newest monthly report: {} ({}, {}, {})",
            r.month,
            r.html.display(),
            r.xlsx.display(),
            r.json.display()
        )?,
        None => writeln!(out, "no monthly report written yet")?,
    }
    if !s.refusals.is_empty() {
        writeln!(out, "recent refusals:")?;
        for r in &s.refusals {
            let case = r.case.map(|c| c.to_string()).unwrap_or_default();
            let peer = r.peer.as_deref().unwrap_or("-");
            writeln!(out, "  {} {} case {case} from {peer}: {}", r.at.to_rfc3339(), r.kind, r.detail)?;
        }
    }
    Ok(())
}

fn open_ca(dir: &Path) -> anyhow::Result<CertificateAuthority> {
    CertificateAuthority::open(dir).with_context(|| format!("ca directory {}", dir.display()))
}

fn report(json: bool, value: &serde_json::Value, human: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, value).context("cannot write json output")?;
        writeln!(out).context("cannot write output")?;
    } else {
        writeln!(out, "{human}").context("cannot write output")?;
    }
    out.flush().context("cannot write output")
}

/// 2 when the operator's input was at fault, 1 for any other failure.
fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|cause| {
        cause.is::<BadInput>()
            || cause.downcast_ref::<OpenError>().is_some_and(OpenError::is_bad_input)
            || cause.downcast_ref::<InitError>().is_some_and(InitError::is_bad_input)
            || cause.downcast_ref::<IssueError>().is_some_and(IssueError::is_bad_input)
            || cause.downcast_ref::<RevokeError>().is_some_and(RevokeError::is_bad_input)
            || cause.downcast_ref::<PolicyIssueError>().is_some_and(PolicyIssueError::is_bad_input)
            || cause.downcast_ref::<ServeError>().is_some_and(ServeError::is_bad_input)
            || cause.is::<ConfigError>()
            || cause.downcast_ref::<LedgerError>().is_some_and(|e| matches!(e, LedgerError::NotInitialized))
    });
    if bad_input { 2 } else { 1 }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}
