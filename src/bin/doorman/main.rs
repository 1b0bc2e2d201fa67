//! The `doorman` binary: command line, logging, runtime and signals. Everything else is in
//! the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use doorman::compare::CompareOptions;
use doorman::config;
use doorman::demo::{self, DemoOptions};
use doorman::reload::Reloader;
use doorman::server::{self, Listeners};
use doorman::snapshot::Snapshot;
use tracing::{error, info};

mod process;
mod reload_command;

use process::{
    PidFile, follow_pid_file, reload_on_sighup, reopen_on_sigusr1, shutdown_on, shutdown_signal,
};

/// jemalloc, as Pingora and linkerd2-proxy ship: less memory per idle connection and fewer
/// instructions per request than glibc's malloc, and no per-thread arenas growing under
/// load (docs/benchmarks.md, "What the design choices measured", has the figures).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "doorman",
    version,
    about = "A layer-7 reverse proxy and load balancer"
)]
struct Cli {
    /// The diagnostic log's format (its level: `[log] level`, or RUST_LOG, which wins). The
    /// access log is configured in `[log]`.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short, default_value = "config/proxy.toml")]
        config: PathBuf,
    },
    /// Validate a config file (like `nginx -t`): exit 0 when valid, else print every error.
    Check {
        /// The file to check (same as --config).
        path: Option<PathBuf>,
        #[arg(long, short, conflicts_with = "path")]
        config: Option<PathBuf>,
    },
    /// Revoke a token (by jti) or every token of a subject. Writes Redis directly when
    /// `[store] redis_url` or `redis_sentinel` is set (to the master); otherwise asks the
    /// running instance's admin listener.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "sub"])))]
    Revoke {
        #[arg(long, short, default_value = "config/proxy.toml")]
        config: PathBuf,
        /// The token's jti claim.
        #[arg(long, requires = "expires_at")]
        jti: Option<String>,
        /// The token's exp (unix seconds): the revocation is kept until then (plus leeway).
        #[arg(long)]
        expires_at: Option<u64>,
        /// Revoke every token of this subject (sub claim) issued at or before --before.
        #[arg(long, conflicts_with_all = ["jti", "expires_at"])]
        sub: Option<String>,
        /// Unix seconds (default: now).
        #[arg(long, requires = "sub")]
        before: Option<u64>,
    },
    /// Reload a running instance's configuration: check the file, send SIGHUP to the pid in
    /// the pid file, and report the outcome the instance gives on its admin listener.
    Reload {
        #[arg(long, short, default_value = "config/proxy.toml")]
        config: PathBuf,
        /// The running instance's pid file (default: `[server] pid_file` of the config).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Zero-setup first run: three demo replicas, an in-memory certificate, the proxy.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Where to write the demo CA certificate for curl --cacert.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// Round robin vs consistent hash on local replicas: throughput, latency, load spread,
    /// keys remapped on scale-out, a replica killed mid-run. Writes report.md and SVG charts.
    Compare {
        /// Take the first upstream group's tuning (virtual_nodes, hash_balance_factor,
        /// retries, health, timeouts) from this file; its servers are replaced.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Requests per run.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Distinct keys (sessions) in the workload.
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        #[arg(long, default_value_t = 4)]
        replicas: usize,
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Requests each replica serves at once.
        #[arg(long, default_value_t = 2)]
        replica_workers: usize,
        /// How long a replica takes per request (e.g. 2ms, 0s).
        #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
        service_time: std::time::Duration,
        /// Seed of the key sequences.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where report.md, load-spread.svg and failover.svg are written.
        #[arg(long, default_value = "target/compare")]
        out: PathBuf,
    },
    /// Print a shell completion script to stdout (e.g. `doorman completions bash >
    /// /usr/share/bash-completion/completions/doorman`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout (e.g. `doorman manpage > doorman.1`).
    Manpage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // compare starts many short-lived proxies: only their errors belong on the terminal.
    let quiet = matches!(cli.command, Command::Compare { .. });
    // Held to the end of main: dropping it flushes what the writer thread still holds.
    let _log_writer = init_logging(cli.log_format, if quiet { "error" } else { "info" });
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { path, config } => check(
            path.or(config)
                .unwrap_or_else(|| "config/proxy.toml".into()),
        ),
        Command::Revoke {
            config,
            jti,
            expires_at,
            sub,
            before,
        } => {
            let what = match (jti, sub) {
                (Some(jti), _) => doorman::store::Revoke::Jti {
                    jti,
                    expires_at: expires_at.unwrap_or_default(),
                },
                (None, Some(sub)) => doorman::store::Revoke::Subject {
                    sub,
                    before: before.unwrap_or_else(doorman::auth::unix_now),
                },
                (None, None) => unreachable!("clap requires --jti or --sub"),
            };
            revoke(config, what)
        }
        Command::Demo {
            listen,
            admin_listen,
            ca_dir,
        } => {
            let opts = DemoOptions {
                listen,
                admin_listen,
                ca_dir: ca_dir.unwrap_or_else(|| std::env::temp_dir().join("doorman-demo")),
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(format!("cannot start the runtime: {e}")),
            };
            if let Err(e) = start_logs(&config::LogSettings::default()) {
                return fail(e);
            }
            let result = rt.block_on(demo::run(opts, shutdown_signal()));
            doorman::logging::flush(LOG_FLUSH);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Reload { config, pid_file } => reload_command::reload(config, pid_file),
        Command::Compare {
            config,
            requests,
            keys,
            replicas,
            concurrency,
            replica_workers,
            service_time,
            seed,
            out,
        } => compare(CompareOptions {
            config,
            requests,
            keys,
            replicas,
            concurrency,
            replica_workers,
            service_time,
            seed,
            out,
        }),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "doorman", &mut script);
            print_out(&script)
        }
        Command::Manpage => match manpage() {
            Ok(page) => print_out(&page),
            Err(e) => fail(format!("cannot render the man page: {e}")),
        },
    }
}

