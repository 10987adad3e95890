//! The server's log: one line per event on standard error, for people or for machines.
//!
//! Every event is logged under a stable English name (`"session ended"`, `"listening"`), the
//! name `--log-format json` prints as `message` and docs/OPERATIONS.md documents, so scripts
//! and alerts never depend on the language. The human format (`--log-format human`) looks the
//! name up in [`EVENTS`] and prints its meaning in the operator's language, with the fields'
//! names ([`FIELDS`]) and the server's own fixed phrases among their values ([`PHRASES`]) in
//! that language too. A test reads this crate's sources and fails if an event or a field has
//! no Chinese words. Texts from elsewhere (an operating system error, a library's reason) are
//! shown as they are.
//!
//! Colour only ever reaches a terminal: both formats write plain text when standard error is a
//! file or a pipe (a systemd journal, a log file), or when `NO_COLOR` is set. Every value is
//! escaped ([`fq_core::text::escape`]), since some come from peers.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use fq_core::lang::Lang;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How the log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event, in the operator's language.
    Human,
    /// One JSON object per line, with the stable English event names.
    Json,
}

/// Why the log could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up logging: {0}")]
pub struct InstallError(String);

/// Sends this process's log to standard error in `format`; `RUST_LOG` filters it (default
/// `info`). Call once, before anything is logged.
pub fn install(format: LogFormat, lang: Lang) -> Result<(), InstallError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Human => builder.with_ansi(ansi).event_format(HumanFormat { lang, ansi }).try_init(),
    };
    installed.map_err(|e| InstallError(e.to_string()))
}

/// The human log format: time, level, the event's meaning, then its fields as `name=value`.
#[derive(Debug, Clone, Copy)]
pub struct HumanFormat {
    /// The language of the words.
    pub lang: Lang,
    /// Whether to colour the level (only on a terminal).
    pub ansi: bool,
}

impl<S, N> FormatEvent<S, N> for HumanFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        SystemTime.format_time(&mut writer)?;
        writer.write_char(' ')?;
        let level = *event.metadata().level();
        let (word, colour) = level_word(level, self.lang);
        if self.ansi {
            write!(writer, "\u{1b}[{colour}m{word}\u{1b}[0m ")?;
        } else {
            write!(writer, "{word} ")?;
        }
        writer.write_str(&line(self.lang, &fields.message, &fields.fields))?;
        writer.write_char('\n')
    }
}

/// One event as a line, without time and level: the event's words, then `name=value` pairs.
pub fn line(lang: Lang, message: &str, fields: &[(String, String)]) -> String {
    let mut out = String::new();
    match lang {
        Lang::En => out.push_str(&fq_core::text::escape(message)),
        Lang::Zh => out.push_str(&fq_core::text::escape(&event_words(message))),
    }
    for (name, value) in fields {
        let name = match lang {
            Lang::Zh => field_words(name).unwrap_or(name),
            Lang::En => name,
        };
        let value = match lang {
            Lang::Zh => phrase_words(value).unwrap_or_else(|| value.clone()),
            Lang::En => value.clone(),
        };
        let _ = write!(out, " {name}={}", fq_core::text::escape(&value));
    }
    out
}

/// The words of a level, and its ANSI colour.
fn level_word(level: Level, lang: Lang) -> (&'static str, &'static str) {
    let (zh, en, colour) = match level {
        Level::ERROR => ("错误", "ERROR", "31"),
        Level::WARN => ("警告", "WARN", "33"),
        Level::INFO => ("信息", "INFO", "32"),
        Level::DEBUG => ("调试", "DEBUG", "34"),
        Level::TRACE => ("跟踪", "TRACE", "35"),
    };
    (lang.pick(zh, en), colour)
}

/// An event's fields, in order, the message apart.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name().to_owned(), text));
        }
    }
}

/// The Chinese words of an event, by its stable English name; an unknown name (an event of
/// another crate) is kept.
fn event_words(name: &str) -> String {
    EVENTS.iter().find(|(en, _)| *en == name).map_or_else(|| name.to_owned(), |(_, zh)| (*zh).to_owned())
}

/// The Chinese name of a field.
fn field_words(name: &str) -> Option<&'static str> {
    FIELDS.iter().find(|(en, _)| *en == name).map(|(_, zh)| *zh)
}

