//! Runs a validated request against the ledger and hands the result to
//! `render`.
//!
//! Read-only commands (`case list`, `case show`, `export`, `audit` but `audit resolve`) open the
//! ledger read-only, so they work beside a running server and never create a
//! file. Write commands open it read-write; each ledger operation is one
//! SQLite transaction, committed before the confirmation is printed.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use fq_core::case::CaseId;
use fq_core::clock::{Clock, SystemClock};
use fq_core::doc::CaseState;
use fq_core::ledger::{InitOptions, Ledger, LedgerError, LedgerOptions};
use fq_core::store::ListFilter;

use crate::cli::Cli;
use crate::lang::Lang;
use crate::render::{self, Written};
use crate::request::{self, Action, Filter, Request};
use crate::{audit, demo, enroll, export, sync};

/// The ledger's file name inside the data directory.
pub(crate) const LEDGER_FILE: &str = "ledger.db";

/// Files SQLite keeps beside a database, removed with it when `init` fails.
const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// The platform's data directory for fq (e.g. `~/.local/share/fq`).
fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("cn", "fengqiao", "fq").map(|d| d.data_dir().to_path_buf())
}

/// Runs one command line.
pub(crate) fn execute(cli: Cli, lang: Lang) -> anyhow::Result<()> {
    let (settings, request) = request::from_cli(cli)?;
    let json = settings.json;
    if let Request::Demo = request {
        return demo::run(lang, json);
    }
    let dir = settings.data_dir(default_data_dir)?;
    let path = dir.join(LEDGER_FILE);
    let stdout = io::stdout();
    let out: &mut dyn Write = &mut stdout.lock();
    match request {
        Request::Init(init) => match &init.bundle {
            None => {
                let options = init.without_bundle().ok_or(request::ArgError::MissingRoleOrVillage)?;
                let ledger = init_ledger(&dir, options)?;
                render::initialized(out, lang, json, ledger.identity(), &dir)
            }
            Some(file) => {
                // Everything is checked before the ledger is created: a bundle that does not
                // fit leaves nothing behind.
                let bundle = enroll::load(file)?;
                let mut ledger = init_ledger(&dir, enroll::init_options(&init, &bundle)?)?;
                enroll::install(&dir, &mut ledger, &bundle)?;
                render::initialized(out, lang, json, ledger.identity(), &dir)
            }
        },
        Request::Enroll { bundle: file } => {
            let bundle = enroll::load(&file)?;
            let mut ledger = open(&path)?;
            enroll::check_fits(&bundle, ledger.identity())?;
            let saved = enroll::install(&dir, &mut ledger, &bundle)?;
            render::enrolled(out, lang, json, ledger.identity(), &bundle, &saved)
        }
        Request::Sync { server } => sync::run(out, &dir, server, lang, json),
        Request::New(new) => {
            let state = open(&path)?.create_case(new)?;
            render::written(out, lang, json, Written::Recorded, &state)
        }
        Request::Edit { case, edit } => {
            let mut ledger = open(&path)?;
            let id = ledger.resolve(&case)?;
            let state = ledger.edit(id, edit)?;
            render::written(out, lang, json, Written::Edited, &state)
        }
        Request::Act { case, action } => {
            let mut ledger = open(&path)?;
            let id = ledger.resolve(&case)?;
            let state = act(&mut ledger, id, &action)?;
            render::written(out, lang, json, Written::Acted(&action), &state)
        }
        Request::List { filter } => {
            let ledger = open_read_only(&path)?;
            let now = ledger.now();
            let rows = ledger.list(&list_filter(filter, &ledger))?;
            render::case_list(out, lang, json, &rows, now)
        }
        Request::Show { case, history, unmasked } => {
            let mut ledger = open_read_only(&path)?;
            let id = ledger.resolve(&case)?;
            let view = ledger.show(id, history)?;
            render::case_card(out, lang, json, &view, unmasked, ledger.now())
        }
        Request::Export { format, out: file, unmasked } => {
            let mut ledger = open_read_only(&path)?;
            let done = export::run(&mut ledger, format, file.as_deref(), unmasked)?;
            export::receipt(out, lang, json, format, &done, unmasked)
        }
        Request::Audit(request) => audit::run(out, &dir, request, lang, json),
        Request::Demo => demo::run(lang, json),
    }
}

fn open(path: &Path) -> anyhow::Result<Ledger> {
    Ledger::open(path, clock(), LedgerOptions::default()).with_context(|| format!("opening {}", path.display()))
}

fn open_read_only(path: &Path) -> anyhow::Result<Ledger> {
    Ledger::open_read_only(path, clock()).with_context(|| format!("opening {} read-only", path.display()))
}

/// Creates the ledger, touching the disk only once the input is known good.
fn init_ledger(dir: &Path, init: InitOptions) -> anyhow::Result<Ledger> {
    let path = dir.join(LEDGER_FILE);
    if path.exists()
        && let Ok(existing) = Ledger::open_read_only(&path, clock())
    {
        let id = existing.identity();
        return Err(LedgerError::AlreadyInitialized { name: id.name.clone(), scope: id.scope.to_string() }.into());
    }
    // The ledger checks the code against the role only while it creates the
    // file: run the same checks on a throwaway ledger in memory first, so a
    // refused init leaves no directory or file behind.
    Ledger::init_in_memory(init.clone(), clock(), LedgerOptions::default())?;
    let dir_existed = dir.exists();
    let file_existed = path.exists();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = Ledger::init(&path, init, clock(), LedgerOptions::default());
    if result.is_err() {
        if !file_existed {
            let _ = fs::remove_file(&path);
            for suffix in SQLITE_SIDE_FILES {
                let mut side = path.clone().into_os_string();
                side.push(suffix);
                let _ = fs::remove_file(side);
            }
        }
        if !dir_existed {
            // Only removes the directory if it is still empty.
            let _ = fs::remove_dir(dir);
        }
    }
    result.with_context(|| format!("creating {}", path.display()))
}

fn list_filter(f: Filter, ledger: &Ledger) -> ListFilter {
    ListFilter {
        status: f.status,
        level: f.level,
        category: f.category,
        within: f.within,
        risk: f.risk,
        overdue_at: f.overdue.then(|| ledger.now()),
        search: f.search,
        limit: f.limit,
    }
}

fn act(ledger: &mut Ledger, id: CaseId, action: &Action) -> Result<CaseState, LedgerError> {
    match action {
        Action::Note(text) => ledger.add_note(id, text),
        Action::Assign(to) => ledger.assign(id, to),
        Action::Escalate(reason) => ledger.escalate(id, reason),
        Action::Accept => ledger.accept_escalation(id),
        Action::Settle(agreement) => ledger.settle(id, agreement),
        Action::Fail(reason) => ledger.fail(id, reason),
        Action::Confirm { court, reference } => ledger.confirm(id, court, reference.as_deref()),
        Action::FollowUp { outcome, note } => ledger.follow_up(id, *outcome, note.as_deref()),
        Action::Archive => ledger.archive(id),
    }
}
