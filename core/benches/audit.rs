//! The merge audit on a county's replica: `conflicts`, `verify` and `compare`
//! at county scale (the issue's figures: 100,000 cases, about 2 million
//! changes, on 2 cores).
//!
//! ```text
//! cargo bench -p fq-core --bench audit                      # 100,000 cases
//! FQ_AUDIT_CASES=5000 cargo bench -p fq-core --bench audit  # a quick look
//! FQ_AUDIT_DIR=/var/tmp/fq-audit cargo bench -p fq-core --bench audit
//!                                                           # keep (and reuse) the replicas
//! ```
//!
//! It builds two replicas of one county with the same signed changes (what
//! devices send): the county server's, and a county admin's own (a device
//! replica with the county for scope). Every case has 20 changes written on
//! the devices of its village; one case in a hundred was edited on two
//! devices at once (a title, the description and, for some, a settlement
//! against an escalation). Then 100 cases get one more change: 50 on each
//! side. It times `conflicts` and `verify` (both cores) on the county's
//! replica and `compare` between the two, in memory, counting the bytes of
//! every frame (QUIC adds its packet headers and acknowledgements, a few
//! per cent, and the handshake, about 4 KB).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use fq_core::audit::{self, Comparison, ConflictFilter, VerifyOptions};
use fq_core::case::{AdminCode, CaseId, CaseNumber, Category, DeviceId, Level, Party, Risk, Role};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::doc::{Author, CaseDoc, FieldEdit, NewCaseDoc, NewEvent, actor_for};
use fq_core::ledger::{Durability, IncomingChange, InitOptions, Ledger, LedgerOptions, Tier};
use fq_core::sync::session::{Credentials, Session, SessionConfig, Side};
use fq_core::trust::{Grant, GrantRole, SignedGrant, sign_change};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const COUNTY: &str = "532924";
const T0: Timestamp = Timestamp(1_790_000_000_000);
const EDITS: usize = 20;
const DEVICES_PER_VILLAGE: usize = 17;
const BATCH_CASES: usize = 500;
const DIFFERING: usize = 100;

struct Device {
    key: SigningKey,
    grant: SignedGrant,
    device: DeviceId,
    name: String,
    role: Role,
    seq: u32,
}

struct County {
    ca: SigningKey,
    villages: Vec<(AdminCode, Vec<Device>)>,
}

fn county(rng: &mut ChaCha8Rng) -> County {
    let ca = SigningKey::from_bytes(&[9; 32]);
    let mut villages = Vec::new();
    for t in 0..10 {
        for v in 0..9 {
            let code = AdminCode::parse(&format!("{COUNTY}{:03}{:03}", 101 + t, 201 + v)).unwrap();
            let devices = (0..DEVICES_PER_VILLAGE)
                .map(|d| {
                    let key = SigningKey::from_bytes(&rng.random());
                    let role = if d == 0 { GrantRole::Mediator } else { GrantRole::GridWorker };
                    let subject = format!("d{t}{v}{d:02}");
                    let grant = SignedGrant::issue(
                        Grant {
                            county: AdminCode::parse(COUNTY).unwrap(),
                            subject: subject.clone(),
                            role,
                            scope: code.clone(),
                            serial: rng.random(),
                            public_key: key.verifying_key().to_bytes(),
                            issued_at: T0.0,
                        },
                        &ca,
                    )
                    .unwrap();
                    Device {
                        key,
                        grant,
                        device: DeviceId::from_bytes(rng.random()),
                        name: format!("调解员{t}{v}{d}"),
                        role: role.person_role().unwrap(),
                        seq: 0,
                    }
                })
                .collect();
            villages.push((code, devices));
        }
    }
    County { ca, villages }
}

fn replica(path: &Path, tier: Tier, name: &str, role: Role, county: &County) -> Ledger {
    let init = InitOptions { tier, name: name.into(), role, scope: AdminCode::parse(COUNTY).unwrap(), grid: None };
    let clock = Arc::new(ManualClock::new(T0.plus_days(400)));
    let opts = LedgerOptions { seed: None, durability: Durability::Relaxed, key: None };
    let mut l = Ledger::init(path, init, clock, opts).expect("init");
    for (_, devices) in &county.villages {
        for d in devices {
            l.add_grant(&d.grant).expect("grant");
        }
    }
    l
}

