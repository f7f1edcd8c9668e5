//! The WASI a module gets: only what a language runtime links even when the
//! module does no I/O, with nothing behind it (SPEC §4: no filesystem, no
//! sockets, no environment).
//!
//! - `wasi:io/{error,poll,streams}`: streams over the three below only;
//! - `wasi:cli/environment`: no variables, no arguments, no working folder;
//! - `wasi:cli/stdin`: closed; `stdout`/`stderr`: lines go to the host log
//!   with the module's name, under the module's log rate (see
//!   [`LogLimiter`]); no terminals; `wasi:cli/exit`: a trap;
//! - `wasi:random`: the host's CSPRNG. It reaches nothing outside the
//!   sandbox, and std's `HashMap`, UUIDs and other language runtimes
//!   (CPython seeds its hashes) need it.
//!
//! Any other `wasi:*` interface a component imports (clocks, filesystem,
//! sockets, ...) links to functions that trap with "not granted" when
//! called, see [`deny_other_wasi`]: a runtime that merely links them still
//! loads, and time comes from `switchyard:module/clock`. A Rust std module
//! (wasm32-wasip2, cdylib) imports only `wasi:cli` and `wasi:io`: its
//! start-up needs neither clocks nor random.

use std::sync::Arc;

use axum::body::Bytes;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    HasData, HasSelf, Linker, LinkerInstance, Resource, ResourceTable, ResourceType,
};
use wasmtime_wasi::p2::bindings::cli::{
    environment, exit, stderr, stdin, stdout, terminal_input, terminal_output, terminal_stderr,
    terminal_stdin, terminal_stdout,
};
use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, OutputStream, Pollable, StreamError, StreamResult,
};

use crate::sandbox::state::HostState;
use switchyard_model::grants::Grants;
use switchyard_model::grants::LogLimiter;

/// Largest `get-random-bytes` answer; a bigger request traps.
const MAX_RANDOM_BYTES: u64 = 1 << 20;
/// Longest stdout/stderr line kept; the rest of a longer line is cut.
const MAX_LINE: usize = 4 * 1024;
/// What `check-write` allows per write: a guest never buffers more here.
const WRITE_BUDGET: usize = 64 * 1024;

/// Interfaces linked for real, by name without the `@version`.
const LINKED: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// `HasData` for the `wasi:io` implementations of `wasmtime-wasi-io`,
/// which live on the store's resource table.
struct Table;

impl HasData for Table {
    type Data<'a> = &'a mut ResourceTable;
}

/// Adds the granted WASI interfaces to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::io::{error, poll, streams};
    error::add_to_linker::<HostState, Table>(linker, |s| &mut s.table)?;
    poll::add_to_linker::<HostState, Table>(linker, |s| &mut s.table)?;
    streams::add_to_linker::<HostState, Table>(linker, |s| &mut s.table)?;

    type Me = HasSelf<HostState>;
    fn me(s: &mut HostState) -> &mut HostState {
        s
    }
    environment::add_to_linker::<HostState, Me>(linker, me)?;
    exit::add_to_linker::<HostState, Me>(linker, me)?;
    stdin::add_to_linker::<HostState, Me>(linker, me)?;
    stdout::add_to_linker::<HostState, Me>(linker, me)?;
    stderr::add_to_linker::<HostState, Me>(linker, me)?;
    terminal_input::add_to_linker::<HostState, Me>(linker, me)?;
    terminal_output::add_to_linker::<HostState, Me>(linker, me)?;
    terminal_stdin::add_to_linker::<HostState, Me>(linker, me)?;
    terminal_stdout::add_to_linker::<HostState, Me>(linker, me)?;
    terminal_stderr::add_to_linker::<HostState, Me>(linker, me)?;
    random::add_to_linker::<HostState, Me>(linker, me)?;
    insecure::add_to_linker::<HostState, Me>(linker, me)?;
    insecure_seed::add_to_linker::<HostState, Me>(linker, me)?;
    Ok(())
}

/// Stands in for resources of interfaces that are not granted: no value of
/// it is ever created, since every function that could make one traps.
struct Denied;

