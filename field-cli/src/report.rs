//! `fq report monthly|subsidy`: the core's figures (`fq_core::report`) in the
//! format asked for: a table on screen, CSV, JSON, the one-file HTML report
//! with charts, or an xlsx workbook.
//!
//! A file given with `--out` is written to a temporary file beside it and
//! renamed into place, so a crash never leaves half a report under the real
//! name. Reports only read: they work on a server's data directory beside the
//! running server. Text from cases is escaped for each format (HTML entities,
//! spreadsheet formulas, control characters) by the core's writers.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use comfy_table::{ContentArrangement, Table, presets};
use fq_core::case::{Category, Risk};
use fq_core::ledger::{Ledger, LedgerError};
use fq_core::report::{self, CaseLine, Month, Monthly, Subsidy, html, sheet};
use fq_core::text::{Escape, SafeWriter};
use serde_json::json;

use crate::cli::ReportFormat;
use crate::lang::Lang;
use crate::render::{self, date, minute};
use crate::request::{Report, ReportKind};

/// Makes Excel read a CSV file as UTF-8.
const UTF8_BOM: &[u8] = "\u{feff}".as_bytes();

fn format_code(f: ReportFormat) -> &'static str {
    match f {
        ReportFormat::Table => "table",
        ReportFormat::Csv => "csv",
        ReportFormat::Json => "json",
        ReportFormat::Html => "html",
        ReportFormat::Xlsx => "xlsx",
    }
}

/// Runs one report request.
pub(crate) fn run(out: &mut dyn Write, lang: Lang, json: bool, ledger: &Ledger, r: Report) -> anyhow::Result<()> {
    let now = ledger.now();
    let month = r.month.unwrap_or_else(|| Month::of(now).previous());
    let own = &ledger.identity().scope;
    if let Some(s) = &r.scope
        && !own.contains(s)
    {
        return Err(LedgerError::OutOfScope { what: "area", code: s.to_string(), scope: own.to_string() }.into());
    }
    // `--json` alone asks for the JSON form.
    let format = if json && r.format == ReportFormat::Table { ReportFormat::Json } else { r.format };
    let (kind, bytes) = match &r.kind {
        ReportKind::Monthly => {
            let m = report::monthly(ledger, month, r.scope.as_ref(), now)?;
            ("monthly", monthly_bytes(&m, lang, format)?)
        }
        ReportKind::Subsidy { person } => {
            let s = report::subsidy(ledger, month, r.scope.as_ref(), person.as_deref(), now)?;
            ("subsidy", subsidy_bytes(&s, lang, format)?)
        }
    };
    match &r.out {
        None => {
            out.write_all(&bytes)?;
            Ok(())
        }
        Some(path) => {
            write_file(path, &bytes, format)?;
            if json {
                return render::json_line(
                    out,
                    &json!({ "ok": true, "report": kind, "month": month, "format": format_code(format), "out": path.to_string_lossy() }),
                );
            }
            let what = match (lang, kind) {
                (Lang::Zh, "monthly") => format!("{}年{}月月度统计报表", month.year(), month.month()),
                (Lang::Zh, _) => format!("{}年{}月以案定补统计", month.year(), month.month()),
                (Lang::En, "monthly") => format!("the monthly report of {month}"),
                (Lang::En, _) => format!("the cases-per-person sheet of {month}"),
            };
            match lang {
                Lang::Zh => writeln!(out, "已生成{what}：{}", path.display())?,
                Lang::En => writeln!(out, "Wrote {what} to {}", path.display())?,
            }
            Ok(())
        }
    }
}

/// Writes a report file whole, or not at all.
fn write_file(path: &Path, bytes: &[u8], format: ReportFormat) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("cannot create a file in {}", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        if format == ReportFormat::Csv {
            w.write_all(UTF8_BOM)?;
        }
        w.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
        w.flush().with_context(|| format!("cannot write {}", path.display()))?;
    }
    tmp.as_file().sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// JSON with every control character and bidirectional override escaped.
fn json_bytes(value: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    let mut w = SafeWriter::new(Vec::new(), Escape::Json);
    serde_json::to_writer_pretty(&mut w, value).map_err(std::io::Error::from)?;
    w.write_all(b"\n")?;
    Ok(w.into_inner()?)
}

fn monthly_bytes(m: &Monthly, lang: Lang, format: ReportFormat) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        ReportFormat::Table => monthly_table(m, lang).into_bytes(),
        ReportFormat::Json => json_bytes(m)?,
        ReportFormat::Csv => sheet::monthly_csv(m, lang)?.into_bytes(),
        ReportFormat::Html => html::monthly(m, lang)?.into_bytes(),
        ReportFormat::Xlsx => sheet::monthly_xlsx(m, lang)?,
    })
}

fn subsidy_bytes(s: &Subsidy, lang: Lang, format: ReportFormat) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        ReportFormat::Table => subsidy_table(s, lang).into_bytes(),
        ReportFormat::Json => json_bytes(s)?,
        ReportFormat::Csv => sheet::subsidy_csv(s, lang)?.into_bytes(),
        ReportFormat::Html => html::subsidy(s, lang)?.into_bytes(),
        ReportFormat::Xlsx => sheet::subsidy_xlsx(s, lang)?,
    })
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    t
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn signed(x: i64) -> String {
    if x > 0 { format!("+{x}") } else { x.to_string() }
}

