//! `fq demo`: the whole story on 127.0.0.1, on real ledgers, real servers and
//! real QUIC, in a temporary directory, in well under a minute.
//!
//! A county CA issues certificates; a county server and two township servers
//! start; four village devices (and a township officer's and a county
//! admin's) record and work cases offline. A township server goes down and
//! comes back; a case is escalated and accepted at the township; a county
//! admin's decision travels down to the village; a concurrent edit is shown
//! with both values and their authors. At the end every replica is compared
//! with the county for its scope.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use fq_core::case::{AdminCode, CaseId, Category, Outcome, Party, Risk};
use fq_core::clock::{SystemClock, Timestamp};
use fq_core::county::County;
use fq_core::doc::{CaseState, FieldEdit};
use fq_core::ledger::{InitOptions, Ledger, LedgerOptions, NewCase, Tier};
use fq_core::trust::GrantRole;
use fq_core::vault;
use fq_sync_server::ca::{Bundle, CertificateAuthority};
use fq_sync_server::client::{SyncOptions, sync_once};
use fq_sync_server::config::ServerConfig;
use fq_sync_server::server;
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::lang::Lang;

const COUNTY: &str = "532924";
/// 宾居镇 and two of its villages; 金牛镇 and one of its communities.
const BINJU: &str = "532924101";
const SHUANGTIAN: &str = "532924101201";
const BINJU_OTHER: &str = "532924101202";
const JINNIU: &str = "532924100";
/// How long the demo waits for a township to pass changes on to the county.
const RELAY_WAIT: Duration = Duration::from_secs(20);

/// Prints the narrative in the user's language (nothing in JSON mode).
struct Narrator {
    lang: Lang,
    json: bool,
}

impl Narrator {
    fn say(&self, zh: &str, en: &str) {
        if !self.json {
            println!("{}", fq_core::text::escape(if self.lang == Lang::Zh { zh } else { en }));
        }
    }

    fn step(&self, n: u32, zh: &str, en: &str) {
        if !self.json {
            println!();
        }
        self.say(&format!("【第{n}步】{zh}"), &format!("[Step {n}] {en}"));
    }
}

/// A server running in this process.
struct Running {
    addr: SocketAddr,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), server::ServeError>>>,
}

/// A field device: its ledger and its certificate bundle.
struct Device {
    name: String,
    ledger: Ledger,
    bundle: Bundle,
}

/// Runs the demo.
pub(crate) fn run(lang: Lang, json: bool) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("fq-demo-").tempdir().context("cannot create a temporary directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let n = Narrator { lang, json };
    let started = Instant::now();
    let summary = story(&rt, dir.path(), &n)?;
    n.say(
        &format!("\n演示完成，用时 {:.1} 秒。", started.elapsed().as_secs_f64()),
        &format!("\nDemo finished in {:.1} s.", started.elapsed().as_secs_f64()),
    );
    if json {
        let mut out = fq_core::text::SafeWriter::new(std::io::stdout().lock(), fq_core::text::Escape::Json);
        serde_json::to_writer_pretty(&mut out, &summary)?;
        std::io::Write::write_all(&mut out, b"\n")?;
    }
    Ok(())
}