/// The Chinese words of a value, if it is one of the server's fixed phrases or a pattern of
/// them (`{}` stands for any text, carried over as it is).
fn phrase_words(value: &str) -> Option<String> {
    match value {
        "true" => return Some("是".to_owned()),
        "false" => return Some("否".to_owned()),
        _ => {}
    }
    PHRASES.iter().find_map(|(en, zh)| fill(zh, &captures(en, value)?))
}

/// The texts `{}` stands for when `value` matches `pattern`, in order.
fn captures<'a>(pattern: &str, value: &'a str) -> Option<Vec<&'a str>> {
    let mut pieces = pattern.split("{}");
    let first = pieces.next().unwrap_or_default();
    let mut rest = value.strip_prefix(first)?;
    let mut taken = Vec::new();
    let pieces: Vec<&str> = pieces.collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let at = if last {
            if piece.is_empty() { rest.len() } else { rest.strip_suffix(piece).map(str::len)? }
        } else if piece.is_empty() {
            return None;
        } else {
            rest.find(piece)?
        };
        taken.push(&rest[..at]);
        rest = &rest[at + piece.len()..];
    }
    (rest.is_empty()).then_some(taken)
}

/// `zh` with `{0}`, `{1}`… replaced by the captured texts.
fn fill(zh: &str, taken: &[&str]) -> Option<String> {
    let mut out = zh.to_owned();
    for (i, text) in taken.iter().enumerate() {
        out = out.replace(&format!("{{{i}}}"), text);
    }
    Some(out)
}

