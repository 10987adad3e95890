//! The monthly report and the subsidy sheet as one HTML file that works
//! offline: inline CSS, SVG charts drawn with plotters, no script, nothing
//! fetched. Chinese labels are drawn by the reader's own CJK font: the CSS
//! names Noto Sans CJK / Source Han Sans, WenQuanYi, and the fonts Windows
//! and macOS ship with, before the generic `sans-serif` (ADR 31).
//!
//! Every text that comes from a case (titles, names, numbers) is
//! entity-escaped, and any control character a peer slipped in is shown as
//! `\u{…}` ([`crate::text::escape`]), so a case's title can neither add
//! markup to the report nor hide in it.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{CaseLine, Monthly, ReportError, Subsidy};
use crate::case::{Category, Level, Risk};
use crate::clock::Timestamp;
use crate::lang::Lang;

/// The fonts Chinese labels are drawn with, in order of preference.
pub const CJK_FONTS: &str = "\"Noto Sans CJK SC\", \"Source Han Sans SC\", \"Noto Sans SC\", \"WenQuanYi Micro Hei\", \
                             \"WenQuanYi Zen Hei\", \"Microsoft YaHei\", \"PingFang SC\", \"Heiti SC\", sans-serif";

const BLUE_BAR: RGBColor = RGBColor(46, 109, 180);
const GREEN_BAR: RGBColor = RGBColor(60, 150, 90);
const GREY_BAR: RGBColor = RGBColor(160, 168, 180);

/// Entity-escapes text for HTML, after escaping control characters.
pub fn escape(text: &str) -> String {
    let safe = crate::text::escape(text);
    let mut out = String::with_capacity(safe.len());
    for c in safe.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn chart_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// Horizontal bars, one row per label (first at the top), one bar per series.
fn bars(labels: &[String], series: &[(String, RGBColor, Vec<f64>)], percent: bool) -> Result<String, ReportError> {
    let n = labels.len().max(1);
    let rows = n as f64;
    let max = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(0.0_f64, f64::max);
    let top = if percent { 1.0 } else { (max * 1.15).max(1.0).ceil() };
    let label_px = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4).clamp(4, 16) * 14 + 16;
    let height = u32::try_from(n).unwrap_or(40).saturating_mul(16 + 14 * u32::try_from(series.len()).unwrap_or(1)) + 70;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(26)
            .y_label_area_size(u32::try_from(label_px).unwrap_or(120))
            .build_cartesian_2d(0f64..top, 0f64..rows)
            .map_err(chart_err)?;
        let tick = |x: &f64| if percent { format!("{:.0}%", x * 100.0) } else { format!("{x:.0}") };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .y_label_formatter(&|_| String::new())
            .x_labels(6)
            .x_label_formatter(&tick)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(chart_err)?;
        // The row labels, right-aligned against the axis, one per row: drawn
        // here rather than as axis ticks so each sits in the middle of its bars.
        let style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, label) in labels.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
            root.draw(&Text::new(label.clone(), (x - 8, y), style.clone())).map_err(chart_err)?;
        }
        let width = 0.8 / series.len().max(1) as f64;
        for (j, (label, color, values)) in series.iter().enumerate() {
            let color = *color;
            let rects = values.iter().enumerate().map(move |(i, v)| {
                let row = (n - 1 - i) as f64;
                let y0 = row + 0.9 - (j + 1) as f64 * width;
                Rectangle::new([(0.0, y0), (*v, y0 + width * 0.9)], color.filled())
            });
            let drawn = chart.draw_series(rects).map_err(chart_err)?;
            if series.len() > 1 {
                drawn
                    .label(label.clone())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
            }
            let texts = values.iter().enumerate().map(move |(i, v)| {
                let row = (n - 1 - i) as f64;
                let y = row + 0.9 - (j + 1) as f64 * width + width * 0.45;
                let text = if percent { format!("{:.1}%", v * 100.0) } else { format!("{v:.0}") };
                Text::new(text, (v + top * 0.01, y), ("sans-serif", 12).into_font().color(&BLACK))
            });
            chart.draw_series(texts).map_err(chart_err)?;
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.9))
                .border_style(GREY_BAR)
                .draw()
                .map_err(chart_err)?;
        }
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn signed(x: i64) -> String {
    if x > 0 { format!("+{x}") } else { x.to_string() }
}