fn area(name: Option<&str>, code: &str) -> String {
    match name {
        Some(n) => format!("{n}（{code}）"),
        None => code.to_owned(),
    }
}

fn cases_table(lang: Lang, cases: &[CaseLine], overdue: bool) -> String {
    let mut t = table();
    let mut head = vec![
        lang.pick("编号", "Number"),
        lang.pick("标题", "Title"),
        lang.pick("级别", "Level"),
        lang.pick("风险", "Risk"),
        lang.pick("办结期限", "Deadline"),
    ];
    if overdue {
        head.push(lang.pick("超期天数", "Days overdue"));
    }
    t.set_header(head);
    for c in cases {
        let risk =
            if c.risk == Risk::High { format!("⚠ {}", lang.label(c.risk)) } else { lang.label(c.risk).to_owned() };
        let mut row = vec![
            c.number.clone(),
            c.title.clone(),
            lang.label(c.level).to_owned(),
            risk,
            c.deadline.map(date).unwrap_or_default(),
        ];
        if overdue {
            row.push(c.days_overdue.unwrap_or(0).to_string());
        }
        t.add_row(row);
    }
    t.to_string()
}

fn monthly_table(m: &Monthly, lang: Lang) -> String {
    let mut s = String::new();
    let place = area(m.scope_name.as_deref(), &m.scope);
    match lang {
        Lang::Zh => s.push_str(&format!(
            "{place} {}年{}月矛盾纠纷统计（截至 {}，县级政策第 {} 版）\n",
            m.month.year(),
            m.month.month(),
            minute(m.as_of),
            m.policy_version
        )),
        Lang::En => s.push_str(&format!(
            "{place}, dispute figures for {} (as of {}, county policy version {})\n",
            m.month,
            minute(m.as_of),
            m.policy_version
        )),
    }
    let p = &m.previous;
    let mut t = table();
    t.set_header([
        lang.pick("指标", "Figure"),
        &m.month.to_string(),
        &p.month.to_string(),
        lang.pick("变化", "Change"),
    ]);
    let rows: [(&str, &str, String, String, String); 6] = [
        ("新增", "New", m.new.to_string(), p.new.to_string(), signed(m.change.new)),
        ("调解成功", "Settled", m.settled.to_string(), p.settled.to_string(), signed(m.change.settled)),
        ("调解失败", "Failed", m.failed.to_string(), p.failed.to_string(), signed(m.change.failed)),
        ("上报", "Escalated", m.escalated.to_string(), p.escalated.to_string(), signed(m.change.escalated)),
        (
            "调解成功率",
            "Settlement rate",
            percent(m.settlement_rate),
            percent(p.settlement_rate),
            fq_core::report::rate_change_text(m.change.settlement_rate, lang),
        ),
        ("超期（月末）", "Overdue (month end)", m.overdue.to_string(), p.overdue.to_string(), signed(m.change.overdue)),
    ];
    for (zh, en, a, b, c) in rows {
        t.add_row([lang.pick(zh, en).to_owned(), a, b, c]);
    }
    s.push_str(&format!("{t}\n"));
    let days = |d: Option<f64>| d.map_or_else(|| "—".to_owned(), |d| format!("{d:.1}"));
    let med = m.median_days_to_settle;
    let f = m.follow_up;
    let sv = m.supervision;
    match lang {
        Lang::Zh => {
            s.push_str(&format!(
                "小事不出村：{}　大事不出乡：{}\n调解成功中位用时：村级 {} 天，乡镇级 {} 天，县级 {} 天\n",
                percent(m.settled_in_village_share),
                percent(m.settled_in_township_share),
                days(med.village),
                days(med.township),
                days(med.county)
            ));
            s.push_str(&format!(
                "回访：应回访 {} 次，按期 {}，逾期 {}，未回访 {}，免予回访 {}，按期率 {}；反弹 {} 件\n",
                f.due,
                f.on_time,
                f.late,
                f.missed,
                f.waived,
                f.compliance.map_or_else(|| "—".to_owned(), percent),
                f.relapses
            ));
            s.push_str(&format!(
                "督办：{} 件次，回复 {} 件次，逾期未回复 {} 件次；高风险在办 {} 件\n",
                sv.supervised, sv.answered, sv.overdue_answers, m.high_risk
            ));
        }
        Lang::En => {
            s.push_str(&format!(
                "Settled in the village: {}   within the township: {}\nMedian days to settle: village {}, township {}, county {}\n",
                percent(m.settled_in_village_share),
                percent(m.settled_in_township_share),
                days(med.village),
                days(med.township),
                days(med.county)
            ));
            s.push_str(&format!(
                "Follow-ups: {} due, {} on time, {} late, {} not made, {} waived, on-time rate {}; {} relapses\n",
                f.due,
                f.on_time,
                f.late,
                f.missed,
                f.waived,
                f.compliance.map_or_else(|| "—".to_owned(), percent),
                f.relapses
            ));
            s.push_str(&format!(
                "Supervision: {} orders, {} answers, {} not answered by their date; {} high-risk cases open\n",
                sv.supervised, sv.answered, sv.overdue_answers, m.high_risk
            ));
        }
    }
    let cats: Vec<(Category, report::Counts)> = Category::ALL
        .iter()
        .filter_map(|c| m.by_category.get(c.code()).map(|f| (*c, *f)))
        .filter(|(_, f)| *f != report::Counts::default())
        .collect();
    if !cats.is_empty() {
        let mut t = table();
        t.set_header([
            lang.pick("类别", "Category"),
            lang.pick("新增", "New"),
            lang.pick("调解成功", "Settled"),
            lang.pick("调解失败", "Failed"),
            lang.pick("上报", "Escalated"),
        ]);
        for (c, f) in cats {
            t.add_row([
                lang.label(c).to_owned(),
                f.new.to_string(),
                f.settled.to_string(),
                f.failed.to_string(),
                f.escalated.to_string(),
            ]);
        }
        s.push_str(&format!("\n{}\n{t}\n", lang.pick("各类纠纷", "By category")));
    }
    if !m.by_area.is_empty() {
        let mut t = table();
        t.set_header([
            lang.pick("地区", "Area"),
            lang.pick("新增", "New"),
            lang.pick("调解成功", "Settled"),
            lang.pick("调解失败", "Failed"),
            lang.pick("上报", "Escalated"),
            lang.pick("超期", "Overdue"),
        ]);
        for a in &m.by_area {
            t.add_row([
                area(a.name.as_deref(), &a.code),
                a.counts.new.to_string(),
                a.counts.settled.to_string(),
                a.counts.failed.to_string(),
                a.counts.escalated.to_string(),
                a.overdue.to_string(),
            ]);
        }
        s.push_str(&format!("\n{}\n{t}\n", lang.pick("各地情况", "By area")));
    }
    if !m.overdue_cases.is_empty() {
        s.push_str(&format!(
            "\n{}\n{}\n",
            lang.pick("超期案件", "Overdue cases"),
            cases_table(lang, &m.overdue_cases, true)
        ));
    }
    if !m.high_risk_cases.is_empty() {
        s.push_str(&format!(
            "\n{}\n{}\n",
            lang.pick("在办高风险案件", "High-risk cases open"),
            cases_table(lang, &m.high_risk_cases, false)
        ));
    }
    s
}