/// Every event the server logs, by its stable English name, with its Chinese meaning.
/// docs/OPERATIONS.md lists the ones to watch.
pub const EVENTS: &[(&str, &str)] = &[
    ("listening", "开始监听"),
    (
        "small udp receive buffer: bursts of devices dialing at once will lose packets; raise net.core.rmem_max",
        "UDP 接收缓冲区偏小：很多设备同时连接时会丢包，请调大 net.core.rmem_max",
    ),
    ("connection accepted", "接受连接"),
    ("connection refused", "拒绝连接"),
    ("connection refused: server full", "拒绝连接：服务器的连接数已满"),
    (
        "connection limit per certificate reached; oldest connection closed",
        "同一证书的连接数达到上限，已关闭它最早的连接",
    ),
    ("connection closed", "连接已关闭"),
    ("connection closed: certificate revoked", "连接已关闭：证书已被吊销"),
    ("session opened", "会话已打开"),
    ("session started", "同步会话开始"),
    ("session caught up", "会话双方已同步完毕"),
    ("session ended", "同步会话结束"),
    ("session ended by the peer", "对端结束了会话"),
    ("session failed", "会话出错，只结束这一个会话"),
    ("frames after our stream ended, dropped", "本端已结束发送，之后的帧不再发出（对端下次会重发）"),
    ("session timed out", "会话超时"),
    ("session refused: hello tier does not match the certificate", "拒绝会话：对端声明的层级与证书不符"),
    ("changes applied", "收到的修改已保存"),
    ("changes refused; see the audit log", "有修改被拒收，详见审计记录"),
    ("changes acknowledged by the peer", "对端已确认收到修改"),
    ("the peer refused changes we sent", "对端拒收了本服务器发出的修改"),
    ("recovered by digest", "已按摘要补齐缺少的修改"),
    ("cannot start a session", "无法开始会话"),
    ("cannot read the upstream position", "无法读取与上级服务器的同步位置"),
    ("cannot record the peer's lag", "无法记录下级还缺、还欠多少修改"),
    (
        "cannot save the received changes; closing every session, peers will resend",
        "无法保存收到的修改：关闭全部会话，对端会重新发送",
    ),
    ("cannot open a group transaction; committing one by one", "无法开启批量事务，改为逐个提交"),
    ("peer input budget spent; session ended", "对端未发完的数据超出了它的额度，会话已结束"),
    ("server input budget spent; session ended", "服务器接收未发完数据的总额度已满，会话已结束"),
    ("replica created", "已新建本服务器的台账"),
    ("replica closed", "台账已关闭"),
    (
        "the replica thread stopped unexpectedly; nothing can be synced, so the server stops",
        "台账线程意外停止，无法再同步，服务器退出",
    ),
    ("the replica thread ended abnormally", "台账线程异常结束"),
    ("upstream connected", "已连上县服务器"),
    ("upstream disconnected", "与县服务器的连接已断开"),
    ("upstream unreachable", "连不上县服务器"),
    ("upstream unreachable: no answer", "连不上县服务器：没有回应"),
    ("cannot set up the upstream endpoint; not syncing with the county", "无法建立连接县服务器的网络端点，不与县同步"),
    (
        "no --upstream: this township server will not sync with the county",
        "没有指定 --upstream：本乡镇服务器不会与县同步",
    ),
    ("revocation list installed", "新的吊销列表已生效"),
    ("revocation list read", "已读取吊销列表"),
    ("saved revocation list read", "已读取保存的吊销列表"),
    (
        "saved revocation list unusable; ignoring it and starting with the bundle's and the config's lists",
        "保存的吊销列表无法使用，已忽略，先用证书包和配置文件中的列表",
    ),
    ("revocation list refused", "拒绝了这份吊销列表"),
    ("revocation list is not newer; ignored", "吊销列表不比现用的新，已忽略"),
    ("revocation list saved", "吊销列表已保存"),
    ("cannot save the revocation list; it is in force until a restart", "无法保存吊销列表：在重启之前仍然有效"),
    ("cannot read the revocation list; keeping the one in force", "无法读取吊销列表文件，继续使用现有的列表"),
    ("revocation list sent", "吊销列表已发给下级服务器"),
    ("revocation list not sent", "吊销列表没有发出"),
    ("revocation list not taken in time", "下级服务器没有及时接收吊销列表"),
    ("revocation list from upstream ignored", "忽略了县服务器发来的吊销列表"),
    ("revocation list not taken for checking the county", "这份吊销列表没有用来核对县服务器"),
    (
        "SIGHUP: no revocations_file in the config; nothing to reload",
        "收到 SIGHUP：配置文件中没有 revocations_file，无需重新读取",
    ),
    ("signal received", "收到信号"),
    ("shutting down", "正在关闭"),
    ("shutdown complete", "已关闭"),
    ("connections did not finish in time; closing them", "连接没有及时结束，强行关闭"),
    ("reset key created", "已生成连接重置密钥"),
    ("reset key damaged; making a new one", "连接重置密钥文件已损坏，重新生成"),
    ("cannot read the policy file; keeping the policy in force", "无法读取县级政策文件，继续使用现行政策"),
    ("policy file offered", "已把县级政策文件交给台账线程"),
    ("county policy installed", "县级政策已生效"),
    ("county policy is not newer; ignored", "县级政策不比现行的新，已忽略"),
    ("county policy refused; the one in force stays", "拒绝了这份县级政策，继续使用现行政策"),
    ("county policy from upstream is not newer; ignored", "县服务器发来的县级政策不比现行的新，已忽略"),
    ("county policy from upstream refused; the one in force stays", "拒绝了县服务器发来的县级政策，继续使用现行政策"),
    ("peer clock is off", "对端的时钟与本机相差过大"),
    ("peer clock", "对端时钟"),
    ("monthly report written", "月报已生成"),
    ("cannot write the monthly report; trying again in an hour", "无法生成月报，一小时后重试"),
    ("sync file imported", "已导入同步文件"),
    ("sync file refused", "拒收同步文件"),
    ("sync file refused: it is an answer file", "拒收同步文件：这是回执文件"),
    ("sync file answered", "已回复同步文件"),
    (
        "cannot open the import socket; fq-server import will not work",
        "无法打开导入套接字，fq-server import 将不能使用",
    ),
    ("an import over the socket failed", "经套接字导入同步文件失败"),
    ("import socket accept failed", "导入套接字接受连接失败"),
];

