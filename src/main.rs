//! The `doorman` binary: command line, logging, runtime and signals. Everything else is in
//! the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use doorman::config;
use doorman::demo::{self, DemoOptions};
use doorman::server::{self, Listeners};
use doorman::snapshot::Snapshot;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "doorman",
    version,
    about = "A layer-7 reverse proxy and load balancer"
)]
struct Cli {
    /// Log line format (filter with RUST_LOG, e.g. RUST_LOG=info,doorman::access=off).
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
    /// `[store] redis_url` is set; otherwise asks the running instance's admin listener.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
            match rt.block_on(demo::run(opts, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn fail(msg: String) -> ExitCode {
    error!("{msg}");
    ExitCode::FAILURE
}

fn check(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(c) => {
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
        match &config.store.redis_url {
            Some(url) => doorman::store::write_to_redis(url, &records, &what).await,
            None => doorman::admin::post_revocation(config.server.admin_listen, &what).await,
        }
    });
    match result {
        Ok(()) => {
            println!("revoked: {what:?}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("revocation failed: {e}")),
    }
}

fn run(path: PathBuf) -> ExitCode {
    let Some(config) = load(&path) else {
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    info!(config = %path.display(), workers = config.server.workers, "starting doorman");
    let result = rt.block_on(async {
        let listeners = Listeners::bind(&config.server)
            .await
            .map_err(|e| e.to_string())?;
        let snapshot = Snapshot::build(&config)?.into_shared();
        server::run(listeners, snapshot, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down gracefully"),
        _ = int.recv() => info!("SIGINT: shutting down gracefully"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        error!("second signal: exiting now");
        std::process::exit(1);
    });
}