/// Defines every `wasi:*` import of `component` that [`add_to_linker`] does
/// not grant as functions that trap with "not granted", so runtimes that link
/// the whole of WASI load. Imports outside `wasi:` are left alone: a missing
/// or mismatched `switchyard:module` import still fails to link.
pub fn deny_other_wasi(
    linker: &mut Linker<HostState>,
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<()> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let unversioned = name.split('@').next().unwrap_or(name);
        if !unversioned.starts_with("wasi:") || LINKED.contains(&unversioned) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let mut stubs = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            deny_item(&mut stubs, name, export, &item.ty)?;
        }
    }
    Ok(())
}

fn deny_item(
    stubs: &mut LinkerInstance<'_, HostState>,
    interface: &str,
    name: &str,
    item: &ComponentItem,
) -> wasmtime::Result<()> {
    match item {
        ComponentItem::ComponentFunc(_) => {
            let what = format!("{interface}#{name}");
            stubs.func_new(name, move |_, _, _, _| {
                Err(wasmtime::format_err!(
                    "`{what}` is not granted: Switchyard modules get no filesystem, sockets, \
                     environment or clocks (time comes from switchyard:module/clock)"
                ))
            })?;
        }
        ComponentItem::Resource(_) => {
            // A denied interface may `use` the resources of `wasi:io`, which
            // are linked for real: those must be the same types as there.
            // Its own resources (descriptors, sockets) can never be made.
            let ty = match name {
                "pollable" => ResourceType::host::<DynPollable>(),
                "input-stream" => ResourceType::host::<DynInputStream>(),
                "output-stream" => ResourceType::host::<DynOutputStream>(),
                "error" => ResourceType::host::<wasmtime::Error>(),
                _ => ResourceType::host::<Denied>(),
            };
            stubs.resource(name, ty, |_, _| Ok(()))?;
        }
        _ => {}
    }
    Ok(())
}

impl environment::Host for HostState {
    fn get_environment(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
    fn get_arguments(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(Vec::new())
    }
    fn initial_cwd(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
}

impl exit::Host for HostState {
    fn exit(&mut self, status: Result<(), ()>) -> wasmtime::Result<()> {
        let code = if status.is_ok() { 0 } else { 1 };
        Err(wasmtime::format_err!(
            "the module called wasi:cli/exit (status {code})"
        ))
    }
    fn exit_with_code(&mut self, code: u8) -> wasmtime::Result<()> {
        Err(wasmtime::format_err!(
            "the module called wasi:cli/exit (status {code})"
        ))
    }
}

impl stdin::Host for HostState {
    fn get_stdin(&mut self) -> wasmtime::Result<Resource<DynInputStream>> {
        let closed: DynInputStream = Box::new(wasmtime_wasi::p2::pipe::ClosedInputStream);
        Ok(self.table.push(closed)?)
    }
}

impl stdout::Host for HostState {
    fn get_stdout(&mut self) -> wasmtime::Result<Resource<DynOutputStream>> {
        let stream = GuestOutput::new(&self.uow.grants, Stream::Stdout);
        Ok(self.table.push(Box::new(stream) as DynOutputStream)?)
    }
}

impl stderr::Host for HostState {
    fn get_stderr(&mut self) -> wasmtime::Result<Resource<DynOutputStream>> {
        let stream = GuestOutput::new(&self.uow.grants, Stream::Stderr);
        Ok(self.table.push(Box::new(stream) as DynOutputStream)?)
    }
}

impl terminal_input::Host for HostState {}
impl terminal_input::HostTerminalInput for HostState {
    fn drop(&mut self, r: Resource<terminal_input::TerminalInput>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        Ok(())
    }
}
impl terminal_output::Host for HostState {}
impl terminal_output::HostTerminalOutput for HostState {
    fn drop(&mut self, r: Resource<terminal_output::TerminalOutput>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        Ok(())
    }
}
impl terminal_stdin::Host for HostState {
    fn get_terminal_stdin(
        &mut self,
    ) -> wasmtime::Result<Option<Resource<terminal_input::TerminalInput>>> {
        Ok(None)
    }
}
impl terminal_stdout::Host for HostState {
    fn get_terminal_stdout(
        &mut self,
    ) -> wasmtime::Result<Option<Resource<terminal_output::TerminalOutput>>> {
        Ok(None)
    }
}
impl terminal_stderr::Host for HostState {
    fn get_terminal_stderr(
        &mut self,
    ) -> wasmtime::Result<Option<Resource<terminal_output::TerminalOutput>>> {
        Ok(None)
    }
}

fn random_bytes(len: u64) -> wasmtime::Result<Vec<u8>> {
    if len > MAX_RANDOM_BYTES {
        wasmtime::bail!("asked for {len} random bytes; at most {MAX_RANDOM_BYTES} per call");
    }
    // Bounded just above, so the cast cannot truncate.
    let mut bytes = vec![0u8; len as usize];
    getrandom::fill(&mut bytes)
        .map_err(|e| wasmtime::format_err!("the host's random source failed: {e}"))?;
    Ok(bytes)
}

fn random_u64() -> wasmtime::Result<u64> {
    getrandom::u64().map_err(|e| wasmtime::format_err!("the host's random source failed: {e}"))
}

impl random::Host for HostState {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        random_bytes(len)
    }
    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        random_u64()
    }
}

