//! The paths beside QUIC: sync files carried on a USB stick (delayed, lost,
//! duplicated, replayed, given to the wrong replica) and sessions between two
//! devices that meet (`fq serve` / `fq sync --peer`).
//!
//! What they must keep (DESIGN.md §9, docs/SIMULATION.md):
//! - an answer file acknowledges only what its writer holds, committed;
//! - a device counts a change as taken by its township only when the
//!   township said so, over QUIC or in an answer: not when a file is
//!   written, and not when another device took it;
//! - a file given to the wrong replica is refused, and changes nothing there.

use std::collections::VecDeque;

use fq_core::case::CaseId;
use fq_core::doc::Hash;
use fq_core::sync::file::{self, Receiver};
use rand::Rng;

use super::{Kind, Link, Sim, World, hex, note_push, trace_on};

/// Files kept after delivery, to plug in again.
const HISTORY: usize = 12;

/// A sync file on its way.
#[derive(Clone)]
pub(super) struct Carried {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    /// The step it was written at.
    written: u64,
    /// For an answer: the step the file it answers was written at.
    answers: Option<u64>,
    /// The change keys of each push it carries, in order (what its answer
    /// acknowledges).
    pushes: VecDeque<Vec<(CaseId, Hash)>>,
}

impl World {
    /// Devices that meet: in each village the first two devices (the
    /// mediator and a grid worker), and each township officer with the
    /// mediator of its first village. Their scopes nest.
    pub(super) fn add_peer_links(&mut self) {
        let devices: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].kind == Kind::Device).collect();
        let mut pairs = Vec::new();
        for (n, &a) in devices.iter().enumerate() {
            let Some(&b) = devices[n + 1..].iter().find(|&&b| self.nodes[b].scope == self.nodes[a].scope) else {
                continue;
            };
            if self.nodes[a].scope.as_str().len() == 12 && !pairs.iter().any(|&(x, _)| x == a) {
                pairs.push((b, a));
            }
        }
        for &o in devices.iter().filter(|&&o| self.nodes[o].scope.as_str().len() == 9) {
            if let Some(&d) = devices.iter().find(|&&d| d != o && self.nodes[o].scope.contains(&self.nodes[d].scope)) {
                pairs.push((o, d));
            }
        }
        for (child, parent) in pairs {
            self.links.push(Link {
                child,
                parent,
                peer: true,
                up: true,
                pipes: Vec::new(),
                sent_pushes: Vec::new(),
                sent_policies: Vec::new(),
            });
        }
    }

    /// Devices whose scope nests with `i`'s: those it may sync with directly.
    fn peers_of(&self, i: usize) -> Vec<usize> {
        let me = &self.nodes[i].scope;
        (0..self.nodes.len())
            .filter(|&j| {
                let them = &self.nodes[j].scope;
                j != i && self.nodes[j].kind == Kind::Device && (me.contains(them) || them.contains(me))
            })
            .collect()
    }

    fn parent_of(&self, i: usize) -> Option<usize> {
        self.links.iter().find(|l| l.child == i && !l.peer).map(|l| l.parent)
    }

    fn entropy(&mut self) -> [u8; 72] {
        let mut e = [0u8; 72];
        self.rng.fill(&mut e[..]);
        e
    }

    /// A device with no signal writes a sync file: for its township, or
    /// for another device of its area (`fq sync --to-file [--for ID]`).
    pub(super) fn write_file(&mut self) -> Sim<()> {
        let devs = self.devices();
        if !self.paths.files || devs.is_empty() {
            return Ok(());
        }
        let i = devs[self.rng.random_range(0..devs.len())];
        let peers = self.peers_of(i);
        let to_township = peers.is_empty() || self.rng.random_bool(0.7);
        let (t, replica) = if to_township {
            let Some(p) = self.parent_of(i) else { return Ok(()) };
            (p, self.nodes[i].ledger().upstream().map_err(|e| e.to_string())?)
        } else {
            (peers[self.rng.random_range(0..peers.len())], None)
        };
        let g = &self.nodes[t].grant.grant;
        let receiver =
            Receiver { key: g.public_key, subject: g.subject.clone(), role: g.role, scope: g.scope.clone(), replica };
        let creds = self.creds(i, None);
        let now = self.node_now(i);
        let entropy = self.entropy();
        let (bytes, _) = file::write(self.nodes[i].ledger(), &creds, &receiver, now, entropy)
            .map_err(|e| format!("{}: writing a sync file: {e}", self.nodes[i].name))?;
        let pushes = self.pushes_in(&bytes, t)?;
        if trace_on() {
            eprintln!(
                "{} writes a file for {} ({} pushes, upstream {:?})",
                self.nodes[i].name,
                self.nodes[t].name,
                pushes.len(),
                replica
            );
        }
        self.check_township_acks(i, None)?;
        self.files.push(Carried { from: i, to: t, bytes, written: self.step, answers: None, pushes });
        Ok(())
    }

    /// The pushes of a file, read with its receiver's key.
    fn pushes_in(&self, bytes: &[u8], receiver: usize) -> Sim<VecDeque<Vec<(CaseId, Hash)>>> {
        let (_, inner) = file::open(bytes, &self.ca.verifying_key(), &self.nodes[receiver].key)
            .map_err(|e| format!("a file just written does not open: {e}"))?;
        let mut pushes = VecDeque::new();
        for frame in file::frames(&inner).map_err(|e| e.to_string())? {
            note_push(&frame, &mut pushes);
        }
        Ok(pushes)
    }

    /// Something happens to a file on its way: it is carried to its
    /// receiver (at times twice), lost, carried to the wrong replica, or an
    /// old one is plugged in again. Which file goes next is random: files
    /// overtake each other.
    pub(super) fn carry_file(&mut self) -> Sim<()> {
        if !self.paths.files || (self.files.is_empty() && self.file_history.is_empty()) {
            return Ok(());
        }
        let roll = self.rng.random_range(0..100);
        if self.files.is_empty() || roll < 10 {
            if self.file_history.is_empty() {
                return Ok(());
            }
            let old = self.file_history[self.rng.random_range(0..self.file_history.len())].clone();
            return self.import_file(old);
        }
        let n = self.rng.random_range(0..self.files.len());
        match roll {
            10..=19 => {
                self.files.remove(n);
                Ok(())
            }
            20..=29 => {
                let wrong = self.rng.random_range(0..self.nodes.len());
                let f = self.files[n].clone();
                self.misdeliver(&f, wrong)
            }
            _ => {
                let f = if self.rng.random_bool(0.2) { self.files[n].clone() } else { self.files.remove(n) };
                self.file_history.push(f.clone());
                if self.file_history.len() > HISTORY {
                    self.file_history.remove(0);
                }
                self.import_file(f)
            }
        }
    }

    /// A file reaches its receiver. A server imports it in a group and
    /// hands the answer out only after the commit (`fq-server import`); it
    /// may die before the commit, and then nothing of the file is kept and
    /// no answer goes out.
    fn import_file(&mut self, f: Carried) -> Sim<()> {
        let r = f.to;
        if trace_on() {
            eprintln!(
                "import at {} a file from {} written at {} ({} pushes)",
                self.nodes[r].name,
                self.nodes[f.from].name,
                f.written,
                f.pushes.len()
            );
        }
        if self.nodes[r].ledger.is_none() {
            return Ok(());
        }
        let server = self.nodes[r].kind != Kind::Device;
        let creds = self.creds(r, None);
        let now = self.node_now(r);
        let entropy = self.entropy();
        let name = self.nodes[r].name.clone();
        if server {
            self.nodes[r].ledger().begin_group().map_err(|e| e.to_string())?;
        }
        let before = self.state(r)?;
        let imported = file::import(self.nodes[r].ledger(), &creds, &f.bytes, now, entropy);
        let (answer, _) = match imported {
            Ok(done) => done,
            Err(e) => {
                if server {
                    self.nodes[r].ledger().rollback_group().map_err(|e| e.to_string())?;
                }
                // An answer to what the phone this one replaced wrote: its
                // acks are about another log. Refused whole.
                let replaced = f.answers.is_some_and(|w| self.restored_at[r] >= w);
                let unchanged = before == self.state(r)?;
                if replaced && unchanged && matches!(e, file::FileError::NotOurAnswer) {
                    return Ok(());
                }
                return Err(format!("{name} refused a sync file from {}: {e}", self.nodes[f.from].name));
            }
        };
        if server {
            if self.rng.random_bool(0.1) {
                // The process dies before the commit.
                self.drop_pipes_of(r);
                self.nodes[r].ledger = None;
                return self.nodes[r].open();
            }
            self.nodes[r].ledger().commit_group().map_err(|e| e.to_string())?;
        }
        self.check_policy(r)?;
        let Some(answer) = answer else {
            // An answer, taken in by the replica that wrote the file it answers.
            return self.check_township_acks(r, Some(f.written));
        };
        // What the answer acknowledges, its writer must hold.
        let (_, inner) = file::open(&answer, &self.ca.verifying_key(), &self.nodes[f.from].key)
            .map_err(|e| format!("{name}'s answer does not open for its receiver: {e}"))?;
        let mut pushes = f.pushes.clone();
        let mut answer_pushes = VecDeque::new();
        for frame in file::frames(&inner).map_err(|e| e.to_string())? {
            self.check_ack(&frame, &mut pushes, r).map_err(|e| format!("{name}'s answer file: {e}"))?;
            note_push(&frame, &mut answer_pushes);
        }
        self.files.push(Carried {
            from: r,
            to: f.from,
            bytes: answer,
            written: self.step,
            answers: Some(f.written),
            pushes: answer_pushes,
        });
        Ok(())
    }

    /// A file given to a replica it is not for is refused, and changes
    /// nothing there.
    fn misdeliver(&mut self, f: &Carried, wrong: usize) -> Sim<()> {
        if wrong == f.to || self.nodes[wrong].ledger.is_none() {
            return Ok(());
        }
        let before = self.state(wrong)?;
        let creds = self.creds(wrong, None);
        let now = self.node_now(wrong);
        let entropy = self.entropy();
        let took = file::import(self.nodes[wrong].ledger(), &creds, &f.bytes, now, entropy);
        let (from, to, at) =
            (self.nodes[f.from].name.clone(), self.nodes[f.to].name.clone(), self.nodes[wrong].name.clone());
        if took.is_ok() {
            return Err(format!("{at} imported a sync file {from} wrote for {to}"));
        }
        if before != self.state(wrong)? {
            return Err(format!("{at} refused a sync file {from} wrote for {to}, but kept some of it"));
        }
        Ok(())
    }

    /// What a refused file must leave as it was: the ledger's counts and its log head.
    fn state(&mut self, i: usize) -> Sim<([i64; 4], i64)> {
        Ok((self.nodes[i].ledger().counts().map_err(|e| e.to_string())?, self.head(i)?))
    }

    /// A device's township has acknowledged its log up to some position:
    /// every change there in the township's scope must be held by the
    /// township (unless it refused it). Checks what moved since the last
    /// look. `answer_written`: the step the answer that moved it was written
    /// at; an answer written before its writer was restored from a backup
    /// promised what the restore took back, and is not held to it.
    pub(super) fn check_township_acks(&mut self, i: usize, answer_written: Option<u64>) -> Sim<()> {
        if self.nodes[i].kind != Kind::Device || self.nodes[i].ledger.is_none() {
            return Ok(());
        }
        let Some(p) = self.parent_of(i) else { return Ok(()) };
        if self.nodes[p].ledger.is_none() {
            return Ok(());
        }
        let Some(up) = self.nodes[i].ledger().upstream().map_err(|e| e.to_string())? else { return Ok(()) };
        if self.nodes[p].ledger().identity().replica != up {
            return Ok(());
        }
        let acked = self.nodes[i].ledger().peer(up).map_err(|e| e.to_string())?.map_or(0, |row| row.acked_seq);
        let seen = self.acked_seen[i];
        if acked <= seen {
            // Taken back (an answer said its writer holds less now): what is acknowledged
            // again from here on is checked again.
            self.acked_seen[i] = acked;
            return Ok(());
        }
        self.acked_seen[i] = acked;
        if trace_on() {
            eprintln!("{} acked by {} moved {seen} -> {acked}", self.nodes[i].name, self.nodes[p].name);
        }
        if answer_written.is_some_and(|w| self.restored_at[p] >= w) {
            return Ok(());
        }
        let limit = u32::try_from(acked - seen).unwrap_or(u32::MAX);
        let rows = self.nodes[i].ledger().changes_since(seen, limit).map_err(|e| e.to_string())?;
        for row in rows.into_iter().filter(|row| row.log_seq <= acked) {
            let Some((case, village, _)) = self.expected.get(&row.hash).cloned() else { continue };
            // An echo: the township's own (or relayed) change is not sent
            // back to it, and an ack covers it without it. If a restore took
            // it from the township, recovery brings it back, not this ack.
            let echo = row.received_from == Some(up);
            if echo || !self.nodes[p].scope.contains(&village) || self.refusals.contains(&(p, row.hash)) {
                continue;
            }
            if !self.nodes[p].ledger().holds_change(case, &row.hash).map_err(|e| e.to_string())? {
                let from = match row.received_from {
                    Some(r) => self.name_of(r),
                    None => "written there".into(),
                };
                return Err(format!(
                    "{}'s log up to {acked} counts as acknowledged by {}, which does not hold change {} (at {}, {from})",
                    self.nodes[i].name,
                    self.nodes[p].name,
                    hex(&row.hash),
                    row.log_seq
                ));
            }
        }
        Ok(())
    }

    /// The node whose ledger has replica id `r`, by name.
    fn name_of(&self, r: fq_core::case::ReplicaId) -> String {
        let found = self.nodes.iter().find(|n| n.ledger.as_ref().is_some_and(|l| l.identity().replica == r));
        found.map_or_else(|| format!("replica {r}"), |n| format!("from {}", n.name))
    }

    /// After a server is restored: what it acknowledged to its devices
    /// before may be gone, and is not held against it.
    pub(super) fn forgive_acks_of_children(&mut self, p: usize) -> Sim<()> {
        let children: Vec<usize> = self.links.iter().filter(|l| l.parent == p && !l.peer).map(|l| l.child).collect();
        for d in children {
            if self.nodes[d].kind != Kind::Device || self.nodes[d].ledger.is_none() {
                continue;
            }
            let l = self.nodes[d].ledger();
            let acked = match l.upstream().map_err(|e| e.to_string())? {
                Some(up) => l.peer(up).map_err(|e| e.to_string())?.map_or(0, |row| row.acked_seq),
                None => 0,
            };
            self.acked_seen[d] = self.acked_seen[d].max(acked);
        }
        Ok(())
    }
}
