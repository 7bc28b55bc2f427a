//! The `channel` binary: the command-line edge. It parses arguments (clap), loads the
//! configuration, and hands over to the library. Three forms, used by outside tools, so their
//! names and flags are a contract:
//!
//! - `channel serve [--config FILE] [--host H] [--port P] [--redis-url URL | --redis-sentinel
//!   HOST:PORT,… --redis-sentinel-master NAME | --redis-cluster HOST:PORT,…] [--jwt-secret S]
//!   [--shards N]`
//! - `channel token --channel C [--id ID] [--config FILE] [--jwt-secret S]`
//! - `channel check-config --config FILE`
//!
//! Errors become one line on stderr and exit code 1 (clap's usage errors exit with 2).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};

use channel::auth::{random_id, random_secret, TokenAuthority, MAX_CHANNEL_LEN};
use channel::config::{Config, Overrides};

/// A sharded, thread-per-core Phoenix Channels server bridging browsers to Redis.
#[derive(Parser)]
#[command(name = "channel", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Mint a token offline and print it on stdout (admin tokens included).
    Token(TokenArgs),
    /// Validate a configuration and print the effective values (secrets masked).
    CheckConfig(CheckConfigArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (a tangram.toml works as-is).
    #[arg(long, value_name = "FILE", env = "CHANNEL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [env: CHANNEL_HOST].
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Port to listen on [env: CHANNEL_PORT].
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// Redis to bridge to [env: CHANNEL_REDIS_URL].
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Sentinel mode: the sentinels, HOST:PORT[,HOST:PORT…] [env: CHANNEL_REDIS_SENTINELS].
    #[arg(long = "redis-sentinel", value_name = "HOST:PORT,...")]
    redis_sentinels: Option<String>,
    /// Sentinel mode: the master's name [env: CHANNEL_REDIS_SENTINEL_MASTER].
    #[arg(long, value_name = "NAME")]
    redis_sentinel_master: Option<String>,
    /// Cluster mode: seed nodes, HOST:PORT[,HOST:PORT…] [env: CHANNEL_REDIS_CLUSTER].
    #[arg(long, value_name = "HOST:PORT,...")]
    redis_cluster: Option<String>,
    /// HS256 secret for tokens [env: CHANNEL_JWT_SECRET]. Visible in `ps`: prefer the env or file.
    #[arg(long, value_name = "S")]
    jwt_secret: Option<String>,
    /// Number of shards, 0 = one per core [env: CHANNEL_SHARDS].
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
}

#[derive(Args)]
struct TokenArgs {
    /// The topic the token opens.
    #[arg(long, value_name = "C")]
    channel: String,
    /// The client id (presence key); random of `id_length` characters when absent.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Configuration file providing jwt_secret, jwt_expiration_secs and id_length.
    #[arg(long, value_name = "FILE", env = "CHANNEL_CONFIG")]
    config: Option<PathBuf>,
    /// HS256 secret [env: CHANNEL_JWT_SECRET].
    #[arg(long, value_name = "S")]
    jwt_secret: Option<String>,
}

#[derive(Args)]
struct CheckConfigArgs {
    /// The configuration file to check.
    #[arg(long, value_name = "FILE", env = "CHANNEL_CONFIG")]
    config: PathBuf,
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::CheckConfig(args) => check_config(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("channel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        redis_url: args.redis_url,
        redis_sentinels: args.redis_sentinels,
        redis_sentinel_master: args.redis_sentinel_master,
        redis_cluster: args.redis_cluster,
        jwt_secret: args.jwt_secret,
        shards: args.shards,
    };
    let mut config = Config::load(args.config.as_deref(), &process_env, &overrides)?;
    init_tracing();
    if config.jwt_secret.is_none() {
        warn!(
            "no jwt_secret configured: generated a random one for this process. Tokens minted now \
             will NOT survive a restart and other processes cannot verify them. Set [channel] \
             jwt_secret, CHANNEL_JWT_SECRET or --jwt-secret."
        );
        config.jwt_secret = Some(random_secret());
    }
    if let Some(warning) = config.open_access_warning() {
        warn!("{warning}");
    }
    info!(
        listen = %config.listen_addr(),
        shards = config.effective_shards(),
        redis = %config.redis_deployment().describe(),
        config = ?args.config,
        allocator = %channel::heap::describe(),
        "starting channel"
    );
    channel::server::serve(config)
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        jwt_secret: args.jwt_secret,
        ..Overrides::default()
    };
    let config = Config::load(args.config.as_deref(), &process_env, &overrides)?;
    let secret = config.jwt_secret.as_ref().context(
        "no jwt_secret: give --jwt-secret, CHANNEL_JWT_SECRET or a --config file with \
         [channel] jwt_secret (a token signed with a random secret would be useless)",
    )?;
    if args.channel.is_empty() || args.channel.len() > MAX_CHANNEL_LEN {
        bail!("--channel must be 1 to {MAX_CHANNEL_LEN} bytes");
    }
    let id = args.id.unwrap_or_else(|| random_id(config.id_length));
    if id.is_empty() {
        bail!("--id must not be empty");
    }
    let authority = TokenAuthority::new(secret.expose(), config.jwt_expiration_secs);
    println!("{}", authority.mint(&args.channel, &id)?);
    Ok(())
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(Some(&args.config), &process_env, &Overrides::default())?;
    // describe() opens with the Redis deployment's mode line.
    print!(
        "# effective configuration of {}\n{}",
        args.config.display(),
        config.describe()
    );
    if config.jwt_secret.is_none() {
        eprintln!(
            "channel: warning: no jwt_secret: `serve` would generate a random one and tokens \
             would not survive a restart"
        );
    }
    if let Some(warning) = config.open_access_warning() {
        eprintln!("channel: warning: {warning}");
    }
    Ok(())
}
