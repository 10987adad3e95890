//! `fq policy show`: the county policy this replica computes with, its version,
//! and the roster that came with it (`schemas/policy.v1.schema.json` for `--json`).

use std::io::Write;

use fq_core::ledger::Ledger;
use serde_json::json;

use crate::lang::Lang;
use crate::render::{self, minute};

/// Prints the policy in force.
pub(crate) fn show(out: &mut dyn Write, lang: Lang, json: bool, ledger: &Ledger) -> anyhow::Result<()> {
    let in_force = ledger.policy();
    let p = in_force.policy();
    let signed = in_force.signed();
    if json {
        return render::json_line(
            out,
            &json!({
                "version": in_force.version(),
                "default": signed.is_none(),
                "county": signed.map(|s| s.county().to_string()),
                "issued_at": signed.map(|s| s.issued_at()),
                "policy": p,
                "roster": in_force.roster().len(),
                "text": signed.map(|s| s.text()),
            }),
        );
    }
    let days: Vec<String> = p.follow_up_days.iter().map(u32::to_string).collect();
    match signed {
        Some(s) => {
            let county = in_force.area_name(s.county().as_str()).map(|n| format!("{n} ")).unwrap_or_default();
            match lang {
                Lang::Zh => writeln!(
                    out,
                    "县级政策第 {} 版（{county}{}，{} 签发），花名册 {} 人",
                    s.version(),
                    s.county(),
                    minute(s.issued_at()),
                    in_force.roster().len()
                )?,
                Lang::En => writeln!(
                    out,
                    "County policy version {} ({county}{}, signed {}), roster of {} people",
                    s.version(),
                    s.county(),
                    minute(s.issued_at()),
                    in_force.roster().len()
                )?,
            }
        }
        None => writeln!(
            out,
            "{}",
            lang.pick(
                "还没有收到县级政策（第 0 版），按默认规则执行；同步后即使用县里签发的政策。",
                "No county policy received yet (version 0): the defaults apply until a sync brings the county's."
            )
        )?,
    }
    let d = p.deadlines;
    match lang {
        Lang::Zh => {
            writeln!(out, "办结期限：村级 {} 天，乡镇级 {} 天，县级 {} 天", d.village, d.township, d.county)?;
            if days.is_empty() {
                writeln!(out, "回访：不要求回访")?;
            } else {
                writeln!(out, "回访：调解成功后第 {} 天", days.join("、"))?;
            }
        }
        Lang::En => {
            writeln!(
                out,
                "Deadlines: village {} days, township {} days, county {} days",
                d.village, d.township, d.county
            )?;
            if days.is_empty() {
                writeln!(out, "Follow-ups: none required")?;
            } else {
                writeln!(out, "Follow-ups: {} days after a settlement", days.join(", "))?;
            }
        }
    }
    let r = &p.routing;
    let mut rules: Vec<String> = Vec::new();
    if r.high_risk_to_township {
        rules.push(lang.pick("高风险案件立即上报乡镇", "high-risk cases go to the township at once").into());
    }
    for f in &r.flags_to_township {
        rules.push(match lang {
            Lang::Zh => format!("有“{}”标记的案件立即上报乡镇", f.zh()),
            Lang::En => format!("cases flagged \"{}\" go to the township at once", f.en().to_lowercase()),
        });
    }
    if r.flag_overdue_village {
        rules.push(
            lang.pick("超过村级期限的案件提示上报", "village cases past their deadline are flagged for escalation")
                .into(),
        );
    }
    if !r.township_categories.is_empty() {
        let cats: Vec<&str> = r.township_categories.iter().map(|c| lang.label(*c)).collect();
        rules.push(match lang {
            Lang::Zh => format!("{}直接由乡镇受理", cats.join("、")),
            Lang::En => format!("{} start at the township", cats.join(", ")),
        });
    }
    if rules.is_empty() {
        rules.push(lang.pick("无", "none").into());
    }
    match lang {
        Lang::Zh => writeln!(out, "分流：{}", rules.join("；"))?,
        Lang::En => writeln!(out, "Routing: {}", rules.join("; "))?,
    }
    Ok(())
}
