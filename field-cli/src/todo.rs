//! `fq todo`: the day's work as people read it (groups, each a table), or the
//! core's list as JSON (`schemas/todo.v1.schema.json`).

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets};
use fq_core::case::Risk;
use fq_core::ledger::{Ledger, TimeSource};
use fq_core::todo::{DUE_SOON_DAYS, Group, Item, Tag, Todo};

use crate::lang::Lang;
use crate::render::{self, date, minute};

/// A group's heading.
fn heading(lang: Lang, g: Group) -> String {
    match (lang, g) {
        (Lang::Zh, Group::Overdue) => "一、已超期".into(),
        (Lang::Zh, Group::DueSoon) => format!("二、{DUE_SOON_DAYS}天内到期"),
        (Lang::Zh, Group::FollowUp) => "三、该回访".into(),
        (Lang::Zh, Group::Accept) => "四、待本级接收的上报".into(),
        (Lang::Zh, Group::Supervision) => "五、待回复的督办".into(),
        (Lang::En, Group::Overdue) => "1. Overdue".into(),
        (Lang::En, Group::DueSoon) => format!("2. Due within {DUE_SOON_DAYS} days"),
        (Lang::En, Group::FollowUp) => "3. Follow-up visits due".into(),
        (Lang::En, Group::Accept) => "4. Escalations waiting for your level".into(),
        (Lang::En, Group::Supervision) => "5. Supervision orders to answer".into(),
    }
}

/// What to know about an item, in words.
fn notes(lang: Lang, item: &Item) -> String {
    let mut out: Vec<String> = Vec::new();
    if let Some(v) = item.visit {
        out.push(match lang {
            Lang::Zh => format!("第{v}次回访"),
            Lang::En => format!("visit {v}"),
        });
    }
    for t in &item.tags {
        out.push(match (lang, t) {
            (Lang::Zh, Tag::EscalateNow) => "已过村级期限，应上报乡镇".into(),
            (Lang::En, Tag::EscalateNow) => "past the village deadline: escalate".into(),
            (Lang::Zh, Tag::WaitingForYou) => "等待本级接收".into(),
            (Lang::En, Tag::WaitingForYou) => "waiting for your level to accept".into(),
            (_, Tag::Supervised) => match (lang, item.case.supervised_due) {
                (Lang::Zh, Some(d)) => format!("有督办，{}前回复", date(d)),
                (Lang::En, Some(d)) => format!("supervised: answer by {}", date(d)),
                (Lang::Zh, None) => "有督办".into(),
                (Lang::En, None) => "supervised".into(),
            },
        });
    }
    out.join(lang.list_sep())
}

/// "The device clock is 3 h 5 min fast (found at the sync of …)".
pub(crate) fn clock_note(lang: Lang, time: TimeSource) -> Option<String> {
    let TimeSource::Corrected { offset_ms, measured_at } = time else { return None };
    let minutes = offset_ms.unsigned_abs() / 60_000;
    let (h, m) = (minutes / 60, minutes % 60);
    Some(match lang {
        Lang::Zh => format!(
            "⚠ 本机时钟比服务器{}{}（{} 同步时测得），以下日期按校正后的时间计算。",
            if offset_ms > 0 { "快" } else { "慢" },
            if h > 0 { format!("{h}小时{m}分钟") } else { format!("{m}分钟") },
            minute(measured_at)
        ),
        Lang::En => format!(
            "⚠ This device's clock is {}{m} min {} the server's (found at the sync of {}); dates below use the corrected time.",
            if h > 0 { format!("{h} h ") } else { String::new() },
            if offset_ms > 0 { "ahead of" } else { "behind" },
            minute(measured_at)
        ),
    })
}

/// Prints the list. It is built whole and written once: a township's list
/// can run to thousands of lines, and line-buffered stdout would make a
/// system call of each.
pub(crate) fn render(out: &mut dyn Write, lang: Lang, json: bool, t: &Todo, ledger: &Ledger) -> anyhow::Result<()> {
    let mut text = Vec::with_capacity(64 * 1024 + t.items.len() * 256);
    if json {
        render::json_line(&mut text, t)?;
    } else {
        render_text(&mut text, lang, t, ledger)?;
    }
    out.write_all(&text)?;
    Ok(())
}

fn render_text(out: &mut dyn Write, lang: Lang, t: &Todo, ledger: &Ledger) -> anyhow::Result<()> {
    let area = ledger
        .policy()
        .area_name(t.scope.as_str())
        .map(|n| format!("{n} {}", t.scope))
        .unwrap_or_else(|| t.scope.to_string());
    match (lang, &t.user) {
        (Lang::Zh, Some(u)) => writeln!(out, "今日待办：{u}（{area}），{}", minute(t.now))?,
        (Lang::Zh, None) => writeln!(out, "今日待办：{area} 全区域，{}", minute(t.now))?,
        (Lang::En, Some(u)) => writeln!(out, "Today's work: {u} ({area}), {}", minute(t.now))?,
        (Lang::En, None) => writeln!(out, "Today's work: the whole of {area}, {}", minute(t.now))?,
    }
    if let Some(note) = clock_note(lang, t.time) {
        writeln!(out, "{note}")?;
    }
    if t.items.is_empty() {
        writeln!(out, "{}", lang.pick("今天没有待办事项。", "Nothing to do today."))?;
        return Ok(());
    }
    for g in [Group::Overdue, Group::DueSoon, Group::FollowUp, Group::Accept, Group::Supervision] {
        let items: Vec<&Item> = t.items.iter().filter(|i| i.group == g).collect();
        if items.is_empty() {
            continue;
        }
        writeln!(out, "\n{}（{}）", heading(lang, g), items.len())?;
        let mut table = Table::new();
        table.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
        let when = match g {
            Group::FollowUp => lang.pick("回访日期", "Visit due"),
            Group::Supervision => lang.pick("督办期限", "Answer by"),
            _ => lang.pick("办结期限", "Deadline"),
        };
        table.set_header([
            lang.pick("编号", "Number"),
            lang.pick("标题", "Title"),
            lang.pick("风险", "Risk"),
            lang.pick("状态", "Status"),
            when,
            lang.pick("说明", "Notes"),
        ]);
        for i in items {
            let risk = if i.case.risk == Risk::High {
                format!("⚠ {}", lang.label(i.case.risk))
            } else {
                lang.label(i.case.risk).to_owned()
            };
            let status = format!("{}{}", lang.label(i.case.status), lang.paren(lang.label(i.case.level)));
            table.add_row([
                i.case.number.clone(),
                i.case.title.clone(),
                risk,
                status,
                i.due.map(date).unwrap_or_default(),
                notes(lang, i),
            ]);
        }
        writeln!(out, "{table}")?;
    }
    match lang {
        Lang::Zh => writeln!(out, "\n共 {} 件，高风险在前。", t.items.len())?,
        Lang::En => writeln!(out, "\n{} in all, high risk first.", t.items.len())?,
    }
    Ok(())
}
