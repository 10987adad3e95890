//! Reports for spreadsheets: an xlsx workbook (county offices keep their
//! figures in Excel and WPS) and a CSV in long form (group, item, measure,
//! value) that any spreadsheet can pivot.
//!
//! Text from cases is written as text: xlsx cells are typed strings, never
//! formulas; CSV cells that a spreadsheet would run as a formula (`=`, `+`,
//! `-`, `@`...) get a leading `'`; control characters are escaped.

use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};

use super::{CaseLine, Monthly, ReportError, Subsidy};
use crate::case::Category;
use crate::lang::Lang;
use crate::report::html::day;

fn xerr(e: XlsxError) -> ReportError {
    ReportError::Sheet(e.to_string())
}

/// Text as a spreadsheet cell: no formula, no control character.
pub fn cell(text: &str) -> String {
    let safe = crate::text::escape(text);
    match safe.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{safe}"),
        _ => safe.into_owned(),
    }
}

struct Sheet<'a> {
    ws: &'a mut Worksheet,
    row: u32,
    bold: Format,
    pct: Format,
}

impl Sheet<'_> {
    fn header(&mut self, cols: &[&str]) -> Result<(), ReportError> {
        for (c, h) in cols.iter().enumerate() {
            let col = u16::try_from(c).unwrap_or(u16::MAX);
            self.ws.write_string_with_format(self.row, col, *h, &self.bold).map_err(xerr)?;
            self.ws.set_column_width(col, if c == 1 { 30 } else { 14 }).map_err(xerr)?;
        }
        self.row += 1;
        Ok(())
    }

    fn text(&mut self, col: u16, t: &str) -> Result<(), ReportError> {
        self.ws.write_string(self.row, col, cell(t)).map_err(xerr)?;
        Ok(())
    }

    fn num(&mut self, col: u16, v: f64) -> Result<(), ReportError> {
        self.ws.write_number(self.row, col, v).map_err(xerr)?;
        Ok(())
    }

    fn rate(&mut self, col: u16, v: f64) -> Result<(), ReportError> {
        self.ws.write_number_with_format(self.row, col, v, &self.pct).map_err(xerr)?;
        Ok(())
    }

    fn next(&mut self) {
        self.row += 1;
    }
}

fn sheet<'a>(wb: &'a mut Workbook, name: &str) -> Result<Sheet<'a>, ReportError> {
    let ws = wb.add_worksheet();
    ws.set_name(name).map_err(xerr)?;
    Ok(Sheet { ws, row: 0, bold: Format::new().set_bold(), pct: Format::new().set_num_format("0.0%") })
}

fn case_sheet(wb: &mut Workbook, name: &str, lang: Lang, cases: &[CaseLine]) -> Result<(), ReportError> {
    let mut s = sheet(wb, name)?;
    s.header(&[
        lang.pick("编号", "Number"),
        lang.pick("标题", "Title"),
        lang.pick("村代码", "Village"),
        lang.pick("类别", "Category"),
        lang.pick("级别", "Level"),
        lang.pick("风险", "Risk"),
        lang.pick("办结期限", "Deadline"),
        lang.pick("超期天数", "Days overdue"),
        lang.pick("责任人", "Responsible"),
    ])?;
    for c in cases {
        s.text(0, &c.number)?;
        s.text(1, &c.title)?;
        s.text(2, &c.village)?;
        s.text(3, lang.label(c.category))?;
        s.text(4, lang.label(c.level))?;
        s.text(5, lang.label(c.risk))?;
        s.text(6, &c.deadline.map(day).unwrap_or_default())?;
        if let Some(d) = c.days_overdue {
            s.num(7, d as f64)?;
        }
        s.text(8, c.responsible.as_deref().unwrap_or(""))?;
        s.next();
    }
    Ok(())
}

