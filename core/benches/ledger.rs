//! Ledger benchmarks: building a village's worth of cases, listing, opening
//! and a single durable edit.
//!
//! Run with `cargo bench -p fq-core --bench ledger`. Besides criterion's
//! timings it prints the build rate and the database size per case, the
//! figures the issue asks for, and that size table by table (ADR 6).
//!
//! `FQ_BENCH_CASES` sets the number of cases, `FQ_BENCH_TEXT=short` uses
//! one-field edits, `FQ_BENCH_TIER=township` builds the ledger as a township
//! server (with its relay indexes, ADR 7) instead of a township officer's
//! device, `FQ_BENCH_DIR` keeps the file. `FQ_BENCH_ENCRYPT=1` builds and
//! opens the ledger encrypted (SQLCipher with a raw data key, ADR 10), to
//! compare with a plain file; the passphrase derivation that unwraps the key
//! once per `fq` command is measured by `examples/kdf_cost.rs`.

#![allow(clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fq_core::case::{AdminCode, CaseId, Category, Party, Risk, Role, Status};
use fq_core::clock::{ManualClock, Timestamp};
use fq_core::doc::FieldEdit;
use fq_core::ledger::{Durability, InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use fq_core::store::ListFilter;
use fq_core::vault::DataKey;

/// Cases in the big ledger; `FQ_BENCH_CASES` overrides it for a quick look.
const CASES: usize = 10_000;
const EDITS: usize = 20;
const T0: Timestamp = Timestamp(1_790_000_000_000);

fn init_opts() -> InitOptions {
    let server = std::env::var("FQ_BENCH_TIER").as_deref() == Ok("township");
    InitOptions {
        tier: if server { Tier::Township } else { Tier::Device },
        name: "宾居镇综治中心".into(),
        role: Role::TownshipOfficer,
        scope: AdminCode::parse("532924101").expect("valid code"),
        grid: None,
    }
}

fn new_case(i: usize) -> NewCase {
    let categories = Category::ALL;
    NewCase {
        category: categories[i % categories.len()],
        title: format!("第{i}号宅基地滴水纠纷"),
        description: "两户相邻，东户屋檐滴水落入西户院内，雨季积水，双方多次争吵。".into(),
        parties: vec![
            Party::parse("李四,532924198001011230,13800000000").expect("valid party"),
            Party::parse("王五,17012345678").expect("valid party"),
        ],
        risk: if i.is_multiple_of(20) { Risk::High } else { Risk::Low },
        flags: Vec::new(),
        village: Some(AdminCode::parse(&format!("532924101{:03}", 201 + i % 9)).expect("valid village")),
        grid: Some(u32::try_from(i % 7).unwrap_or(0) + 1),
    }
}

/// One of the 20 edits of a case: mostly session notes, some field edits.
/// `FQ_BENCH_TEXT=short` uses one-line notes (DESIGN.md's one-field edits)
/// instead of full sentences, to separate content from overhead.
fn edit(l: &mut Ledger, id: CaseId, i: usize, k: usize) {
    if std::env::var("FQ_BENCH_TEXT").as_deref() == Ok("short") {
        let r = match k % 4 {
            0 => l.edit(
                id,
                FieldEdit {
                    risk: Some(if k.is_multiple_of(8) { Risk::Medium } else { Risk::Low }),
                    ..Default::default()
                },
            ),
            1 => l.assign(id, if k.is_multiple_of(2) { "杨调解" } else { "李网格" }),
            _ => l.add_note(id, &format!("第{k}次回访")),
        };
        r.expect("edit succeeds");
        return;
    }
    let r = match k % 10 {
        0 => l.edit(
            id,
            FieldEdit {
                title: Some(format!("第{i}号宅基地滴水纠纷（第{k}次修改）")), ..Default::default()
            },
        ),
        3 => l.edit(
            id,
            FieldEdit { risk: Some(if k.is_multiple_of(4) { Risk::Medium } else { Risk::Low }), ..Default::default() },
        ),
        5 => l.assign(id, "杨调解"),
        7 => l.edit(
            id,
            FieldEdit {
                description: Some(format!("补充情况：第{k}次走访，双方情绪平稳。")), ..Default::default()
            },
        ),
        _ => l.add_note(id, &format!("第{k}次调解：双方到场，说明诉求，约定下周再谈。")),
    };
    r.expect("edit succeeds");
}

/// The data key when `FQ_BENCH_ENCRYPT=1`, made once per run.
fn bench_key() -> Option<DataKey> {
    static KEY: std::sync::OnceLock<Option<DataKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        (std::env::var("FQ_BENCH_ENCRYPT").as_deref() == Ok("1")).then(|| DataKey::generate().expect("key"))
    })
    .clone()
}

