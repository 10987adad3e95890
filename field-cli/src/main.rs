//! `fq`: the field and admin command line of the Fengqiao case ledger.
//!
//! # Layout
//! - `cli`: the raw command line (clap).
//! - `request`: raw arguments turned into validated values before any ledger
//!   is opened, so bad input writes nothing.
//! - `command`: runs a request against the ledger.
//! - `render`: what people see (sentences, tables, case cards) and `--json`.
//! - `audit`: the merge audit (`fq audit` and its commands) and its words.
//! - `export`: JSON and CSV exports.
//! - `import`: `fq case import`: a spreadsheet's cases, every row checked before any is written.
//! - `todo`: `fq todo`, the day's work, in words.
//! - `report`: `fq report monthly|subsidy` in every format (the figures are the core's).
//! - `policy`: `fq policy show`, the county policy in force.
//! - `enroll`: the county's certificate bundle on this device (`init --bundle`, `enroll`),
//!   kept inside the encrypted ledger.
//! - `pin`: asking for the ledger's passphrase (terminal without echo, `--passphrase-file`,
//!   `FQ_PASSPHRASE`).
//! - `vault`: the ledger unlocked and opened; `init`, `encrypt` and `passphrase change`.
//! - `sync`: `fq sync` with the township or county server (the driver is
//!   `fq_sync_server::client`).
//! - `peer`: `fq serve` and `fq sync --peer`: two devices of one area over the local network,
//!   with no server (the listener and the driver are `fq_sync_server::peer` and `client`).
//! - `usb`: `fq sync --to-file` and `--from-file`: sync files carried on a USB stick (the
//!   format and the one-way session are `fq_core::sync::file`).
//! - `lang`: the user's language and the labels of the interface.
//! - `message`: every error in words a village cadre can act on, and its exit code.
//! - `demo`: the guided demo.
//!
//! Exit codes: 0 ok (also when the reader of our output goes away), 1 failure,
//! 2 bad usage or bad input.

use std::ffi::OsString;

use clap::FromArgMatches;

mod audit;
mod cli;
mod command;
mod demo;
mod enroll;
mod export;
mod import;
mod lang;
mod message;
mod peer;
mod pin;
mod policy;
mod render;
mod report;
mod request;
mod sync;
mod todo;
mod usb;
mod vault;

fn main() {
    fq_core::doc::install_panic_hook();
    std::process::exit(run())
}

fn run() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The language is needed before clap has read the arguments: its help and
    // its errors are in it too.
    let lang = lang::Lang::from_args(&args);
    let parsed = cli::command(lang).try_get_matches_from(&args).and_then(|m| cli::Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return message::report_usage(&e, &args, lang),
    };
    let lang = cli.lang.unwrap_or(lang);
    let json = cli.json;
    match command::execute(cli, lang) {
        Ok(()) => 0,
        Err(e) => message::report(&e, lang, json),
    }
}
