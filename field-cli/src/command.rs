//! Runs a validated request against the ledger and hands the result to
//! `render`.
//!
//! Read-only commands (`case list`, `case show`, `export`, `audit` but `audit resolve`) open the
//! ledger read-only, so they work beside a running server and never create a
//! file. Write commands open it read-write; each ledger operation is one
//! SQLite transaction, committed before the confirmation is printed. Either
//! way the ledger is unlocked first (`vault`: the passphrase, if encrypted).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fq_core::case::CaseId;
use fq_core::clock::{Clock, ManualClock, SystemClock, Timestamp};
use fq_core::doc::CaseState;
use fq_core::ledger::{Identity, Ledger, LedgerError, Tier};
use fq_core::store::ListFilter;
use fq_core::text::{Escape, SafeWriter};

use crate::cli::Cli;
use crate::lang::Lang;
use crate::render::{self, Written};
use crate::request::{self, Action, Filter, Request};
use crate::vault::Place;
use crate::{audit, demo, enroll, export, import, peer, policy, report, sync, todo};

/// The ledger's file name inside the data directory.
pub(crate) const LEDGER_FILE: &str = "ledger.db";

/// The environment variable that fixes "now" for `fq` (RFC 3339, e.g.
/// `2026-11-03T09:00:00+08:00`): for tests and demos only, so that deadlines,
/// `todo` and reports can be shown for a given day. Unset, `fq` reads the
/// system clock.
pub(crate) const NOW_ENV: &str = "FQ_NOW";

/// The clock every ledger of this run reads, set once by [`execute`].
static CLOCK: OnceLock<Arc<dyn Clock>> = OnceLock::new();

/// The clock of this run: `FQ_NOW`'s fixed time if [`execute`] set one, else the system's.
/// Every ledger `fq` opens (`vault` included) reads it.
pub(crate) fn clock() -> Arc<dyn Clock> {
    Arc::clone(CLOCK.get_or_init(|| Arc::new(SystemClock)))
}

/// `FQ_NOW`, if set: a fixed time, or an error naming the bad value.
fn fixed_now() -> Result<Option<Timestamp>, request::ArgError> {
    let Some(v) = std::env::var_os(NOW_ENV) else { return Ok(None) };
    let text = v.to_string_lossy().into_owned();
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| Some(Timestamp(t.timestamp_millis())))
        .map_err(|_| request::ArgError::Date { input: text })
}

/// The platform's data directory for fq (e.g. `~/.local/share/fq`).
fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("cn", "fengqiao", "fq").map(|d| d.data_dir().to_path_buf())
}