/// Every field name the server logs, with its Chinese name.
pub const FIELDS: &[(&str, &str)] = &[
    ("addr", "地址"),
    ("after", "等待时间"),
    ("answer_bytes", "回执字节"),
    ("applied", "已应用"),
    ("bytes", "字节"),
    ("bytes_in", "收到字节"),
    ("bytes_out", "发出字节"),
    ("caught_up", "已同步完"),
    ("certificate", "证书层级"),
    ("claimed", "声明层级"),
    ("claimed_version", "声明版本"),
    ("closed", "已关闭"),
    ("code", "代码"),
    ("connections", "连接数"),
    ("current", "现用版本"),
    ("duplicates", "重复"),
    ("error", "错误"),
    ("frames", "帧数"),
    ("grace", "宽限"),
    ("granted", "实际得到"),
    ("held", "已占用"),
    ("id", "编号"),
    ("len", "长度"),
    ("limit", "上限"),
    ("max_connections", "最大连接数"),
    ("max_connections_per_peer", "每证书最大连接数"),
    ("memory_bound_mib", "内存上限MiB"),
    ("month", "月份"),
    ("offered", "收到版本"),
    ("offset_ms", "时差毫秒"),
    ("path", "路径"),
    ("peer", "对端"),
    ("pending", "待补依赖"),
    ("previous", "原版本"),
    ("reason", "原因"),
    ("received", "已接收"),
    ("refused", "拒收"),
    ("refused_by_peer", "被对端拒收"),
    ("refused_here", "本处拒收"),
    ("remote", "远端地址"),
    ("replayed", "重复导入"),
    ("replica", "副本"),
    ("result", "处理结果"),
    ("revoked", "吊销数"),
    ("role", "角色"),
    ("scope", "区域"),
    ("sent", "已发送"),
    ("serial", "证书序号"),
    ("session", "会话"),
    ("side", "方向"),
    ("signal", "信号"),
    ("source", "来源"),
    ("status", "状态"),
    ("text", "说明"),
    ("tier", "层级"),
    ("update", "结果"),
    ("upstream", "上级"),
    ("version", "版本"),
    ("wanted", "所需"),
];