fn options() -> LedgerOptions {
    LedgerOptions { key: bench_key(), ..Default::default() }
}

fn build(path: &Path, cases: usize, durability: Durability) -> (Ledger, ManualClock, Vec<CaseId>) {
    let clock = ManualClock::new(T0);
    let opts = LedgerOptions { seed: Some(7), durability, key: bench_key() };
    let mut l = Ledger::init(path, init_opts(), Arc::new(clock.clone()), opts).expect("init");
    let mut ids = Vec::with_capacity(cases);
    for i in 0..cases {
        clock.advance_ms(60_000);
        let id = l.create_case(new_case(i)).expect("create").id;
        for k in 1..EDITS {
            clock.advance_ms(1_000);
            edit(&mut l, id, i, k);
        }
        ids.push(id);
    }
    (l, clock, ids)
}

/// Bytes per case of each table and index (SQLite's `dbstat`), largest first.
fn table_bytes(path: &Path, cases: usize) -> String {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let mut stmt = conn.prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").expect("dbstat");
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).expect("dbstat");
    let parts: Vec<String> =
        rows.map(|r| r.expect("dbstat")).map(|(name, b)| format!("{name} {:.0}", b as f64 / cases as f64)).collect();
    parts.join(", ")
}

fn file_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn benches(c: &mut Criterion) {
    // FQ_BENCH_DIR keeps the built ledger for inspection.
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = std::env::var_os("FQ_BENCH_DIR").map(std::path::PathBuf::from);
    let dir_path = keep.unwrap_or_else(|| dir.path().to_path_buf());
    let path = dir_path.join("ledger.db");

    // The village-scale build: 10,000 cases with 20 edits each (the creating
    // change plus 19 more), every operation its own transaction.
    let cases = std::env::var("FQ_BENCH_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    let started = Instant::now();
    let (ledger, _clock, ids) = build(&path, cases, Durability::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    drop(ledger); // closing checkpoints the WAL into the main file
    let bytes = file_bytes(&dir_path);
    println!(
        "build: {cases} cases x {EDITS} edits in {secs:.1} s = {:.0} ops/s (synchronous=NORMAL); \
         database {bytes} bytes = {:.0} bytes per case",
        (cases * EDITS) as f64 / secs,
        bytes as f64 / cases as f64
    );
    if bench_key().is_some() {
        println!("encrypted (FQ_BENCH_ENCRYPT=1): SQLCipher, raw 256-bit key");
    } else {
        println!("bytes per case by table: {}", table_bytes(&path, cases));
    }

    let clock: Arc<ManualClock> = Arc::new(ManualClock::new(T0.plus_days(10)));
    let mut g = c.benchmark_group("ledger_10k");
    g.bench_function("open", |b| b.iter(|| Ledger::open(&path, clock.clone(), options()).expect("open")));

    let reader = Ledger::open_read_only_with_key(&path, clock.clone(), bench_key().as_ref()).expect("open");
    let filter = ListFilter {
        status: Some(Status::Mediating),
        risk: Some(Risk::Low),
        within: Some(AdminCode::parse("532924101203").expect("valid")),
        ..Default::default()
    };
    println!("filtered list returns {} of {cases} cases", reader.list(&filter).expect("list").len());
    g.bench_function("list_filtered", |b| b.iter(|| reader.list(&filter).expect("list")));
    let search = ListFilter { search: Some("第77".into()), ..Default::default() };
    g.bench_function("list_search_title", |b| b.iter(|| reader.list(&search).expect("list")));
    let all = ListFilter::default();
    g.bench_function("list_all", |b| b.iter(|| reader.list(&all).expect("list")));

    // One edit with its durable commit (synchronous=FULL), on the big file.
    let mut writer = Ledger::open(&path, clock.clone(), options()).expect("open");
    let mut n = 0usize;
    g.bench_function("edit_one_note_durable", |b| {
        b.iter(|| {
            n += 1;
            writer.add_note(ids[n % ids.len()], "回访：双方协议履行良好。").expect("note")
        })
    });
    g.finish();

    let mut g = c.benchmark_group("create");
    g.sample_size(10);
    g.bench_function("case_with_20_edits_durable", |b| {
        b.iter_batched(
            || {
                let d = tempfile::tempdir().expect("tempdir");
                let p = d.path().join("l.db");
                (d, p)
            },
            |(d, p)| {
                let r = build(&p, 1, Durability::Full);
                drop(r);
                d
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(ledger, benches);
criterion_main!(ledger);