fn story(rt: &Runtime, dir: &Path, n: &Narrator) -> Result<serde_json::Value> {
    let county = County::binchuan();
    let village = |code: &str| -> Result<String> {
        let c = AdminCode::parse(code)?;
        Ok(county.village(&c).map(|v| v.name.clone()).unwrap_or_else(|| code.to_owned()))
    };
    let person = |code: &str, i: usize| -> Result<String> {
        let c = AdminCode::parse(code)?;
        let v = county.village(&c).context("village in fixture")?;
        Ok(v.people.get(i).map(|p| p.name.clone()).unwrap_or_else(|| format!("{code}-{i}")))
    };
    n.say(
        &format!(
            "枫桥式案件台账演示：{}（{} 个乡镇、{} 个村/社区、{} 名网格员和调解员，均为虚构）。全部在本机 127.0.0.1 上运行真实的服务器和 QUIC 连接。",
            county.name,
            county.townships.len(),
            county.villages().count(),
            county.people_count()
        ),
        &format!(
            "fq demo: {} ({} townships, {} villages, {} grid workers and mediators, all fictional). Real servers and real QUIC on 127.0.0.1.",
            county.name,
            county.townships.len(),
            county.villages().count(),
            county.people_count()
        ),
    );
    n.say(&format!("数据目录：{}", dir.display()), &format!("Data directory: {}", dir.display()));

    // 1. The county's CA and everyone's certificates.
    n.step(
        1,
        "县综治中心建立证书中心（CA），为县、乡镇服务器和每台设备签发证书。",
        "The county sets up its certificate authority and issues certificates to the servers and every device.",
    );
    let ca_dir = dir.join("ca");
    let ca = CertificateAuthority::init(&ca_dir, &AdminCode::parse(COUNTY)?, SystemTime::now())?;
    let issue = |id: &str, role: GrantRole, scope: &str| -> Result<PathBuf> {
        let bundle = ca.issue(&id.parse()?, role, &AdminCode::parse(scope)?, SystemTime::now())?;
        let path = dir.join(format!("{id}.bundle.json"));
        bundle.save(&path)?;
        Ok(path)
    };
    let county_bundle = issue("county", GrantRole::CountyServer, COUNTY)?;
    let binju_bundle = issue("binju", GrantRole::TownshipServer, BINJU)?;
    let jinniu_bundle = issue("jinniu", GrantRole::TownshipServer, JINNIU)?;
    let jinniu_village = county
        .villages()
        .find(|(t, _)| t.code.as_str() == JINNIU)
        .map(|(_, v)| v.code.to_string())
        .context("a village of 金牛镇")?;
    let people = [
        ("a", GrantRole::GridWorker, SHUANGTIAN.to_owned(), person(SHUANGTIAN, 0)?),
        ("b", GrantRole::Mediator, SHUANGTIAN.to_owned(), person(SHUANGTIAN, 1)?),
        ("c", GrantRole::Mediator, BINJU_OTHER.to_owned(), person(BINJU_OTHER, 0)?),
        ("d", GrantRole::Mediator, jinniu_village.clone(), person(&jinniu_village, 0)?),
        ("e", GrantRole::TownshipOfficer, BINJU.to_owned(), "宾居镇综治中心·赵乡".to_owned()),
        ("f", GrantRole::CountyAdmin, COUNTY.to_owned(), "县调处中心·钱县".to_owned()),
    ];
    let mut devices = Vec::new();
    for (id, role, scope, name) in &people {
        let path = issue(&format!("device-{id}"), *role, scope)?;
        devices.push(device(dir, id, name, *role, scope, &path)?);
    }
    n.say(
        "每台手机的台账都已加密（口令派生的密钥保护数据密钥），证书包和私钥存在加密的台账里。",
        "Every phone's ledger is encrypted (its data key wrapped by a passphrase-derived key); the bundle and its private key live inside it.",
    );
    n.say(
        &format!(
            "已签发 {} 份证书：县服务器、宾居镇和金牛镇服务器，{}村两台手机（网格员{}、调解员{}），{}调解员{}，{}调解员{}，乡镇干部和县级管理员各一台。",
            ca.issued()?.len(),
            village(SHUANGTIAN)?,
            people[0].3,
            people[1].3,
            village(BINJU_OTHER)?,
            people[2].3,
            village(&jinniu_village)?,
            people[3].3,
        ),
        &format!(
            "{} certificates issued: county server, 宾居镇 and 金牛镇 servers, two phones in {} ({}, {}), {} in {}, {} in {}, a township officer and a county admin.",
            ca.issued()?.len(),
            village(SHUANGTIAN)?,
            people[0].3,
            people[1].3,
            people[2].3,
            village(BINJU_OTHER)?,
            people[3].3,
            village(&jinniu_village)?,
        ),
    );

    // 2. The servers.
    let localhost: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    let mut county_srv = start(rt, Tier::County, &dir.join("county"), &county_bundle, localhost, None)?;
    let mut binju = start(rt, Tier::Township, &dir.join("binju"), &binju_bundle, localhost, Some(county_srv.addr))?;
    let mut jinniu = start(rt, Tier::Township, &dir.join("jinniu"), &jinniu_bundle, localhost, Some(county_srv.addr))?;
    n.step(
        2,
        &format!(
            "县服务器在 {} 启动；宾居镇服务器在 {}、金牛镇服务器在 {} 启动，并各自连上县服务器。",
            county_srv.addr, binju.addr, jinniu.addr
        ),
        &format!(
            "County server on {}; 宾居镇 on {} and 金牛镇 on {}, each syncing up to the county.",
            county_srv.addr, binju.addr, jinniu.addr
        ),
    );

    // 3. Offline work in the villages.
    let [a, b, c, d, e, f] = &mut devices[..] else { bail!("six devices") };
    n.step(
        3,
        "村里没有信号。网格员走访时登记一起宅基地滴水纠纷；其他村的调解员也各登记了案件。",
        "No signal in the villages. The grid worker records an eaves-dripping dispute; mediators in other villages record cases too.",
    );
    let case = a.ledger.create_case(new_case(
        Category::Neighbor,
        "宅基地滴水纠纷",
        "东户屋檐滴水落入西户院内，双方多次争吵。",
    ))?;
    c.ledger.create_case(new_case(Category::Water, "灌溉用水分配纠纷", "上下游两户因轮灌时间发生争执。"))?;
    d.ledger.create_case(new_case(Category::Property, "小区停车位纠纷", "业主与物业因车位收费发生争议。"))?;
    print_case(n, &a.ledger.show(case.id, false)?.state);

    // 4. Signal: everyone syncs with their township.
    n.step(4, "有信号了：各台手机与乡镇服务器同步。", "Signal: each phone syncs with its township server.");
    for (dev, srv) in [(&mut *a, binju.addr), (&mut *b, binju.addr), (&mut *c, binju.addr), (&mut *d, jinniu.addr)] {
        sync(rt, n, dev, srv)?;
    }

    // 5. Concurrent offline edits, and an outage.
    n.step(
        5,
        "两人各自离线修改同一案件的标题；此时宾居镇服务器停机维护。",
        "Both change the same case's title offline; meanwhile the 宾居镇 server goes down for maintenance.",
    );
    a.ledger.edit(
        case.id,
        FieldEdit {
            title: Some("宅基地滴水及排水沟纠纷".into()), risk: Some(Risk::Medium), ..Default::default()
        },
    )?;
    b.ledger.edit(case.id, FieldEdit { title: Some("相邻房屋屋檐滴水纠纷".into()), ..Default::default() })?;
    b.ledger.add_note(case.id, "双方到村委会，李四同意加装接水槽，王五要求赔偿院墙修补费用。")?;
    b.ledger.escalate(case.id, "涉及宅基地界址，需乡镇协调")?;
    stop(rt, &mut binju)?;
    let failed = rt.block_on(sync_once(&mut a.ledger, &a.bundle, binju.addr, &quick_options(), |_| {}));
    match failed {
        Err(err) => {
            let err = anyhow::Error::from(err);
            n.say(
                &format!("  手机 A 同步失败：{}", crate::message::describe(&err, Lang::Zh).message),
                &format!("  Phone A cannot sync: {}", crate::message::describe(&err, Lang::En).message),
            )
        }
        Ok(_) => bail!("a sync to a stopped server succeeded"),
    }
    binju = restart(rt, binju, &binju_bundle, county_srv.addr)?;
    n.say(
        &format!("  宾居镇服务器恢复（{}），数据完好。", binju.addr),
        &format!("  The 宾居镇 server is back ({}) with its data intact.", binju.addr),
    );
    sync(rt, n, a, binju.addr)?;
    sync(rt, n, b, binju.addr)?;
    sync(rt, n, a, binju.addr)?;
    let view = a.ledger.show(case.id, false)?;
    if view.conflicts.is_empty() {
        bail!("the concurrent title edit did not show as a conflict");
    }
    n.say(
        "  ⚠ 并发修改：同一字段有两个值，两个都保留，谁在哪台设备、何时写的都有记录：",
        "  ⚠ Concurrent edit: one field holds two values, both kept, each with who wrote it, on which device, and when:",
    );
    for conflict in &view.conflicts {
        for (i, v) in conflict.values.iter().enumerate() {
            let who = v.author.as_ref().map(|a| a.name.as_str()).unwrap_or("?");
            let device = v.device.as_deref().map(|d| &d[..4]).unwrap_or("?");
            let at = v.at.map(local_time).unwrap_or_default();
            let shown = if i == 0 { if n.lang == Lang::Zh { "（当前显示）" } else { " (shown)" } } else { "" };
            n.say(
                &format!(
                    "    {}：“{}”{} — {}，设备 {}，{}",
                    field_label(&conflict.field),
                    v.value,
                    shown,
                    who,
                    device,
                    at
                ),
                &format!("    {}: \"{}\"{} — {}, device {}, {}", conflict.field, v.value, shown, who, device, at),
            );
        }
    }

    // 6. The township accepts the escalation.
    n.step(
        6,
        "乡镇干部同步后接收上报的案件，在乡镇一级调解。",
        "The township officer syncs, accepts the escalated case and mediates it at the township.",
    );
    sync(rt, n, e, binju.addr)?;
    e.ledger.accept_escalation(case.id)?;
    e.ledger.add_note(case.id, "乡镇组织双方现场勘查，确定滴水范围。")?;
    sync(rt, n, e, binju.addr)?;
    print_case(n, &e.ledger.show(case.id, false)?.state);

    // 7. The county admin's decision reaches the village.
    n.step(
        7,
        "乡镇服务器把变更传给县服务器；县级管理员给出指导意见，意见经县、乡镇传回村里。",
        "The township passes the changes up; the county admin writes guidance, which travels back down to the village.",
    );
    wait_until(rt, RELAY_WAIT, || has_case(&county_srv.dir, case.id))
        .context("the county server did not receive the case from the township in time")?;
    sync(rt, n, f, county_srv.addr)?;
    f.ledger.add_note(case.id, "县级指导意见：依法依规处理，注意化解邻里情绪。")?;
    sync(rt, n, f, county_srv.addr)?;
    let guidance = |state: &CaseState| {
        state.events.iter().any(|ev| ev.text.as_deref().is_some_and(|t| t.starts_with("县级指导意见")))
    };
    wait_until(rt, RELAY_WAIT, || {
        Ok(open_read_only(&binju.dir)?.show(case.id, false).map(|v| guidance(&v.state)).unwrap_or(false))
    })
    .context("the county's guidance did not reach the township in time")?;
    sync(rt, n, b, binju.addr)?;
    if !guidance(&b.ledger.show(case.id, false)?.state) {
        bail!("the county admin's guidance did not reach the village");
    }
    n.say(
        &format!("  调解员{}的手机上已经看到县级意见。", b.name),
        &format!("  Mediator {}'s phone now shows the county's guidance.", b.name),
    );
    // The mediation ends well, back in the village.
    e.ledger.settle(case.id, "李四十日内加装接水槽并修补院墙，王五不再追究。双方签字。")?;
    sync(rt, n, e, binju.addr)?;
    sync(rt, n, b, binju.addr)?;
    b.ledger.edit(case.id, FieldEdit { title: Some("相邻房屋屋檐滴水纠纷".into()), ..Default::default() })?;
    b.ledger.follow_up(case.id, Outcome::Honoured, Some("接水槽已安装，双方关系缓和。"))?;
    for dev in [&mut *b, &mut *a, &mut *c, &mut *e] {
        sync(rt, n, dev, binju.addr)?;
    }
    sync(rt, n, d, jinniu.addr)?;
    wait_until(rt, RELAY_WAIT, || {
        let county_view = open_read_only(&county_srv.dir)?;
        let town = open_read_only(&binju.dir)?;
        Ok(digest(&county_view, BINJU)? == digest(&town, BINJU)?)
    })
    .context("the county and 宾居镇 did not converge in time")?;
    sync(rt, n, f, county_srv.addr)?;
    for dev in [&mut *a, &mut *b] {
        sync(rt, n, dev, binju.addr)?;
    }

    let final_view = b.ledger.show(case.id, true)?;

    // 8. Everyone holds the same data for their scope.
    n.step(
        8,
        "对账：每个副本与县服务器在各自范围内逐案比对。",
        "Check: every replica against the county, case by case, within its scope.",
    );
    let top = open_read_only(&county_srv.dir)?;
    let mut rows = Vec::new();
    let mut all_equal = true;
    let replicas: Vec<(String, Ledger)> = vec![
        (server_name(n.lang, "binju").into(), open_read_only(&binju.dir)?),
        (server_name(n.lang, "jinniu").into(), open_read_only(&jinniu.dir)?),
    ];
    for (label, l) in
        replicas.iter().map(|(s, l)| (s.as_str(), l)).chain(devices.iter().map(|d| (d.name.as_str(), &d.ledger)))
    {
        let scope = l.identity().scope.clone();
        let mine = l.digest(&scope)?;
        let theirs = top.digest(&scope)?;
        let same = mine == theirs;
        all_equal &= same;
        let padded = pad(label, 24);
        n.say(
            &format!(
                "  {padded} 范围 {scope}：{} 件案件，{}",
                mine.len(),
                if same { "与县服务器一致 ✓" } else { "与县服务器不一致 ✗" }
            ),
            &format!(
                "  {padded} scope {scope}: {} cases, {}",
                mine.len(),
                if same { "same as the county ✓" } else { "DIFFERS from the county ✗" }
            ),
        );
        rows.push(json!({ "replica": label, "scope": scope, "cases": mine.len(), "same_as_county": same }));
    }
    print_case(n, &final_view.state);
    for ev in &final_view.state.events {
        let who = ev.author.as_ref().map(|a| a.name.as_str()).unwrap_or("?");
        let text = ev.text.as_deref().unwrap_or("");
        n.say(
            format!("    {} {} {} {}", local_time(ev.at), ev.kind.zh(), who, text).trim_end(),
            format!("    {} {} {} {}", local_time(ev.at), ev.kind.en(), who, text).trim_end(),
        );
    }
    for srv in [&mut binju, &mut jinniu, &mut county_srv] {
        stop(rt, srv)?;
    }
    if !all_equal {
        bail!("a replica differs from the county within its scope");
    }
    Ok(json!({
        "case": final_view.state,
        "conflict_seen": view.conflicts,
        "replicas": rows,
        "all_equal": all_equal,
    }))
}