/// The server's own fixed phrases that appear as field values, with their Chinese words. `{}`
/// stands for any text, which `{0}`, `{1}`… carry over.
pub const PHRASES: &[(&str, &str)] = &[
    // Tiers, roles, sides and sources.
    ("county", "县"),
    ("township", "乡镇"),
    ("device", "设备"),
    ("county-admin", "县级管理员"),
    ("township-officer", "乡镇干部"),
    ("mediator", "调解员"),
    ("grid-worker", "网格员"),
    ("Parent", "上级方"),
    ("Child", "下级方"),
    ("revocations_file", "吊销列表文件"),
    ("policy_file", "政策文件"),
    ("upstream", "县服务器"),
    // Why a stream, a session or a connection ended.
    ("the peer finished the stream", "对端发送完毕"),
    ("the peer reset the stream", "对端中断了数据流"),
    ("the stream was closed", "数据流已关闭"),
    ("stream read out of order", "数据流读取顺序错误"),
    ("early data rejected", "早期数据被拒绝"),
    ("closed by the peer", "对端关闭了连接"),
    ("closed by this side", "本方关闭了连接"),
    ("the peer went silent (idle timeout)", "对端长时间无响应（空闲超时）"),
    ("reset by the peer", "对端重置了连接"),
    ("transport error", "传输错误"),
    ("quic version mismatch", "QUIC 版本不符"),
    ("connection ids exhausted", "连接编号用尽"),
    ("server shutting down", "服务器正在关闭"),
    ("session ended", "会话结束"),
    ("closed by this server", "本服务器结束了会话"),
    ("handshake timed out", "握手超时"),
    ("handshake failed: {}", "握手失败：{0}"),
    ("peer presented no certificate", "对端没有出示证书"),
    ("peer did not negotiate alpn fq-sync/1", "对端不使用 fq-sync/1 协议"),
    ("peer certificate names no valid identity: {}", "对端证书中没有有效身份：{0}"),
    ("certificate {} of {} is revoked", "{1} 的证书 {0} 已被吊销"),
    ("peer scope {} is outside county {}", "对端区域 {0} 不在本县 {1} 之内"),
    ("scope {} is outside this server's {}", "区域 {0} 不在本服务器的 {1} 之内"),
    ("a {} server cannot be a child of this {} server", "{0}服务器不能作为本{1}服务器的下级"),
    ("too much unfinished input from this certificate", "该证书未发完的数据过多"),
    ("the server is busy; sync again in a few minutes", "服务器正忙，请过几分钟再同步"),
    ("the server could not save; sync again later", "服务器无法保存，请稍后再同步"),
    ("hello tier does not match the certificate", "对端声明的层级与证书不符"),
    // Error codes of the sync protocol, as the log shows them.
    ("BadFrame", "数据格式错误"),
    ("UnsupportedVersion", "协议版本不兼容"),
    ("Unauthorized", "无权同步"),
    ("TooLarge", "超出限制"),
    ("Internal", "对方内部错误"),
    ("ShuttingDown", "正在关闭"),
    ("Busy", "繁忙"),
    ("Other({})", "其他（{0}）"),
    // How a revocation list was taken.
    ("Installed { previous: {}, version: {} }", "已启用（原版本 {0}，新版本 {1}）"),
    ("Stale { offered: {}, current: {} }", "未采用（收到版本 {0}，现用版本 {1}）"),
    // How a county policy file was taken.
    ("Ok(Installed { previous: {}, version: {} })", "已启用（原版本 {0}，新版本 {1}）"),
    ("Ok(Stale { offered: {}, current: {} })", "未采用（收到版本 {0}，现用版本 {1}）"),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeSet;

    use super::*;

    /// Every tracing macro call in the crate's sources: its message and its field names.
    fn logged() -> Vec<(String, Vec<String>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut calls = Vec::new();
        let mut files = vec![dir];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("journal.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for name in ["trace!(", "debug!(", "info!(", "warn!(", "error!("] {
                let mut from = 0;
                while let Some(at) = text[from..].find(name) {
                    let start = from + at + name.len();
                    let preceded = text[..from + at].chars().next_back();
                    from = start;
                    if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    calls.push(arguments(&text[start..]));
                }
            }
        }
        calls
    }

    /// The message (the last string literal argument) and field names of one macro call.
    fn arguments(text: &str) -> (String, Vec<String>) {
        let mut args = Vec::new();
        let mut current = String::new();
        let mut depth = 0;
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    current.push(c);
                    while let Some(s) = chars.next() {
                        current.push(s);
                        if s == '\\' {
                            current.extend(chars.next());
                        } else if s == '"' {
                            break;
                        }
                    }
                }
                '(' | '[' | '{' => {
                    depth += 1;
                    current.push(c);
                }
                ')' | ']' | '}' if depth == 0 => break,
                ')' | ']' | '}' => {
                    depth -= 1;
                    current.push(c);
                }
                ',' if depth == 0 => args.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        args.push(current);
        let args: Vec<String> = args.into_iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        let message = args.last().cloned().unwrap_or_default();
        let message = message.trim_matches('"').to_owned();
        let fields = args[..args.len().saturating_sub(1)]
            .iter()
            .map(|a| {
                let name = a.split('=').next().unwrap_or_default().trim();
                name.trim_start_matches(['%', '?']).split('.').next_back().unwrap_or_default().to_owned()
            })
            .collect();
        (message, fields)
    }

    #[test]
    fn every_logged_event_and_field_has_chinese_words() {
        let calls = logged();
        assert!(calls.len() > 40, "found only {} log calls: is the scan broken?", calls.len());
        let events: BTreeSet<&str> = EVENTS.iter().map(|(en, _)| *en).collect();
        let fields: BTreeSet<&str> = FIELDS.iter().map(|(en, _)| *en).collect();
        for (message, names) in &calls {
            assert!(events.contains(message.as_str()), "no Chinese words for the event {message:?}");
            for name in names {
                assert!(fields.contains(name.as_str()), "no Chinese name for the field {name:?} of {message:?}");
            }
        }
        for (_, zh) in EVENTS.iter().chain(FIELDS) {
            assert!(zh.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)), "{zh:?} is not Chinese");
        }
    }

    #[test]
    fn line_translates_names_fields_and_phrases_and_escapes_values() {
        let fields = vec![
            ("peer".to_owned(), "d07".to_owned()),
            ("reason".to_owned(), "certificate 5f0c of d07 is revoked".to_owned()),
            ("tier".to_owned(), "township".to_owned()),
            ("text".to_owned(), "evil\u{1b}[2J".to_owned()),
            ("caught_up".to_owned(), "true".to_owned()),
        ];
        let zh = line(Lang::Zh, "connection refused", &fields);
        assert_eq!(zh, "拒绝连接 对端=d07 原因=d07 的证书 5f0c 已被吊销 层级=乡镇 说明=evil\\u{1b}[2J 已同步完=是");
        let en = line(Lang::En, "connection refused", &fields);
        assert!(en.starts_with("connection refused peer=d07 reason=certificate 5f0c of d07 is revoked"), "{en}");
        assert!(!en.contains('\u{1b}'));
        assert_eq!(phrase_words("Installed { previous: 0, version: 2 }").unwrap(), "已启用（原版本 0，新版本 2）");
        assert_eq!(phrase_words("handshake failed: timed out").unwrap(), "握手失败：timed out");
        assert_eq!(phrase_words("no such phrase"), None);
    }
}