/// The monthly report as an xlsx workbook: summary, categories, areas,
/// overdue and high-risk cases.
pub fn monthly_xlsx(m: &Monthly, lang: Lang) -> Result<Vec<u8>, ReportError> {
    let mut wb = Workbook::new();
    {
        let mut s = sheet(&mut wb, lang.pick("概要", "Summary"))?;
        s.header(&[lang.pick("指标", "Figure"), &m.month.to_string(), &m.previous.month.to_string()])?;
        let p = &m.previous;
        let rows: [(&str, &str, f64, Option<f64>); 5] = [
            ("新增案件", "New cases", f64::from(m.new), Some(f64::from(p.new))),
            ("调解成功", "Settled", f64::from(m.settled), Some(f64::from(p.settled))),
            ("调解失败", "Failed", f64::from(m.failed), Some(f64::from(p.failed))),
            ("上报", "Escalated", f64::from(m.escalated), Some(f64::from(p.escalated))),
            ("超期案件", "Overdue", f64::from(m.overdue), Some(f64::from(p.overdue))),
        ];
        for (zh, en, now, before) in rows {
            s.text(0, lang.pick(zh, en))?;
            s.num(1, now)?;
            if let Some(b) = before {
                s.num(2, b)?;
            }
            s.next();
        }
        s.text(0, lang.pick("调解成功率", "Settlement rate"))?;
        s.rate(1, m.settlement_rate)?;
        s.rate(2, p.settlement_rate)?;
        s.next();
        let rates: [(&str, &str, Option<f64>); 3] = [
            ("村内化解占比（小事不出村）", "Settled in the village", Some(m.settled_in_village_share)),
            ("乡镇内化解占比（大事不出乡）", "Settled within the township", Some(m.settled_in_township_share)),
            ("回访按期率", "Follow-ups on time", m.follow_up.compliance),
        ];
        for (zh, en, v) in rates {
            s.text(0, lang.pick(zh, en))?;
            if let Some(v) = v {
                s.rate(1, v)?;
            }
            s.next();
        }
        let med = &m.median_days_to_settle;
        let f = &m.follow_up;
        let sv = &m.supervision;
        let counts: [(&str, &str, Option<f64>); 12] = [
            ("村级调解成功中位用时（天）", "Median days to settle, village", med.village),
            ("乡镇级调解成功中位用时（天）", "Median days to settle, township", med.township),
            ("县级调解成功中位用时（天）", "Median days to settle, county", med.county),
            ("高风险在办", "High-risk cases open", Some(f64::from(m.high_risk))),
            ("应回访", "Follow-up visits due", Some(f64::from(f.due))),
            ("按期回访", "Made on time", Some(f64::from(f.on_time))),
            ("逾期回访", "Made late", Some(f64::from(f.late))),
            ("未回访", "Not made", Some(f64::from(f.missed))),
            ("免予回访", "Waived", Some(f64::from(f.waived))),
            ("反弹", "Relapses", Some(f64::from(f.relapses))),
            ("督办", "Supervision orders", Some(f64::from(sv.supervised))),
            ("逾期未回复督办", "Orders not answered by their date", Some(f64::from(sv.overdue_answers))),
        ];
        for (zh, en, v) in counts {
            s.text(0, lang.pick(zh, en))?;
            if let Some(v) = v {
                s.num(1, v)?;
            }
            s.next();
        }
    }
    {
        let mut s = sheet(&mut wb, lang.pick("分类", "Categories"))?;
        s.header(&[
            lang.pick("类别代码", "Code"),
            lang.pick("类别", "Category"),
            lang.pick("新增", "New"),
            lang.pick("调解成功", "Settled"),
            lang.pick("调解失败", "Failed"),
            lang.pick("上报", "Escalated"),
        ])?;
        for c in Category::ALL {
            let f = m.by_category.get(c.code()).copied().unwrap_or_default();
            s.text(0, c.code())?;
            s.text(1, lang.label(*c))?;
            for (i, v) in [f.new, f.settled, f.failed, f.escalated].into_iter().enumerate() {
                s.num(2 + u16::try_from(i).unwrap_or(0), f64::from(v))?;
            }
            s.next();
        }
    }
    {
        let mut s = sheet(&mut wb, lang.pick("分地区", "Areas"))?;
        s.header(&[
            lang.pick("区划代码", "Code"),
            lang.pick("名称", "Name"),
            lang.pick("新增", "New"),
            lang.pick("调解成功", "Settled"),
            lang.pick("调解失败", "Failed"),
            lang.pick("上报", "Escalated"),
            lang.pick("超期", "Overdue"),
        ])?;
        for a in &m.by_area {
            s.text(0, &a.code)?;
            s.text(1, a.name.as_deref().unwrap_or(""))?;
            let c = a.counts;
            for (i, v) in [c.new, c.settled, c.failed, c.escalated, a.overdue].into_iter().enumerate() {
                s.num(2 + u16::try_from(i).unwrap_or(0), f64::from(v))?;
            }
            s.next();
        }
    }
    case_sheet(&mut wb, lang.pick("超期案件", "Overdue"), lang, &m.overdue_cases)?;
    case_sheet(&mut wb, lang.pick("高风险案件", "High risk"), lang, &m.high_risk_cases)?;
    wb.save_to_buffer().map_err(xerr)
}