fn new_case(category: Category, title: &str, description: &str) -> NewCase {
    NewCase {
        category,
        title: title.into(),
        description: description.into(),
        parties: vec![
            Party { name: "李四".into(), id_number: None, phone: None },
            Party { name: "王五".into(), id_number: None, phone: None },
        ],
        risk: Risk::Low,
        flags: Vec::new(),
        village: None,
        grid: None,
    }
}

/// The passphrase of the demo's phones: the demo sets up its own (ADR 10), as `fq init`
/// would have asked each user for one.
const DEMO_PASSPHRASE: &str = "演示用口令：门前有3棵柿子树";

/// A phone as `fq init --bundle` sets it up: a private directory, the ledger encrypted under a
/// key wrapped by the passphrase, the bundle (with its private key) inside the ledger.
fn device(dir: &Path, id: &str, name: &str, role: GrantRole, scope: &str, bundle: &Path) -> Result<Device> {
    let bundle = Bundle::load(bundle)?;
    let (tier, person) = (Tier::Device, role.person_role().context("a person's role")?);
    let path = dir.join(format!("device-{id}"));
    vault::private_dir(&path)?;
    let ledger_path = path.join("ledger.db");
    let passphrase = vault::Passphrase::new(DEMO_PASSPHRASE.to_owned());
    let key = vault::Vault::for_ledger(&ledger_path).create(
        &passphrase,
        vault::WipePolicy::After(vault::DEFAULT_WIPE_AFTER),
        vault::KdfParams::DEFAULT,
    )?;
    let init = InitOptions { tier, name: name.into(), role: person, scope: AdminCode::parse(scope)?, grid: None };
    let opts = LedgerOptions { key: Some(key), ..Default::default() };
    let mut ledger = Ledger::init(&ledger_path, init, Arc::new(SystemClock), opts)?;
    ledger.add_grant(bundle.grant())?;
    ledger.save_enrolment(&String::from_utf8(bundle.to_json()?)?)?;
    Ok(Device { name: name.into(), ledger, bundle })
}