/// `2026-10-31 23:59`, in China time.
pub(crate) fn minute(t: Timestamp) -> String {
    Timestamp(t.0 + 8 * 3_600_000).to_utc().map_or_else(|| t.0.to_string(), |d| d.format("%Y-%m-%d %H:%M").to_string())
}

/// `2026-10-31`, in China time.
pub(crate) fn day(t: Timestamp) -> String {
    Timestamp(t.0 + 8 * 3_600_000).to_utc().map_or_else(|| t.0.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// The head of every report page.
fn page_start(out: &mut String, lang: Lang, title: &str) {
    let lang_code = if lang == Lang::Zh { "zh-CN" } else { "en" };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"{lang_code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>\
         body{{margin:0;background:#f4f6f9;color:#1d2733;font-family:{CJK_FONTS};font-size:15px;}}\
         main{{max-width:1120px;margin:0 auto;padding:24px 28px 40px;background:#fff;}}\
         h1{{font-size:26px;margin:4px 0 6px;}} h2{{font-size:19px;border-left:5px solid #2e6db4;padding-left:10px;margin:30px 0 12px;}}\
         .meta{{color:#5a6775;margin:0 0 18px;}}\
         .cards{{display:flex;flex-wrap:wrap;gap:12px;}}\
         .card{{flex:1 1 140px;border:1px solid #dde3ea;border-radius:8px;padding:12px 14px;background:#fafbfd;}}\
         .card .v{{font-size:28px;font-weight:600;}} .card .k{{color:#5a6775;}} .card .d{{color:#5a6775;font-size:13px;}}\
         table{{border-collapse:collapse;width:100%;margin:6px 0 10px;}}\
         th,td{{border:1px solid #dde3ea;padding:6px 8px;text-align:left;vertical-align:top;}}\
         th{{background:#eef2f7;}} td.n,th.n{{text-align:right;font-variant-numeric:tabular-nums;}}\
         .high{{color:#b3261e;font-weight:600;}} svg{{max-width:100%;height:auto;}}\
         svg text{{font-family:{CJK_FONTS};}}\
         footer{{margin-top:30px;color:#8a95a1;font-size:13px;}}\
         </style></head><body><main>\n",
        escape(title)
    );
}

fn page_end(out: &mut String, lang: Lang) {
    let _ = write!(
        out,
        "<footer>{}</footer>\n</main></body></html>\n",
        lang.pick(
            "fq 枫桥矛盾纠纷案件台账 · 本报告为单个文件，离线可用，不含任何外部资源。",
            "fq, the Fengqiao case ledger · one file, works offline, loads nothing from elsewhere."
        )
    );
}

fn place(name: Option<&str>, code: &str) -> String {
    match name {
        Some(n) => format!("{}（{}）", escape(n), escape(code)),
        None => escape(code),
    }
}

fn level_name(lang: Lang, level: Level) -> &'static str {
    lang.label(level)
}