/// One case's changes, each signed by the device that made it.
fn case_changes(county: &mut County, i: usize, rng: &mut ChaCha8Rng) -> Vec<IncomingChange> {
    let v = i % county.villages.len();
    let (village, devices) = &mut county.villages[v];
    let village = village.clone();
    let a = rng.random_range(0..devices.len());
    devices[a].seq += 1;
    let at = Timestamp(T0.0 + i as i64 * 60_000);
    let number = CaseNumber::new(&village, 2026, devices[a].device, devices[a].seq);
    let parties = [Party::parse("李四,532924198001011230,13800000000").unwrap(), Party::parse("王五").unwrap()];
    let title = format!("第{i}号宅基地滴水纠纷");
    let new = NewCaseDoc {
        id: CaseId::from_bytes(rng.random()),
        number: &number,
        village: &village,
        grid: Some(1 + (i % 7) as u32),
        category: Category::ALL[i % Category::ALL.len()],
        title: &title,
        description: "两户相邻，东户屋檐滴水落入西户院内，雨季积水，双方多次争吵。",
        parties: &parties,
        risk: if i.is_multiple_of(20) { Risk::High } else { Risk::Low },
        flags: &[],
        level: Level::Village,
        recorded_at: at,
    };
    let author = |d: &Device| Author { name: d.name.clone(), role: d.role, id: None };
    let actor = |d: &Device, n: u64| actor_for(d.device, n.to_be_bytes());
    let mut doc = CaseDoc::create(&new, &author(&devices[a]), actor(&devices[a], i as u64), at).unwrap();
    let mut signer_of = vec![(doc.heads()[0], a)];
    let conflicted = i % 100 == 7;
    let steps = if conflicted { EDITS - 3 } else { EDITS - 1 };
    for k in 1..=steps {
        // Every third change is signed by another device of the village (the
        // document's actor stays the recorder's: switching actors would mean
        // saving and loading the document, and verify does not look at it).
        let b = if k % 3 == 0 { rng.random_range(0..devices.len()) } else { a };
        let at = Timestamp(at.0 + k as i64 * 3_600_000);
        let who = author(&devices[b]);
        let hash = match k % 10 {
            3 => doc.edit(&FieldEdit { risk: Some(Risk::Medium), ..FieldEdit::default() }, &who, at).unwrap(),
            5 => Some(doc.push_event(&NewEvent::Assign { name: devices[b].name.clone(), id: None }, &who, at).unwrap()),
            _ => Some(
                doc.push_event(&NewEvent::Note(format!("第{k}次调解：双方到场，说明诉求，约定下周再谈。")), &who, at)
                    .unwrap(),
            ),
        };
        if let Some(h) = hash {
            signer_of.push((h, b));
        }
    }
    if conflicted {
        // Two devices of the village, apart: each edits the title and the description.
        let (x, y) = (a, (a + 1) % devices.len());
        let mut other = CaseDoc::load(&doc.save(), actor(&devices[y], (i * 100 + 98) as u64)).unwrap();
        let mut mine = CaseDoc::load(&doc.save(), actor(&devices[x], (i * 100 + 99) as u64)).unwrap();
        let t = Timestamp(at.0 + 30 * 3_600_000);
        let edit = |title: &str, desc: &str| FieldEdit {
            title: Some(title.into()),
            description: Some(desc.into()),
            ..FieldEdit::default()
        };
        let h1 = mine.edit(&edit("甲方案", "东户同意加装接水槽。"), &author(&devices[x]), t).unwrap().unwrap();
        let h2 = other.edit(&edit("乙方案", "西户要求赔偿损失。"), &author(&devices[y]), t).unwrap().unwrap();
        signer_of.push((h1, x));
        signer_of.push((h2, y));
        let theirs = other.changes_after(&doc.heads());
        doc = mine;
        let parsed = theirs.iter().map(|(_, c)| fq_core::doc::parse_change(c).unwrap()).collect();
        doc.apply(parsed).unwrap();
    }
    let id = new.id;
    doc.changes_after(&[])
        .into_iter()
        .map(|(hash, bytes)| {
            let d = signer_of.iter().find(|(h, _)| *h == hash).map_or(a, |(_, d)| *d);
            let dev = &devices[d];
            IncomingChange {
                case: id,
                bytes,
                signer: Some(dev.key.verifying_key().to_bytes()),
                signature: Some(sign_change(&dev.key, &hash).to_vec()),
            }
        })
        .collect()
}