fn start(
    rt: &Runtime,
    tier: Tier,
    dir: &Path,
    bundle: &Path,
    listen: SocketAddr,
    upstream: Option<SocketAddr>,
) -> Result<Running> {
    let mut config = ServerConfig::new(tier, listen, dir.to_path_buf(), bundle.to_path_buf());
    config.upstream = upstream;
    // The demo wants the township to pass changes on within a second or two.
    config.sync_interval = Duration::from_secs(1);
    let srv = rt.block_on(async { server::bind(config) })?;
    let addr = srv.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = rt.spawn(srv.run(async move {
        let _ = rx.await;
    }));
    Ok(Running { addr, dir: dir.to_path_buf(), stop: Some(tx), task: Some(task) })
}

fn stop(rt: &Runtime, srv: &mut Running) -> Result<()> {
    if let Some(tx) = srv.stop.take() {
        let _ = tx.send(());
    }
    if let Some(task) = srv.task.take() {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
            .context("a server did not shut down in time")???;
    }
    Ok(())
}

/// Starts a stopped township server again on the same port and data.
fn restart(rt: &Runtime, old: Running, bundle: &Path, upstream: SocketAddr) -> Result<Running> {
    start(rt, Tier::Township, &old.dir, bundle, old.addr, Some(upstream))
        .or_else(|_| start(rt, Tier::Township, &old.dir, bundle, (Ipv4Addr::LOCALHOST, 0).into(), Some(upstream)))
}

