//! The `kith` command: run the server and administer it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kith_server::{Config, Server, accounts, admin};

#[derive(Parser)]
#[command(
    name = "kith",
    version,
    about = "A WhatsApp-class messaging server that speaks standard XMPP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults when no config is given).
    Serve {
        /// TOML configuration file (see kith.example.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage accounts in the configured store.
    User {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: UserAction,
    },
    /// List or revoke the device credentials of phone accounts.
    Device {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Check a configuration file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create an account.
    Add {
        username: String,
        /// The password; asked for on the terminal when omitted.
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        username: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account and all its data; on a running server (reached
    /// through `<data_dir>/admin.sock`) it also leaves contacts' rosters and
    /// its groups, and its sessions end.
    Del { username: String },
    /// List accounts.
    List,
}

#[derive(Subcommand)]
enum DeviceAction {
    /// List an account's devices: id, name, last use.
    List { username: String },
    /// Revoke a device credential: it can no longer sign in, and its sessions
    /// on the running server (reached through `<data_dir>/admin.sock`) end.
    Revoke { username: String, id: String },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate FILE and report errors with their key and line.
    Check { file: PathBuf },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { config } => {
            let config = load(config.as_deref())?;
            init_logging(&config.log.level);
            runtime.block_on(serve(config))
        }
        Command::User { config, action } => {
            let config = load(config.as_deref())?;
            init_logging("warn");
            runtime.block_on(user(config, action))
        }
        Command::Device { config, action } => {
            let config = load(config.as_deref())?;
            init_logging("warn");
            runtime.block_on(device(config, action))
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1);
            }
        },
    }
}

fn load(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

fn init_logging(default: &str) {
    // PostgreSQL's notices come at INFO through sqlx, one per statement that
    // has one ("word is too long to be indexed" for every message with a
    // long word, "relation … already exists, skipping" at each start): noise
    // at the default level, unless the filter names sqlx itself.
    let default = if default.contains("sqlx") {
        default.to_owned()
    } else {
        format!("{default},sqlx::postgres::notice=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(config: Config) -> Result<()> {
    // Taken before starting: a SIGHUP while the store opens must not kill it.
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let hangup = None::<()>;
    let mut running = Server::start(config).await?;
    tokio::spawn(reload_on_hangup(running.server.clone(), hangup));
    tokio::select! {
        () = running.wait() => bail!("a listener stopped unexpectedly"),
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            running.shutdown().await;
            // Give sessions a moment to write their closing stream errors.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Ok(())
        }
    }
}

/// SIGHUP (`systemctl reload`): read the TLS certificate and key again.
#[cfg(unix)]
async fn reload_on_hangup(
    server: std::sync::Arc<Server>,
    hangup: Option<tokio::signal::unix::Signal>,
) {
    {
        let Some(mut hangup) = hangup else {
            return;
        };
        while hangup.recv().await.is_some() {
            match server.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(error) => tracing::error!(
                    error = %format!("{error:#}"),
                    "SIGHUP: the TLS certificate was not reloaded; keeping the current one"
                ),
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_server: std::sync::Arc<Server>, _hangup: Option<()>) {}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
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

async fn user(config: Config, action: UserAction) -> Result<()> {
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("creating {}", config.server.data_dir.display()))?;
    let store = kith_store::Store::open_with(&config.storage_url(), 2)
        .await
        .context("opening the store")?;
    let domain = &config.server.domain;
    match action {
        UserAction::Add { username, password } => {
            let username = accounts::normalize_username(&username, domain)?;
            let password = password_or_prompt(password)?;
            accounts::create(&store, &username, &password).await?;
            println!("created {username}@{domain}");
        }
        UserAction::Passwd { username, password } => {
            let username = accounts::normalize_username(&username, domain)?;
            let password = password_or_prompt(password)?;
            accounts::set_password(&store, &username, &password).await?;
            println!("password changed for {username}@{domain}");
        }
        UserAction::Del { username } => {
            let username = accounts::normalize_username(&username, domain)?;
            // A running server deletes it as if the user had: contacts'
            // rosters and groups are left, sessions end.
            let request = admin::Request::UserDel {
                username: username.clone(),
            };
            if let Some(answer) = admin::ask(&config, &request).await? {
                if !answer.existed {
                    bail!("no such user {username}@{domain}");
                }
                println!(
                    "deleted {username}@{domain} and all its data (the running server ended {} session(s))",
                    answer.sessions
                );
                return Ok(());
            }
            kith_server::upload::purge_user_files(&config, &store, &username)
                .await
                .context("deleting the account's uploads")?;
            if !store.delete_user(&username).await? {
                bail!("no such user {username}@{domain}");
            }
            println!("deleted {username}@{domain} and all its data");
        }
        UserAction::List => {
            for username in store.list_users().await? {
                println!("{username}@{domain}");
            }
        }
    }
    Ok(())
}

async fn device(config: Config, action: DeviceAction) -> Result<()> {
    let store = kith_store::Store::open_with(&config.storage_url(), 2)
        .await
        .context("opening the store")?;
    let domain = &config.server.domain;
    match action {
        DeviceAction::List { username } => {
            let username = accounts::normalize_username(&username, domain)?;
            for device in store.device_credentials(&username).await? {
                println!(
                    "{}\t{}\tlast used {}",
                    device.id,
                    device.name,
                    device.last_used_micros / 1_000_000
                );
            }
        }
        DeviceAction::Revoke { username, id } => {
            let username = accounts::normalize_username(&username, domain)?;
            let request = admin::Request::DeviceRevoke {
                username: username.clone(),
                id: id.clone(),
            };
            if let Some(answer) = admin::ask(&config, &request).await? {
                if !answer.existed {
                    bail!("{username}@{domain} has no device {id}");
                }
                println!(
                    "revoked device {id} of {username}@{domain} (the running server ended {} session(s))",
                    answer.sessions
                );
                return Ok(());
            }
            let resource = kith_server::device_resource(&id);
            if !store
                .revoke_device_credential(&username, &id, &resource)
                .await?
            {
                bail!("{username}@{domain} has no device {id}");
            }
            println!("revoked device {id} of {username}@{domain}");
        }
    }
    Ok(())
}

fn password_or_prompt(password: Option<String>) -> Result<String> {
    match password {
        Some(password) => Ok(password),
        None => {
            let first = rpassword::prompt_password("password: ")?;
            let second = rpassword::prompt_password("again: ")?;
            if first != second {
                bail!("the passwords differ");
            }
            Ok(first)
        }
    }
}