fn case_rows(out: &mut String, lang: Lang, cases: &[CaseLine], overdue: bool) {
    let head = if overdue {
        lang.pick(
            "<tr><th>编号</th><th>标题</th><th>类别</th><th>级别</th><th>风险</th><th>办结期限</th><th class=\"n\">超期天数</th><th>责任人</th></tr>",
            "<tr><th>Number</th><th>Title</th><th>Category</th><th>Level</th><th>Risk</th><th>Deadline</th><th class=\"n\">Days overdue</th><th>Responsible</th></tr>",
        )
    } else {
        lang.pick(
            "<tr><th>编号</th><th>标题</th><th>类别</th><th>级别</th><th>风险</th><th>办结期限</th><th>责任人</th></tr>",
            "<tr><th>Number</th><th>Title</th><th>Category</th><th>Level</th><th>Risk</th><th>Deadline</th><th>Responsible</th></tr>",
        )
    };
    if cases.is_empty() {
        let _ = write!(out, "<p>{}</p>", lang.pick("无。", "None."));
        return;
    }
    let _ = write!(out, "<table>{head}");
    for c in cases {
        let risk = if c.risk == Risk::High {
            format!("<span class=\"high\">{}</span>", lang.label(c.risk))
        } else {
            lang.label(c.risk).to_owned()
        };
        let days =
            if overdue { format!("<td class=\"n\">{}</td>", c.days_overdue.unwrap_or(0)) } else { String::new() };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{risk}</td><td>{}</td>{days}<td>{}</td></tr>",
            escape(&c.number),
            escape(&c.title),
            lang.label(c.category),
            level_name(lang, c.level),
            c.deadline.map(day).unwrap_or_default(),
            escape(c.responsible.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table>");
}

/// The monthly report as one HTML page.
pub fn monthly(m: &Monthly, lang: Lang) -> Result<String, ReportError> {
    let zh = lang == Lang::Zh;
    let scope = place(m.scope_name.as_deref(), &m.scope);
    let title = match lang {
        Lang::Zh => format!("{}年{}月矛盾纠纷统计报告", m.month.year(), m.month.month()),
        Lang::En => format!("Dispute figures, {}", m.month),
    };
    let mut out = String::with_capacity(64 * 1024);
    page_start(&mut out, lang, &format!("{} {title}", m.scope_name.as_deref().unwrap_or(&m.scope)));
    let _ = write!(
        out,
        "<h1>{} {}</h1>",
        m.scope_name.as_deref().map(escape).unwrap_or_else(|| escape(&m.scope)),
        escape(&title)
    );
    let _ = write!(
        out,
        "<p class=\"meta\">{}</p>",
        match lang {
            Lang::Zh => format!(
                "区划 {scope} · 统计截至 {} · 期限和回访按县级政策第 {} 版计算 · 生成于 {}",
                minute(m.as_of),
                m.policy_version,
                minute(m.generated_at)
            ),
            Lang::En => format!(
                "Area {scope} · as of {} · deadlines and follow-ups under county policy version {} · made {}",
                minute(m.as_of),
                m.policy_version,
                minute(m.generated_at)
            ),
        }
    );
    // Key figures with the change from last month.
    let cards: [(&str, &str, String, Option<String>); 7] = [
        ("新增案件", "New cases", m.new.to_string(), Some(signed(m.change.new))),
        ("调解成功", "Settled", m.settled.to_string(), Some(signed(m.change.settled))),
        ("调解失败", "Failed", m.failed.to_string(), Some(signed(m.change.failed))),
        ("上报", "Escalated", m.escalated.to_string(), Some(signed(m.change.escalated))),
        (
            "调解成功率",
            "Settlement rate",
            percent(m.settlement_rate),
            Some(super::rate_change_text(m.change.settlement_rate, lang)),
        ),
        ("超期案件", "Overdue", m.overdue.to_string(), Some(signed(m.change.overdue))),
        ("高风险在办", "High risk open", m.high_risk.to_string(), None),
    ];
    out.push_str("<section class=\"cards\">");
    for (k_zh, k_en, v, d) in cards {
        let d = d
            .map(|d| format!("<div class=\"d\">{}{d}</div>", lang.pick("较上月 ", "vs last month ")))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{v}</div>{d}</div>",
            lang.pick(k_zh, k_en)
        );
    }
    out.push_str("</section>");

    // Categories: every category with any figure, most new first.
    let mut cats: Vec<(Category, super::Counts)> = Category::ALL
        .iter()
        .filter_map(|c| m.by_category.get(c.code()).map(|f| (*c, *f)))
        .filter(|(_, f)| *f != super::Counts::default())
        .collect();
    cats.sort_by(|a, b| b.1.new.cmp(&a.1.new).then(b.1.settled.cmp(&a.1.settled)));
    let _ = write!(out, "<h2>{}</h2>", lang.pick("各类纠纷", "By category"));
    if cats.is_empty() {
        let _ = write!(
            out,
            "<p>{}</p>",
            lang.pick("本月没有新增或办结的案件。", "No case was recorded or concluded this month.")
        );
    } else {
        let labels: Vec<String> = cats.iter().map(|(c, _)| lang.label(*c).to_owned()).collect();
        let series = vec![
            (lang.pick("新增", "New").to_owned(), BLUE_BAR, cats.iter().map(|(_, f)| f64::from(f.new)).collect()),
            (
                lang.pick("调解成功", "Settled").to_owned(),
                GREEN_BAR,
                cats.iter().map(|(_, f)| f64::from(f.settled)).collect(),
            ),
        ];
        out.push_str(&bars(&labels, &series, false)?);
        let _ = write!(
            out,
            "<table><tr><th>{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr>",
            lang.pick("类别", "Category"),
            lang.pick("新增", "New"),
            lang.pick("调解成功", "Settled"),
            lang.pick("调解失败", "Failed"),
            lang.pick("上报", "Escalated")
        );
        for (c, f) in &cats {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                lang.label(*c),
                f.new,
                f.settled,
                f.failed,
                f.escalated
            );
        }
        out.push_str("</table>");
    }

    // Areas.
    let _ = write!(out, "<h2>{}</h2>", lang.pick("各地情况", "By area"));
    if m.by_area.is_empty() {
        let _ = write!(out, "<p>{}</p>", lang.pick("无。", "None."));
    } else {
        let labels: Vec<String> = m.by_area.iter().map(|a| a.name.clone().unwrap_or_else(|| a.code.clone())).collect();
        let series = vec![
            (
                lang.pick("新增", "New").to_owned(),
                BLUE_BAR,
                m.by_area.iter().map(|a| f64::from(a.counts.new)).collect(),
            ),
            (
                lang.pick("调解成功", "Settled").to_owned(),
                GREEN_BAR,
                m.by_area.iter().map(|a| f64::from(a.counts.settled)).collect(),
            ),
            (
                lang.pick("超期", "Overdue").to_owned(),
                GREY_BAR,
                m.by_area.iter().map(|a| f64::from(a.overdue)).collect(),
            ),
        ];
        out.push_str(&bars(&labels, &series, false)?);
        let _ = write!(
            out,
            "<table><tr><th>{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr>",
            lang.pick("地区", "Area"),
            lang.pick("新增", "New"),
            lang.pick("调解成功", "Settled"),
            lang.pick("调解失败", "Failed"),
            lang.pick("上报", "Escalated"),
            lang.pick("超期", "Overdue")
        );
        for a in &m.by_area {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                place(a.name.as_deref(), &a.code),
                a.counts.new,
                a.counts.settled,
                a.counts.failed,
                a.counts.escalated,
                a.overdue
            );
        }
        out.push_str("</table>");
    }

    // Where and how fast cases are settled.
    let _ = write!(out, "<h2>{}</h2><table>", lang.pick("化解层级与用时", "Where and how fast cases are settled"));
    let days = |d: Option<f64>| d.map_or_else(|| "—".to_owned(), |d| format!("{d:.1}"));
    let rows: [(&str, &str, String); 5] = [
        ("村内化解占比（小事不出村）", "Settled in the village", percent(m.settled_in_village_share)),
        ("乡镇内化解占比（大事不出乡）", "Settled within the township", percent(m.settled_in_township_share)),
        ("村级调解成功中位用时（天）", "Median days to settle, village", days(m.median_days_to_settle.village)),
        ("乡镇级调解成功中位用时（天）", "Median days to settle, township", days(m.median_days_to_settle.township)),
        ("县级调解成功中位用时（天）", "Median days to settle, county", days(m.median_days_to_settle.county)),
    ];
    for (k_zh, k_en, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td class=\"n\">{v}</td></tr>", lang.pick(k_zh, k_en));
    }
    out.push_str("</table>");

    // Follow-ups and supervision.
    let f = &m.follow_up;
    let s = &m.supervision;
    let _ = write!(out, "<h2>{}</h2><table>", lang.pick("回访与督办", "Follow-ups and supervision"));
    let rows: [(&str, &str, String); 10] = [
        ("本月应回访（次）", "Visits due this month", f.due.to_string()),
        ("按期回访", "Made on time", f.on_time.to_string()),
        ("逾期回访", "Made late", f.late.to_string()),
        ("未回访", "Not made", f.missed.to_string()),
        ("免予回访", "Waived", f.waived.to_string()),
        ("回访按期率", "On-time rate", f.compliance.map_or_else(|| "—".to_owned(), percent)),
        ("反弹", "Relapses", f.relapses.to_string()),
        ("督办（件次）", "Supervision orders", s.supervised.to_string()),
        ("督办回复", "Answers", s.answered.to_string()),
        ("逾期未回复督办", "Orders not answered by their date", s.overdue_answers.to_string()),
    ];
    for (k_zh, k_en, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td class=\"n\">{v}</td></tr>", lang.pick(k_zh, k_en));
    }
    out.push_str("</table>");

    // This month against the previous one.
    let p = &m.previous;
    let _ = write!(out, "<h2>{}</h2>", lang.pick("与上月比较", "Compared with the previous month"));
    let labels: Vec<String> =
        [("新增", "New"), ("调解成功", "Settled"), ("调解失败", "Failed"), ("上报", "Escalated"), ("超期", "Overdue")]
            .iter()
            .map(|(a, b)| lang.pick(a, b).to_owned())
            .collect();
    let now_values = [m.new, m.settled, m.failed, m.escalated, m.overdue].map(f64::from).to_vec();
    let before_values = [p.new, p.settled, p.failed, p.escalated, p.overdue].map(f64::from).to_vec();
    let series =
        vec![(format!("{}", m.month), BLUE_BAR, now_values), (format!("{}", p.month), GREY_BAR, before_values)];
    out.push_str(&bars(&labels, &series, false)?);
    let _ = write!(
        out,
        "<table><tr><th></th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr>",
        m.month,
        p.month,
        lang.pick("变化", "Change")
    );
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
            super::rate_change_text(m.change.settlement_rate, lang),
        ),
        ("超期", "Overdue", m.overdue.to_string(), p.overdue.to_string(), signed(m.change.overdue)),
    ];
    for (k_zh, k_en, a, b, c) in rows {
        let _ = write!(
            out,
            "<tr><th>{}</th><td class=\"n\">{a}</td><td class=\"n\">{b}</td><td class=\"n\">{c}</td></tr>",
            lang.pick(k_zh, k_en)
        );
    }
    out.push_str("</table>");

    let _ = write!(out, "<h2>{}（{}）</h2>", lang.pick("超期案件", "Overdue cases"), m.overdue);
    case_rows(&mut out, lang, &m.overdue_cases, true);
    let _ = write!(out, "<h2>{}（{}）</h2>", lang.pick("在办高风险案件", "High-risk cases open"), m.high_risk);
    case_rows(&mut out, lang, &m.high_risk_cases, false);
    if !zh {
        out.push_str("<p class=\"meta\">Overdue and high-risk lists are as of the end of the month.</p>");
    }
    page_end(&mut out, lang);
    Ok(out)
}