fn quick_options() -> SyncOptions {
    SyncOptions { connect_timeout: Duration::from_secs(2), ..SyncOptions::default() }
}

fn sync(rt: &Runtime, n: &Narrator, dev: &mut Device, server: SocketAddr) -> Result<()> {
    let report = rt
        .block_on(sync_once(&mut dev.ledger, &dev.bundle, server, &SyncOptions::default(), |_| {}))
        .with_context(|| format!("{} could not sync with {server}", dev.name))?;
    let s = &report.stats;
    n.say(
        &format!(
            "  {} ⇄ {}：发送 {} 条，接收 {} 条，被拒 {} 条，{} 字节",
            dev.name,
            server_name(n.lang, report.server.id.as_str()),
            s.sent,
            s.received,
            s.refused_by_peer,
            s.bytes_out + s.bytes_in
        ),
        &format!(
            "  {} ⇄ {}: sent {}, received {}, refused {}, {} bytes",
            dev.name,
            server_name(n.lang, report.server.id.as_str()),
            s.sent,
            s.received,
            s.refused_by_peer,
            s.bytes_out + s.bytes_in
        ),
    );
    Ok(())
}

fn open_read_only(dir: &Path) -> Result<Ledger> {
    Ok(Ledger::open_read_only(&dir.join("ledger.db"), Arc::new(SystemClock))?)
}