/// The subsidy sheet as an xlsx workbook.
pub fn subsidy_xlsx(s: &Subsidy, lang: Lang) -> Result<Vec<u8>, ReportError> {
    let mut wb = Workbook::new();
    {
        let mut sh = sheet(&mut wb, lang.pick("以案定补", "Per person"))?;
        sh.header(&subsidy_header(lang))?;
        for p in &s.people {
            sh.text(0, if p.matched { &p.person } else { "" })?;
            sh.text(1, &p.name)?;
            sh.text(2, p.role.map(|r| lang.label(r)).unwrap_or(""))?;
            sh.text(3, p.area.as_deref().unwrap_or(""))?;
            for (i, v) in [p.recorded, p.mediated, p.settled, p.followed_up].into_iter().enumerate() {
                sh.num(4 + u16::try_from(i).unwrap_or(0), f64::from(v))?;
            }
            sh.next();
        }
        sh.text(1, lang.pick("合计", "Total"))?;
        let t = s.totals;
        for (i, v) in [t.recorded, t.mediated, t.settled, t.followed_up].into_iter().enumerate() {
            sh.num(4 + u16::try_from(i).unwrap_or(0), f64::from(v))?;
        }
    }
    if s.people.iter().any(|p| p.cases.is_some()) {
        let mut sh = sheet(&mut wb, lang.pick("案件明细", "Cases"))?;
        sh.header(&[lang.pick("姓名", "Name"), lang.pick("项目", "Column"), lang.pick("案件编号", "Case")])?;
        for p in &s.people {
            let Some(c) = &p.cases else { continue };
            for (zh, en, list) in column_lists(c) {
                for n in list {
                    sh.text(0, &p.name)?;
                    sh.text(1, lang.pick(zh, en))?;
                    sh.text(2, n)?;
                    sh.next();
                }
            }
        }
    }
    wb.save_to_buffer().map_err(xerr)
}

fn subsidy_header(lang: Lang) -> [&'static str; 8] {
    [
        lang.pick("人员编号", "staff_id"),
        lang.pick("姓名", "name"),
        lang.pick("角色", "role"),
        lang.pick("工作区划", "area"),
        lang.pick("登记", "recorded"),
        lang.pick("调解", "mediated"),
        lang.pick("调解成功", "settled"),
        lang.pick("回访", "followed_up"),
    ]
}

fn column_lists(c: &super::PersonCases) -> [(&'static str, &'static str, &Vec<String>); 4] {
    [
        ("登记", "recorded", &c.recorded),
        ("调解", "mediated", &c.mediated),
        ("调解成功", "settled", &c.settled),
        ("回访", "followed_up", &c.followed_up),
    ]
}

fn csv_err(e: csv::Error) -> ReportError {
    ReportError::Encode(e.to_string())
}