fn compare(opts: CompareOptions) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let out = opts.out.clone();
    match rt.block_on(doorman::compare::run(opts)) {
        Ok(_) => {
            println!("report written to {}", out.join("report.md").display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("compare failed: {e}")),
    }
}

/// The diagnostic log goes to stderr through a writer thread: a request never waits on the
/// terminal or a slow pipe (lines beyond the writer's buffer are dropped rather than block).
/// Colours only on a terminal. Its level is `RUST_LOG` when set, else `default_filter` until
/// a config's `[log] level` replaces it (at start and on every reload that changes it). The
/// access log has a writer of its own (`doorman::logging`).
fn init_logging(
    format: LogFormat,
    default_filter: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let from_env = EnvFilter::try_from_default_env().ok();
    let overridden = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(default_filter));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    if !overridden {
        doorman::logging::set_level_hook(move |level| {
            let _ = handle.reload(EnvFilter::new(level));
        });
    }
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let dropped = writer.error_counter();
    doorman::metrics::set_log_dropped_source(move || {
        dropped.dropped_lines() as u64 + doorman::logging::dropped_lines()
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    guard
}

/// Start the access log's writer for `settings` and apply its level.
fn start_logs(settings: &config::LogSettings) -> Result<(), String> {
    doorman::logging::apply_level(&settings.level);
    doorman::logging::start(settings).map_err(|e| match &settings.access {
        config::AccessTarget::File(p) => format!("cannot open the access log {}: {e}", p.display()),
        _ => format!("cannot start the access log: {e}"),
    })
}

/// How long the access log may take to write out its last lines when doorman stops.
const LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

fn fail(msg: String) -> ExitCode {
    error!("{msg}");
    ExitCode::FAILURE
}

fn check(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(c) => {
            // The admin listener can reload, revoke and show the whole topology: reachable
            // beyond this host with no token, anyone on the network may use it.
            if !c.server.admin_listen.ip().is_loopback() && c.server.admin_token.is_none() {
                eprintln!(
                    "{}: warning: server.admin_listen = {} is not a loopback address and server.admin_token_env is not set: anyone who can reach it may reload, revoke and read /status",
                    path.display(),
                    c.server.admin_listen
                );
            }
            println!(
                "{}: configuration is valid ({} certificate(s), {} upstream group(s), {} route(s))",
                path.display(),
                c.tls.len(),
                c.upstreams.len(),
                c.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: configuration check failed with {} error(s)",
                path.display(),
                e.errors.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// Load a config, printing every error when it is invalid.
fn load(path: &std::path::Path) -> Option<config::Config> {
    config::load(path).map_err(|e| eprintln!("{e}")).ok()
}

fn revoke(path: PathBuf, what: doorman::store::Revoke) -> ExitCode {
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let leeway = config
        .auth
        .as_ref()
        .map_or(config::defaults::LEEWAY, |a| a.leeway);
    let records = doorman::store::Records::new(&config.revocation, leeway);
    if let Err(why) = what.check(doorman::auth::unix_now(), leeway.as_secs()) {
        return fail(format!("revocation refused: {why}"));
    }
    let result = rt.block_on(async {
        match &config.store.redis {
            Some(_) => doorman::store::write_to_redis(&config.store, &records, &what).await,
            None => doorman::admin::post_revocation(
                config.server.admin_listen,
                config.server.admin_token.as_ref(),
                &what,
            )
            .await
            .map(|()| None),
        }
    });
    match result {
        Ok(replicated) => {
            match replicated {
                None => println!("revoked: {what:?}"),
                Some(true) => println!("revoked: {what:?} (replicated)"),
                // Written, but a failover before a replica copies it could lose it.
                Some(false) => println!(
                    "revoked: {what:?} (NOT replicated: no replica acknowledged it within [store] timeout)"
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("revocation failed: {e}")),
    }
}

fn run(path: PathBuf) -> ExitCode {
    // The text is kept for the config hash reported on the admin listener.
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: cannot read file: {e}", path.display())),
    };
    let config = match config::parse(&text, &path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // One worker: a current-thread runtime, so the accept loop, the connections and the
    // pools share one thread with no cross-thread wakeups or work-stealing (as one nginx
    // worker). More: a multi-threaded runtime with that many workers.
    let mut builder = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.server.workers);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    info!(config = %path.display(), workers = config.server.workers, "starting doorman");
    let pid_file = PidFile::default();
    let result = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // Every handler before the pid file names this process: from then on a SIGHUP must
        // reload it (its default action would end it).
        let (Ok(hup), Ok(term), Ok(int), Ok(usr1)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        ) else {
            return Err("cannot install the signal handlers".to_string());
        };
        start_logs(&config.log)?;
        tokio::spawn(reopen_on_sigusr1(usr1));
        let listeners = Listeners::bind(&config.server)
            .await
            .map_err(|e| e.to_string())?;
        let snapshot = Snapshot::build(&config)?.into_shared();
        pid_file.set(config.server.pid_file.as_deref())?;
        doorman::service_notify::ready();
        let (reloader, requests) = Reloader::new(&path, &text);
        tokio::spawn(reload_on_sighup(hup, reloader.clone()));
        tokio::spawn(follow_pid_file(
            reloader.applied(),
            snapshot.clone(),
            pid_file.clone(),
        ));
        server::run_reloadable(
            listeners,
            snapshot,
            shutdown_on(term, int, Some(pid_file.clone())),
            Some((reloader, requests)),
        )
        .await
        .map_err(|e| e.to_string())
    });
    pid_file.remove();
    if !doorman::logging::flush(LOG_FLUSH) {
        error!("the access log's last lines were not written within {LOG_FLUSH:?}");
    }
    match result {
        Ok(()) => {
            info!("doorman stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Write generated text to stdout; a closed pipe (`| head`) is an error, not a panic.
fn print_out(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("cannot write to stdout: {e}")),
    }
}

/// doorman(1) as one page: clap_mangen's top-level page, then a section per subcommand
/// with its synopsis and options (the top-level page alone only names them).
fn manpage() -> std::io::Result<Vec<u8>> {
    let mut cli = Cli::command();
    cli.build();
    let mut page = Vec::new();
    let top = clap_mangen::Man::new(cli.clone());
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    top.render_subcommands_section(&mut page)?;
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let man = clap_mangen::Man::new(sub.clone());
        let mut part = Vec::new();
        man.render_description_section(&mut part)?;
        man.render_synopsis_section(&mut part)?;
        man.render_options_section(&mut part)?;
        // Its own sections become subsections of one "DOORMAN-<NAME>" section.
        let part = String::from_utf8_lossy(&part)
            .replace(".SH DESCRIPTION\n", "")
            .replace(".SH ", ".SS ");
        page.extend_from_slice(
            format!(".SH \"DOORMAN\\-{}\"\n", sub.get_name().to_uppercase()).as_bytes(),
        );
        page.extend_from_slice(part.as_bytes());
    }
    top.render_version_section(&mut page)?;
    // Each render defines the quote string `Aq` again, the first before `.TH`: once, after it.
    let page = String::from_utf8_lossy(&page).into_owned();
    let (aq, rest): (Vec<&str>, Vec<&str>) = page
        .lines()
        .partition(|l| l.starts_with(".ie \\n(.g .ds Aq") || l.starts_with(".el .ds Aq"));
    let (title, body) = rest.split_at(1.min(rest.len()));
    let mut out = String::new();
    for line in title.iter().chain(aq.iter().take(2)).chain(body) {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out.into_bytes())
}
