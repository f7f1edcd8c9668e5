//! The command line: `up`, `build`, `check`, `send`, `dlq`.

mod contracts;
mod scaffold;
mod shadow;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::broker::Broker;
#[cfg(feature = "kafka")]
use crate::broker::kafka::KafkaBus;
use crate::broker::redis::RedisBus;
use crate::builder;
use crate::lint::{self, Severity};
use crate::registry::Registry;
use crate::sandbox::engine::Engine;
use switchyard_model::envelope::{self, Envelope};
use switchyard_model::manifest::Manifest;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "Host for event-driven modular monoliths of WebAssembly modules"
)]
pub struct Cli {
    /// The manifest; relative paths in it resolve against its folder.
    #[arg(long, global = true, default_value = "plugins.toml")]
    pub config: PathBuf,
    /// How the host's log is written (to stderr): readable text, or one
    /// JSON object per line with the message's span fields.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "SWITCHYARD_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build stale modules, migrate the database and serve.
    Up {
        /// Serve the *.wasm files as they are, without running build commands.
        #[arg(long)]
        no_build: bool,
        /// Overrides `host.listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run every module's build command and install the artifacts.
    Build,
    /// Validate the manifest and every module; print the routes.
    Check {
        /// Also compare each module's declared schemas with the version the
        /// host at this URL serves (e.g. http://127.0.0.1:8080): a change
        /// that would refuse bodies it accepts is an error, as on reload.
        #[arg(long, conflicts_with = "previous")]
        against: Option<String>,
        /// The same against an earlier component file: `NAME=FILE`; repeatable.
        #[arg(long, value_parser = contracts::parse_previous)]
        previous: Vec<(String, PathBuf)>,
    },
    /// Send a command and print the answer.
    Send {
        topic: String,
        subtopic: String,
        /// The JSON body.
        json: String,
        #[arg(long, value_enum, default_value_t = Via::Http)]
        via: Via,
        /// Message id (the idempotency key); new when absent.
        #[arg(long)]
        id: Option<String>,
        /// A header, `name=value`; repeatable.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Answer once appended (202) instead of once processed.
        #[arg(long)]
        no_wait: bool,
        /// Host address; `host.listen` by default.
        #[arg(long)]
        url: Option<String>,
    },
    /// Create a module crate from a template and add it to the manifest.
    New {
        /// The module name: [a-z0-9_], also its command topic.
        name: String,
        /// The modules' folder (Rust: their cargo workspace), relative to
        /// the manifest's folder.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
        /// The module's language: a Rust crate on the SDK, or Python on
        /// `plugins/sdk-py` (built with componentize-py).
        #[arg(long, value_enum, default_value_t = scaffold::Lang::Rust)]
        lang: scaffold::Lang,
    },
    /// Run a candidate version beside a module on copies of its messages,
    /// then promote or drop it (uses the admin token).
    Shadow {
        #[command(subcommand)]
        action: shadow::ShadowAction,
        #[arg(long, global = true)]
        url: Option<String>,
    },
    /// Inspect and replay dead letters (uses the admin token).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[arg(long, global = true)]
        url: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// The newest dead letters (of one topic).
    List {
        #[arg(long)]
        topic: Option<String>,
    },
    /// Replay one dead letter by id, or every one of a topic not replayed yet.
    Replay {
        /// The dead letter's id (from `dlq list`).
        #[arg(required_unless_present = "topic", conflicts_with = "topic")]
        id: Option<String>,
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Via {
    /// `POST /v1/messages` to the running host.
    Http,
    /// `XADD` to the topic's stream (needs `[redis]`); prints the id.
    Redis,
    /// Produce to the topic (needs `[kafka]` and a build with the `kafka`
    /// feature); prints the id after delivery.
    Kafka,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&cli.config)?;
    match cli.command {
        Command::Up { no_build, listen } => up(manifest, no_build, listen).await,
        Command::Build => build(manifest).await,
        Command::Check { against, previous } => {
            let previous = match (against, previous) {
                (Some(url), _) => Some(contracts::Previous::Host(url)),
                (None, files) if !files.is_empty() => Some(contracts::Previous::Files(files)),
                _ => None,
            };
            check(&manifest, previous).await
        }
        Command::Send {
            topic,
            subtopic,
            json,
            via,
            id,
            headers,
            no_wait,
            url,
        } => {
            let body: serde_json::Value =
                serde_json::from_str(&json).context("the body is not JSON")?;
            let mut envelope = serde_json::json!({
                "topic": topic, "subtopic": subtopic, "body": body,
                "headers": headers.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            envelope["id"] = id.unwrap_or_else(envelope::new_id).into();
            match broker_for(&manifest, via)? {
                Some(broker) => send_via(&broker, &envelope).await,
                None => {
                    let base = url.unwrap_or_else(|| format!("http://{}", manifest.host.listen));
                    send_http(&base, &envelope, no_wait).await
                }
            }
        }
        Command::New { name, dir, lang } => {
            scaffold::scaffold(&manifest, &name, &dir, lang)?;
            println!(
                "created {}/{name}; test it with `{}`, build it with `switchyard build`",
                dir.display(),
                match lang {
                    scaffold::Lang::Rust =>
                        format!("cd {} && cargo test-native -p {name}", dir.display()),
                    scaffold::Lang::Python =>
                        format!("python3 -m pytest -q {}/{name}", dir.display()),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { action, url } => {
            let base = url.unwrap_or_else(|| format!("http://{}", manifest.host.listen));
            dlq(&manifest, action, &base).await
        }
        Command::Shadow { action, url } => {
            let base = url.unwrap_or_else(|| format!("http://{}", manifest.host.listen));
            let token = admin_token(&manifest)?;
            let response = shadow::request(action, &base, &token).await?;
            print_response(response).await
        }
    }
}

/// `switchyard up`: build stale modules, then serve until Ctrl-C or SIGTERM.
async fn up(
    manifest: Manifest,
    no_build: bool,
    listen: Option<String>,
) -> anyhow::Result<ExitCode> {
    if !no_build {
        let m = manifest.clone();
        tokio::task::spawn_blocking(move || builder::build_all(&m)).await??;
    }
    let addr = listen.unwrap_or_else(|| manifest.host.listen.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    crate::app::server::run(manifest, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `switchyard build`: every module's build command; what changed.
async fn build(manifest: Manifest) -> anyhow::Result<ExitCode> {
    let built = tokio::task::spawn_blocking(move || builder::build_all(&manifest)).await??;
    for b in built {
        let changed = if b.changed {
            "(updated)"
        } else {
            "(unchanged)"
        };
        println!("{:<12} {} {changed}", b.module, b.file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The broker `--via` names (`None`: over HTTP).
fn broker_for(manifest: &Manifest, via: Via) -> anyhow::Result<Option<Broker>> {
    Ok(match via {
        Via::Http => None,
        Via::Redis => {
            let settings = manifest
                .redis
                .clone()
                .context("--via redis needs [redis] in the manifest")?;
            Some(Broker::Redis(RedisBus::new(settings)?))
        }
        #[cfg(feature = "kafka")]
        Via::Kafka => {
            let settings = manifest
                .kafka
                .clone()
                .context("--via kafka needs [kafka] in the manifest")?;
            Some(Broker::Kafka(KafkaBus::new(settings)?))
        }
        #[cfg(not(feature = "kafka"))]
        Via::Kafka => {
            bail!("this build has no Kafka support: build with `--features kafka`")
        }
    })
}

/// Appends the envelope to its topic on `broker`; prints its id.
async fn send_via(broker: &Broker, envelope: &serde_json::Value) -> anyhow::Result<ExitCode> {
    let envelope = Envelope::from_json(envelope.to_string().as_bytes(), envelope::new_id)?;
    broker
        .append(std::slice::from_ref(&envelope))
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "{}",
        serde_json::json!({"id": envelope.id, "via": broker.name()})
    );
    Ok(ExitCode::SUCCESS)
}

/// `POST /v1/messages` on the host at `base`; prints the answer.
async fn send_http(
    base: &str,
    envelope: &serde_json::Value,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    let query = if no_wait { "?wait=false" } else { "" };
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/messages{query}"))
        .json(envelope)
        .send()
        .await
        .with_context(|| format!("sending to {base}"))?;
    print_response(response).await
}

/// `switchyard dlq list|replay` against the host at `base`.
/// The admin token, from the variable `host.admin-token-env` names.
fn admin_token(manifest: &Manifest) -> anyhow::Result<String> {
    let var = manifest
        .host
        .admin_token_env
        .clone()
        .context("host.admin-token-env is not set in the manifest")?;
    std::env::var(&var).with_context(|| format!("the admin token variable {var} is not set"))
}

async fn dlq(manifest: &Manifest, action: DlqAction, base: &str) -> anyhow::Result<ExitCode> {
    let token = admin_token(manifest)?;
    let client = reqwest::Client::new();
    let request = match action {
        DlqAction::List { topic } => {
            let mut r = client.get(format!("{base}/v1/dead-letters"));
            if let Some(t) = topic {
                r = r.query(&[("topic", t)]);
            }
            r
        }
        DlqAction::Replay { id: Some(id), .. } => {
            client.post(format!("{base}/v1/dead-letters/{id}/replay"))
        }
        DlqAction::Replay { id: None, topic } => {
            let topic = topic.context("give a dead letter id or --topic")?;
            let response = client
                .post(format!("{base}/v1/dead-letters/replay"))
                .query(&[("topic", topic)])
                .bearer_auth(token)
                .send()
                .await
                .with_context(|| format!("calling {base}"))?;
            return print_replay_summary(response).await;
        }
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("calling {base}"))?;
    print_response(response).await
}

async fn print_response(response: reqwest::Response) -> anyhow::Result<ExitCode> {
    let status = response.status();
    let text = response.text().await.context("reading the answer")?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    println!("{pretty}");
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("switchyard: HTTP {status}");
        Ok(ExitCode::FAILURE)
    }
}

/// Prints the answer of a replay by topic; fails when any replay failed.
async fn print_replay_summary(response: reqwest::Response) -> anyhow::Result<ExitCode> {
    let status = response.status();
    let text = response.text().await.context("reading the answer")?;
    let summary: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let pretty = summary
        .as_ref()
        .and_then(|v| serde_json::to_string_pretty(v).ok())
        .unwrap_or(text);
    println!("{pretty}");
    if !status.is_success() {
        eprintln!("switchyard: HTTP {status}");
        return Ok(ExitCode::FAILURE);
    }
    let failed = summary
        .as_ref()
        .and_then(|v| v["failed"].as_u64())
        .unwrap_or(0);
    if failed > 0 {
        eprintln!("switchyard: {failed} dead letter(s) failed again and stay in the queue");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads every module as `up` would and prints the routes (and compares
/// the contracts with `previous`).
async fn check(
    manifest: &Manifest,
    previous: Option<contracts::Previous>,
) -> anyhow::Result<ExitCode> {
    let engine = Arc::new(Engine::new()?);
    let registry = Registry::default();
    let routes = registry.load(&engine, manifest, None).await;
    let mut problems: Vec<String> = routes
        .problems
        .iter()
        .map(|p| format!("module {} ({}): {}", p.module, p.file.display(), p.message))
        .collect();
    for (name, entry) in &manifest.modules {
        for other in &entry.reads {
            if !manifest.modules.contains_key(other) && !routes.modules.contains_key(other) {
                problems.push(format!(
                    "module {name}: `reads` names unknown module '{other}'"
                ));
            }
        }
    }
    let findings = lint_modules(manifest, &routes);
    for f in findings.iter().filter(|f| f.severity == Severity::Warning) {
        eprintln!("{f}");
    }
    problems.extend(
        findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| format!("module {}: {}", f.module, f.message)),
    );
    if let Some(previous) = previous {
        let modules: Vec<_> = routes.modules.values().cloned().collect();
        for c in contracts::compare(&engine, &modules, &previous).await? {
            if c.breaking.is_empty() {
                println!("contract {}: compatible with {}", c.module, c.against);
                continue;
            }
            let list: Vec<String> = c.breaking.iter().map(ToString::to_string).collect();
            let text = format!(
                "contract {}: would refuse messages {} accepts: {}",
                c.module,
                c.against,
                list.join("; ")
            );
            if c.allowed {
                eprintln!("warning: {text} (allowed: allow-breaking = true)");
            } else {
                problems.push(format!(
                    "{text} (a reload would be refused; set allow-breaking = true in its entry to allow it)"
                ));
            }
        }
    }
    for m in routes.modules.values() {
        println!("module {} {} ({})", m.name, m.version, m.file.display());
        for t in &m.topics {
            println!("  command  {t}");
        }
        for t in &m.subscribes {
            println!("  event    {t}");
        }
        for t in &m.grants.emits {
            println!("  emits    {t}");
        }
    }
    if problems.is_empty() {
        println!("ok: {} module(s)", routes.modules.len());
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("error: {p}");
        }
        bail!(
            "{} problem(s) in {}",
            problems.len(),
            manifest.path.display()
        )
    }
}

/// The module lints of `check` (see [`crate::lint`]): every component file
/// against the host's world, every loaded manifest module's `describe`
/// against its entry.
fn lint_modules(manifest: &Manifest, routes: &crate::registry::Routes) -> Vec<lint::Finding> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let named = manifest
        .modules
        .iter()
        .map(|(name, e)| (name.clone(), manifest.host.plugins_dir.join(&e.file)));
    let loaded = routes
        .modules
        .values()
        .map(|m| (m.name.clone(), m.file.clone()));
    let failed = routes
        .problems
        .iter()
        .map(|p| (p.module.clone(), p.file.clone()));
    for (name, file) in named.chain(loaded).chain(failed) {
        if !files.iter().any(|(_, f)| *f == file) {
            files.push((name, file));
        }
    }
    let mut findings = Vec::new();
    for (name, file) in files {
        // A missing file is already a load problem.
        if let Ok(bytes) = std::fs::read(&file) {
            findings.extend(lint::world(&name, &bytes));
        }
    }
    for m in routes.modules.values() {
        let Some(entry) = &m.entry else { continue };
        // What `describe` declared when the module loaded.
        let d = &m.contract.declared;
        let declared = lint::Declared {
            topics: d.topics.clone(),
            subscribes: d.subscribes.clone(),
            emits: d.emits.clone(),
        };
        findings.extend(lint::grants(&m.name, &declared, entry));
    }
    findings
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