/// The subsidy sheet as one HTML page.
pub fn subsidy(s: &Subsidy, lang: Lang) -> Result<String, ReportError> {
    let title = match lang {
        Lang::Zh => format!("{}年{}月以案定补统计", s.month.year(), s.month.month()),
        Lang::En => format!("Cases handled per person, {}", s.month),
    };
    let mut out = String::with_capacity(32 * 1024);
    page_start(&mut out, lang, &title);
    let _ = write!(
        out,
        "<h1>{} {}</h1>",
        s.scope_name.as_deref().map(escape).unwrap_or_else(|| escape(&s.scope)),
        escape(&title)
    );
    let _ = write!(
        out,
        "<p class=\"meta\">{}</p>",
        match lang {
            Lang::Zh => format!(
                "区划 {} · 统计截至 {} · 花名册为县级政策第 {} 版 · 同一案件在多台设备、多级服务器上只计一次",
                place(s.scope_name.as_deref(), &s.scope),
                minute(s.as_of),
                s.policy_version
            ),
            Lang::En => format!(
                "Area {} · as of {} · roster of county policy version {} · a case counts once however many devices and servers hold it",
                place(s.scope_name.as_deref(), &s.scope),
                minute(s.as_of),
                s.policy_version
            ),
        }
    );
    let _ = write!(
        out,
        "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr>",
        lang.pick("人员编号", "Staff id"),
        lang.pick("姓名", "Name"),
        lang.pick("角色", "Role"),
        lang.pick("工作区划", "Area"),
        lang.pick("登记", "Recorded"),
        lang.pick("调解", "Mediated"),
        lang.pick("调解成功", "Settled"),
        lang.pick("回访", "Followed up")
    );
    for p in &s.people {
        let id = if p.matched {
            escape(&p.person)
        } else {
            lang.pick("（花名册中无此人）", "(not in the roster)").to_owned()
        };
        let _ = write!(
            out,
            "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&p.name),
            p.role.map(|r| lang.label(r)).unwrap_or(""),
            escape(p.area.as_deref().unwrap_or("")),
            p.recorded,
            p.mediated,
            p.settled,
            p.followed_up
        );
    }
    let t = &s.totals;
    let _ = write!(
        out,
        "<tr><th colspan=\"4\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th><th class=\"n\">{}</th></tr></table>",
        lang.pick("合计", "Total"),
        t.recorded,
        t.mediated,
        t.settled,
        t.followed_up
    );
    for p in s.people.iter().filter(|p| p.cases.is_some()) {
        let Some(c) = &p.cases else { continue };
        let _ = write!(out, "<h2>{}</h2><table>", escape(&p.name));
        for (k_zh, k_en, list) in [
            ("登记", "Recorded", &c.recorded),
            ("调解", "Mediated", &c.mediated),
            ("调解成功", "Settled", &c.settled),
            ("回访", "Followed up", &c.followed_up),
        ] {
            let cases: Vec<String> = list.iter().map(|n| escape(n)).collect();
            let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", lang.pick(k_zh, k_en), cases.join("<br>"));
        }
        out.push_str("</table>");
    }
    page_end(&mut out, lang);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_controls() {
        assert_eq!(escape("<script>\"x\"&'y'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;");
        assert_eq!(escape("标题\u{1b}[2J"), "标题\\u{1b}[2J");
    }

    #[test]
    fn bars_draw_chinese_labels_as_text() {
        let svg = bars(
            &["邻里纠纷".to_owned(), "婚姻家庭纠纷".to_owned()],
            &[("新增".to_owned(), BLUE_BAR, vec![3.0, 1.0])],
            false,
        )
        .unwrap_or_default();
        assert!(svg.starts_with("<svg") && svg.contains("邻里纠纷") && svg.contains("婚姻家庭纠纷"), "{svg}");
    }
}