fn has_case(dir: &Path, case: CaseId) -> Result<bool> {
    Ok(open_read_only(dir)?.resolve(&case.to_string()).is_ok())
}

fn digest(l: &Ledger, scope: &str) -> Result<Vec<(CaseId, [u8; 32])>> {
    Ok(l.digest(&AdminCode::parse(scope)?)?)
}

/// Polls `done` until it says yes, up to `limit`.
fn wait_until(rt: &Runtime, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    loop {
        if done().unwrap_or(false) {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("gave up after {limit:?}");
        }
        rt.block_on(tokio::time::sleep(Duration::from_millis(200)));
    }
}

fn print_case(n: &Narrator, s: &CaseState) {
    n.say(
        &format!(
            "  {}「{}」{} · {} · 风险{} · {}",
            s.number,
            s.title,
            s.category.zh(),
            s.status.zh(),
            s.risk.zh(),
            s.level.zh()
        ),
        &format!(
            "  {} \"{}\" {} · {} · risk {} · {}",
            s.number,
            s.title,
            s.category.en(),
            s.status.en(),
            s.risk.en(),
            s.level.en()
        ),
    );
}

/// The demo's servers by their certificate ids, as people name them.
fn server_name(lang: Lang, id: &str) -> &str {
    match id {
        "county" => lang.pick("县服务器", "county server"),
        "binju" => lang.pick("宾居镇服务器", "宾居镇 server"),
        "jinniu" => lang.pick("金牛镇服务器", "金牛镇 server"),
        other => other,
    }
}

fn field_label(field: &str) -> &str {
    match field {
        "title" => "标题",
        "risk" => "风险",
        "category" => "类别",
        "responsible" => "责任人",
        "grid" => "网格",
        other => other,
    }
}

/// China Standard Time, to the minute.
fn local_time(t: Timestamp) -> String {
    Timestamp(t.0 + 8 * 3_600_000)
        .to_utc()
        .map(|d| d.format("%m-%d %H:%M").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// `text` and spaces to fill `columns` terminal columns (a Chinese character takes two).
fn pad(text: &str, columns: usize) -> String {
    let used = unicode_width::UnicodeWidthStr::width(text);
    format!("{text}{}", " ".repeat(columns.saturating_sub(used)))
}