fn build(dir: &Path, cases: usize) -> (PathBuf, PathBuf, County, Vec<CaseId>) {
    let mut rng = ChaCha8Rng::seed_from_u64(20261121);
    let mut county = county(&mut rng);
    let (server_path, admin_path) = (dir.join("county.db"), dir.join("admin.db"));
    let done = dir.join("built");
    let mut ids = Vec::new();
    if done.exists() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for i in 0..cases {
            ids.push(case_changes(&mut county, i, &mut rng)[0].case);
        }
        println!("reusing the replicas in {}", dir.display());
        return (server_path, admin_path, county, ids);
    }
    let _ = std::fs::remove_file(&server_path);
    let _ = std::fs::remove_file(&admin_path);
    let mut server = replica(&server_path, Tier::County, "county", Role::CountyAdmin, &county);
    let mut admin = replica(&admin_path, Tier::Device, "王县长", Role::CountyAdmin, &county);
    let relay = fq_core::case::ReplicaId::from_bytes([7; 16]);
    let started = Instant::now();
    let mut changes = 0usize;
    let mut batch = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for i in 0..cases {
        let c = case_changes(&mut county, i, &mut rng);
        ids.push(c[0].case);
        changes += c.len();
        batch.extend(c);
        if (i + 1).is_multiple_of(BATCH_CASES) || i + 1 == cases {
            let b = std::mem::take(&mut batch);
            let r = server.apply_changes(Some(relay), b.clone()).expect("apply");
            assert!(r.refused.is_empty() && r.pending == 0, "{r:?}");
            admin.apply_changes(Some(relay), b).expect("apply");
            if (i + 1).is_multiple_of(10_000) {
                let secs = started.elapsed().as_secs_f64();
                println!("  built {} cases, {changes} changes, {:.0} changes/s", i + 1, changes as f64 / secs);
            }
        }
    }
    drop((server, admin));
    std::fs::write(&done, b"").expect("mark");
    println!("build: {cases} cases, {changes} changes, two replicas, in {:.0} s", started.elapsed().as_secs_f64());
    (server_path, admin_path, county, ids)
}

fn main() {
    let cases: usize = std::env::var("FQ_AUDIT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("FQ_AUDIT_DIR").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("dir");
    let (server_path, admin_path, county, ids) = build(&dir, cases);
    let clock = Arc::new(ManualClock::new(T0.plus_days(400)));

    // conflicts, on the county's replica.
    let mut server = Ledger::open_read_only(&server_path, clock.clone()).expect("open");
    let started = Instant::now();
    let found = audit::conflicts(&mut server, &ConflictFilter::default()).expect("conflicts");
    let n: usize = found.iter().map(|c| c.conflicts.len()).sum();
    println!(
        "conflicts: {n} open conflicts in {} cases of {cases} in {:.2} s (target 5 s)",
        found.len(),
        started.elapsed().as_secs_f64()
    );

    // verify, on both cores.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let opts = VerifyOptions { ca: Some(county.ca.verifying_key()), threads, ..VerifyOptions::default() };
    let started = Instant::now();
    let r = audit::verify(&server, &opts, &|_, _| {}).expect("verify");
    let secs = started.elapsed().as_secs_f64();
    assert!(r.passed(), "{:?}", r.failures.first());
    println!(
        "verify: {} cases, {} changes, {} signatures in {secs:.1} s = {:.0} signatures/s on {threads} threads (target 60 s)",
        r.cases,
        r.changes,
        r.signatures,
        r.signatures as f64 / secs
    );
    drop(server);

    // compare, with 100 cases differing: 50 changes only the county has, 50 only the admin.
    let mut server = Ledger::open(&server_path, clock.clone(), LedgerOptions::default()).expect("open");
    let mut admin = Ledger::open(&admin_path, clock.clone(), LedgerOptions::default()).expect("open");
    let marker = dir.join(format!("differing-{cases}"));
    if !marker.exists() {
        for (k, id) in ids.iter().step_by((ids.len() / DIFFERING).max(1)).take(DIFFERING).enumerate() {
            let side = if k % 2 == 0 { &mut server } else { &mut admin };
            side.add_note(*id, "县级核查：已电话回访双方").expect("note");
        }
        std::fs::write(&marker, b"").expect("mark");
    }
    let creds = Credentials { ca: county.ca.verifying_key(), own: None, peer_scope_limit: None };
    let now = clock.as_ref().clone();
    let now = fq_core::clock::Clock::now(&now);
    let started = Instant::now();
    let mut cmp = Comparison::new(&admin, None).expect("compare");
    let mut parent = Session::new(Side::Parent, &server, creds, SessionConfig::default(), None, now).expect("session");
    while !cmp.is_done() {
        while let Some(f) = cmp.poll_transmit() {
            parent.handle_input(&mut server, &f, now).expect("parent");
        }
        while let Some(f) = parent.poll_transmit() {
            cmp.handle_input(&mut admin, &f).expect("child");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let report = cmp.report().expect("report");
    let (out, inn) = (report.bytes_out, report.bytes_in);
    println!(
        "compare: {} differing cases found of {} in {secs:.1} s; frames {} B sent, {} B received = {:.2} MB (targets 30 s, 2 MB)",
        report.cases.len(),
        report.cases_here,
        out,
        inn,
        (out + inn) as f64 / 1e6
    );
    assert_eq!(report.cases.len(), DIFFERING.min(cases));
    let _ = std::fs::metadata(&server_path).map(|m| println!("county replica: {} bytes", m.len()));
}