impl insecure::Host for HostState {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        random_bytes(len)
    }
    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        random_u64()
    }
}

impl insecure_seed::Host for HostState {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        Ok((random_u64()?, random_u64()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: whole lines into the host log, tagged with
/// the module, cut at [`MAX_LINE`], under the module's [`LogLimiter`].
struct GuestOutput {
    module: Arc<str>,
    stream: Stream,
    limiter: Arc<LogLimiter>,
    /// The line being written (no newline yet).
    line: Vec<u8>,
    /// The current line went over [`MAX_LINE`]; the rest of it is dropped.
    cut: bool,
}

impl GuestOutput {
    fn new(grants: &Grants, stream: Stream) -> Self {
        Self {
            module: Arc::from(grants.name.as_str()),
            stream,
            limiter: grants.log_limiter.clone(),
            line: Vec::new(),
            cut: false,
        }
    }

    fn emit_line(&mut self) {
        if self.line.is_empty() && !self.cut {
            return;
        }
        if self.limiter.admit(&self.module) {
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches('\r');
            let cut = if self.cut { "..." } else { "" };
            let module = &*self.module;
            match self.stream {
                Stream::Stdout => {
                    tracing::info!(target: "module", module, stream = "stdout", "{text}{cut}")
                }
                Stream::Stderr => {
                    tracing::warn!(target: "module", module, stream = "stderr", "{text}{cut}")
                }
            }
        }
        self.line.clear();
        self.cut = false;
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > WRITE_BUDGET {
            return Err(StreamError::trap("write larger than check-write allowed"));
        }
        for part in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, ends_line) = match part.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (part, false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            if text.len() > room {
                self.line.extend_from_slice(&text[..room]);
                self.cut = true;
            } else {
                self.line.extend_from_slice(text);
            }
            if ends_line {
                self.emit_line();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl Drop for GuestOutput {
    /// A last line without a newline still reaches the log.
    fn drop(&mut self) {
        self.emit_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_cut_and_limited() {
        // No refill: the count below must not depend on how fast this
        // thread runs (a loaded machine takes milliseconds between writes).
        let limiter = Arc::new(LogLimiter::new(0, 3));
        let grants = Grants {
            name: "m".into(),
            log_limiter: limiter.clone(),
            ..Grants::default()
        };
        let mut out = GuestOutput::new(&grants, Stream::Stdout);
        out.write(Bytes::from_static(b"one\ntw")).expect("write");
        out.write(Bytes::from_static(b"o\n")).expect("write");
        assert!(out.line.is_empty());
        let long = vec![b'x'; MAX_LINE * 2];
        out.write(Bytes::from(long)).expect("write");
        assert_eq!(out.line.len(), MAX_LINE);
        assert!(out.cut);
        out.write(Bytes::from_static(b"\n")).expect("write");
        // Burst of 3: one, two, the cut line; the fourth is dropped.
        out.write(Bytes::from_static(b"four\n")).expect("write");
        assert_eq!(limiter.dropped_total(), 1);
    }
}