/// Runs one command line.
pub(crate) fn execute(cli: Cli, lang: Lang) -> anyhow::Result<()> {
    let (settings, request) = request::from_cli(cli)?;
    if let Some(t) = fixed_now()? {
        let _ = CLOCK.set(Arc::new(ManualClock::new(t)));
    }
    let json = settings.json;
    if let Request::Demo = request {
        return demo::run(lang, json);
    }
    let dir = settings.data_dir(default_data_dir)?;
    let place = Place::new(&dir, settings.passphrase_file.clone(), lang, json);
    let path = place.ledger_path().to_owned();
    let open = || place.unlock()?.open();
    let open_read_only = || place.unlock()?.open_read_only();
    // Everything printed passes through one escaping writer: cases hold text
    // from other devices, and a forged peer's control characters must show as
    // text, never act on the terminal.
    let mut safe = SafeWriter::new(io::stdout().lock(), if json { Escape::Json } else { Escape::Human });
    let out: &mut dyn Write = &mut safe;
    match request {
        Request::Init(init) => match &init.bundle {
            None => {
                let options = init.without_bundle().ok_or(request::ArgError::MissingRoleOrVillage)?;
                let ledger = place.create(options, init.wipe_after)?;
                render::initialized(out, lang, json, ledger.identity(), &dir)
            }
            Some(file) => {
                // Everything is checked before the ledger is created: a bundle that does not
                // fit, or that the county revoked, leaves nothing behind.
                let bundle = enroll::load(file)?;
                let options = enroll::init_options(&init, &bundle)?;
                let revocations = enroll::newest_revocations(&bundle, &dir, init.revocations.as_deref())?;
                enroll::check_not_revoked(&bundle, &revocations)?;
                let mut ledger = place.create(options, init.wipe_after)?;
                enroll::install(&path, &mut ledger, &bundle, &revocations)?;
                render::initialized(out, lang, json, ledger.identity(), &dir)
            }
        },
        Request::Enroll { bundle: file, revocations } => {
            let bundle = enroll::load(&file)?;
            let list = enroll::newest_revocations(&bundle, &dir, revocations.as_deref())?;
            enroll::check_not_revoked(&bundle, &list)?;
            let mut ledger = open()?;
            enroll::check_fits(&bundle, ledger.identity())?;
            let saved = enroll::install(&path, &mut ledger, &bundle, &list)?;
            render::enrolled(out, lang, json, ledger.identity(), &bundle, &saved)
        }
        Request::Sync { server } => sync::run(out, &place, server, lang, json),
        Request::SyncPeer { addr } => peer::sync(out, &place, &addr, lang, json),
        Request::Serve { listen, once } => peer::serve(out, &place, listen.as_deref(), once, lang, json),
        Request::SyncFile(file) => crate::usb::run(out, &place, file, lang, json),
        Request::Encrypt { wipe_after } => place.encrypt(out, wipe_after),
        Request::PassphraseChange { new_file } => place.change(out, new_file.as_deref()),
        Request::New(new) => {
            let state = open()?.create_case(new)?;
            render::written(out, lang, json, Written::Recorded, &state)
        }
        Request::Edit { case, edit } => {
            let mut ledger = open()?;
            let id = ledger.resolve(&case)?;
            let state = ledger.edit(id, edit)?;
            render::written(out, lang, json, Written::Edited, &state)
        }
        Request::Act { case, action } => {
            let mut ledger = open()?;
            let id = ledger.resolve(&case)?;
            let state = act(&mut ledger, id, &action)?;
            render::written(out, lang, json, Written::Acted(&action), &state)
        }
        Request::List { filter } => {
            let ledger = open_read_only()?;
            let now = ledger.now();
            let rows = ledger.list(&list_filter(filter, &ledger))?;
            render::case_list(out, lang, json, &rows, now)
        }
        Request::Show { case, history, unmasked } => {
            let mut ledger = open_read_only()?;
            let id = ledger.resolve(&case)?;
            let view = ledger.show(id, history)?;
            render::case_card(out, lang, json, &view, unmasked, ledger.now())
        }
        Request::Export { format, out: file, unmasked } => {
            let mut ledger = open_read_only()?;
            let done = export::run(&mut ledger, lang, format, file.as_deref(), unmasked)?;
            export::receipt(out, lang, json, format, &done, unmasked)
        }
        Request::Audit(request) => audit::run(out, &place, request, lang, json),
        Request::Demo => demo::run(lang, json),
        Request::Todo { scope } => {
            let ledger = open_read_only()?;
            let list = fq_core::todo::todo(&ledger, scope.as_ref())?;
            todo::render(out, lang, json, &list, &ledger)
        }
        Request::Report(r) => {
            let ledger = open_read_only()?;
            report::run(out, lang, json, &ledger, r)
        }
        Request::PolicyShow => {
            let ledger = open_read_only()?;
            policy::show(out, lang, json, &ledger)
        }
        Request::Import { file } => {
            let mut ledger = open()?;
            let cases = import::read(&file, &ledger)?;
            let done = ledger.import_cases(cases)?;
            import::receipt(out, lang, json, &file, &done)
        }
    }
}

/// Why `fq` will not write to a ledger that opens fine.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteRefused {
    /// The data directory is a township or county server's replica.
    #[error("{} holds the replica of the {} server {name} ({scope}); servers relay and never write", dir.display(), tier.code())]
    ServerReplica {
        /// The data directory.
        dir: PathBuf,
        /// The server's tier.
        tier: Tier,
        /// The server's name.
        name: String,
        /// Its area.
        scope: String,
    },
}

/// Refuses to write into a server's replica: a server relays what devices
/// wrote and its parent refuses anything a server wrote itself, so a change
/// made there would never reach the county and every sync would trip over it.
pub(crate) fn check_device(id: &Identity, path: &Path) -> Result<(), WriteRefused> {
    if id.tier == Tier::Device {
        return Ok(());
    }
    Err(WriteRefused::ServerReplica {
        dir: path.parent().unwrap_or(path).to_path_buf(),
        tier: id.tier,
        name: id.name.clone(),
        scope: id.scope.to_string(),
    })
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
        Action::Supervise { instruction, due } => ledger.supervise(id, instruction, *due),
        Action::Respond(note) => ledger.respond(id, note),
        Action::Waive(reason) => ledger.waive_follow_ups(id, reason),
    }
}