fn subsidy_table(s: &Subsidy, lang: Lang) -> String {
    let mut text = match lang {
        Lang::Zh => format!(
            "{} {}年{}月以案定补统计（截至 {}；同一案件只计一次）\n",
            area(s.scope_name.as_deref(), &s.scope),
            s.month.year(),
            s.month.month(),
            minute(s.as_of)
        ),
        Lang::En => format!(
            "{}, cases handled per person in {} (as of {}; each case counted once)\n",
            area(s.scope_name.as_deref(), &s.scope),
            s.month,
            minute(s.as_of)
        ),
    };
    if s.people.is_empty() {
        text.push_str(lang.pick("这个月没有人办理过案件。\n", "Nobody handled a case this month.\n"));
        return text;
    }
    let mut t = table();
    t.set_header([
        lang.pick("人员编号", "Staff id"),
        lang.pick("姓名", "Name"),
        lang.pick("角色", "Role"),
        lang.pick("登记", "Recorded"),
        lang.pick("调解", "Mediated"),
        lang.pick("调解成功", "Settled"),
        lang.pick("回访", "Followed up"),
    ]);
    for p in &s.people {
        let id = if p.matched {
            p.person.clone()
        } else {
            lang.pick("（花名册中无此人）", "(not in the roster)").to_owned()
        };
        t.add_row([
            id,
            p.name.clone(),
            p.role.map(|r| lang.label(r)).unwrap_or("").to_owned(),
            p.recorded.to_string(),
            p.mediated.to_string(),
            p.settled.to_string(),
            p.followed_up.to_string(),
        ]);
    }
    let tot = s.totals;
    t.add_row([
        String::new(),
        lang.pick("合计", "Total").to_owned(),
        String::new(),
        tot.recorded.to_string(),
        tot.mediated.to_string(),
        tot.settled.to_string(),
        tot.followed_up.to_string(),
    ]);
    text.push_str(&format!("{t}\n"));
    for p in &s.people {
        let Some(c) = &p.cases else { continue };
        for (zh, en, list) in [
            ("登记", "Recorded", &c.recorded),
            ("调解", "Mediated", &c.mediated),
            ("调解成功", "Settled", &c.settled),
            ("回访", "Followed up", &c.followed_up),
        ] {
            let sep = lang.pick("：", ": ");
            let none = lang.pick("无", "none");
            let cases = if list.is_empty() { none.to_owned() } else { list.join(lang.list_sep()) };
            text.push_str(&format!("{}{sep}{cases}\n", lang.pick(zh, en)));
        }
    }
    text
}