/// The monthly report as CSV in long form: one figure per row,
/// `group,item,measure,value` (Chinese headers and labels unless `lang` is English).
pub fn monthly_csv(m: &Monthly, lang: Lang) -> Result<String, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        lang.pick("分组", "group"),
        lang.pick("项目", "item"),
        lang.pick("指标", "measure"),
        lang.pick("数值", "value"),
    ])
    .map_err(csv_err)?;
    let mut row = |group: &str, item: &str, measure: &str, value: String| {
        w.write_record([cell(group), cell(item), cell(measure), value]).map_err(csv_err)
    };
    let total = lang.pick("合计", "total");
    let summary = lang.pick("概要", "summary");
    for (month, new, settled, failed, escalated, rate, overdue) in [
        (m.month, m.new, m.settled, m.failed, m.escalated, m.settlement_rate, m.overdue),
        (
            m.previous.month,
            m.previous.new,
            m.previous.settled,
            m.previous.failed,
            m.previous.escalated,
            m.previous.settlement_rate,
            m.previous.overdue,
        ),
    ] {
        let item = format!("{total} {month}");
        row(summary, &item, lang.pick("新增", "new"), new.to_string())?;
        row(summary, &item, lang.pick("调解成功", "settled"), settled.to_string())?;
        row(summary, &item, lang.pick("调解失败", "failed"), failed.to_string())?;
        row(summary, &item, lang.pick("上报", "escalated"), escalated.to_string())?;
        row(summary, &item, lang.pick("调解成功率", "settlement_rate"), format!("{rate:.4}"))?;
        row(summary, &item, lang.pick("超期", "overdue"), overdue.to_string())?;
    }
    let item = format!("{total} {}", m.month);
    let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.4}"));
    row(
        summary,
        &item,
        lang.pick("村内化解占比", "settled_in_village_share"),
        format!("{:.4}", m.settled_in_village_share),
    )?;
    row(
        summary,
        &item,
        lang.pick("乡镇内化解占比", "settled_in_township_share"),
        format!("{:.4}", m.settled_in_township_share),
    )?;
    row(summary, &item, lang.pick("村级中位用时（天）", "median_days_village"), opt(m.median_days_to_settle.village))?;
    row(
        summary,
        &item,
        lang.pick("乡镇级中位用时（天）", "median_days_township"),
        opt(m.median_days_to_settle.township),
    )?;
    row(summary, &item, lang.pick("县级中位用时（天）", "median_days_county"), opt(m.median_days_to_settle.county))?;
    row(summary, &item, lang.pick("高风险在办", "high_risk"), m.high_risk.to_string())?;
    let f = &m.follow_up;
    for (zh, en, v) in [
        ("应回访", "follow_ups_due", f.due),
        ("按期回访", "follow_ups_on_time", f.on_time),
        ("逾期回访", "follow_ups_late", f.late),
        ("未回访", "follow_ups_missed", f.missed),
        ("免予回访", "follow_ups_waived", f.waived),
        ("反弹", "relapses", f.relapses),
        ("督办", "supervised", m.supervision.supervised),
        ("督办回复", "supervision_answered", m.supervision.answered),
        ("逾期未回复督办", "supervision_overdue_answers", m.supervision.overdue_answers),
    ] {
        row(summary, &item, lang.pick(zh, en), v.to_string())?;
    }
    row(summary, &item, lang.pick("回访按期率", "follow_up_compliance"), opt(f.compliance))?;
    let category = lang.pick("类别", "category");
    for c in Category::ALL {
        let f = m.by_category.get(c.code()).copied().unwrap_or_default();
        let item = if lang == Lang::Zh { c.zh() } else { c.code() };
        for (zh, en, v) in [
            ("新增", "new", f.new),
            ("调解成功", "settled", f.settled),
            ("调解失败", "failed", f.failed),
            ("上报", "escalated", f.escalated),
        ] {
            row(category, item, lang.pick(zh, en), v.to_string())?;
        }
    }
    let area = lang.pick("地区", "area");
    for a in &m.by_area {
        let item = match &a.name {
            Some(n) => format!("{n}（{}）", a.code),
            None => a.code.clone(),
        };
        let c = a.counts;
        for (zh, en, v) in [
            ("新增", "new", c.new),
            ("调解成功", "settled", c.settled),
            ("调解失败", "failed", c.failed),
            ("上报", "escalated", c.escalated),
            ("超期", "overdue", a.overdue),
        ] {
            row(area, &item, lang.pick(zh, en), v.to_string())?;
        }
    }
    for c in &m.overdue_cases {
        row(
            lang.pick("超期案件", "overdue_case"),
            &c.number,
            lang.pick("超期天数", "days_overdue"),
            c.days_overdue.unwrap_or(0).to_string(),
        )?;
    }
    for c in &m.high_risk_cases {
        row(lang.pick("高风险案件", "high_risk_case"), &c.number, lang.pick("标题", "title"), cell(&c.title))?;
    }
    let bytes = w.into_inner().map_err(|e| ReportError::Encode(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| ReportError::Encode(e.to_string()))
}

/// The subsidy sheet as CSV, one person a row (and, for one person asked
/// for, the cases behind the counts after a blank line).
pub fn subsidy_csv(s: &Subsidy, lang: Lang) -> Result<String, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(subsidy_header(lang)).map_err(csv_err)?;
    for p in &s.people {
        let id = if p.matched { p.person.clone() } else { String::new() };
        w.write_record([
            cell(&id),
            cell(&p.name),
            p.role.map(|r| lang.label(r)).unwrap_or("").to_owned(),
            cell(p.area.as_deref().unwrap_or("")),
            p.recorded.to_string(),
            p.mediated.to_string(),
            p.settled.to_string(),
            p.followed_up.to_string(),
        ])
        .map_err(csv_err)?;
    }
    let t = s.totals;
    w.write_record([
        String::new(),
        lang.pick("合计", "total").to_owned(),
        String::new(),
        String::new(),
        t.recorded.to_string(),
        t.mediated.to_string(),
        t.settled.to_string(),
        t.followed_up.to_string(),
    ])
    .map_err(csv_err)?;
    let mut bytes = w.into_inner().map_err(|e| ReportError::Encode(e.to_string()))?;
    if s.people.iter().any(|p| p.cases.is_some()) {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([lang.pick("姓名", "name"), lang.pick("项目", "column"), lang.pick("案件编号", "case")])
            .map_err(csv_err)?;
        for p in &s.people {
            let Some(c) = &p.cases else { continue };
            for (zh, en, list) in column_lists(c) {
                for n in list {
                    w.write_record([cell(&p.name), lang.pick(zh, en).to_owned(), cell(n)]).map_err(csv_err)?;
                }
            }
        }
        bytes.push(b'\n');
        bytes.extend(w.into_inner().map_err(|e| ReportError::Encode(e.to_string()))?);
    }
    String::from_utf8(bytes).map_err(|e| ReportError::Encode(e.to_string()))
}
