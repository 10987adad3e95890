//! The raw command line, as clap sees it, in the user's language.
//!
//! Values a cadre types (codes, categories, roles, parties, numbers) are kept
//! as text here and parsed by `request` with the core's forgiving parsers, so
//! that a mistake gets a message in the user's language naming the problem,
//! not a generic usage error.
//!
//! Every text people read here (a command's about, an option's help, a value
//! placeholder) is written `中文 / English`; [`command`] keeps the half for the
//! language in use, so `fq --help` is all Chinese by default and all English
//! with `--lang en` (a test checks that no text lacks its other half). The
//! longer texts after a command's options (examples, the category codes) are
//! in [`after_help`]. clap's own words (its headings, `[OPTIONS]`, its
//! annotations) are replaced in [`command`] and [`localize_help`]; its errors
//! are put into words by `message::report_usage`.

use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use fq_core::case::{Category, Level, Outcome, Risk, RiskFlag, Role, Status};

use crate::lang::{Lang, choices};

/// 枫桥矛盾纠纷案件台账（离线可用） / The Fengqiao dispute case ledger, offline first
#[derive(Debug, Parser)]
#[command(name = "fq", version, propagate_version = true, disable_help_flag = true, disable_version_flag = true)]
#[command(disable_help_subcommand = true)]
pub(crate) struct Cli {
    /// 台账所在目录（也可用环境变量 FQ_DATA_DIR） / Directory holding ledger.db (or set FQ_DATA_DIR)
    #[arg(long, global = true, env = "FQ_DATA_DIR", hide_env = true, value_name = "目录 / DIR")]
    pub data_dir: Option<PathBuf>,
    /// 输出 JSON，供程序读取 / Print machine-readable JSON
    #[arg(long, global = true)]
    pub json: bool,
    /// 显示语言 zh 或 en，默认按系统语言（未设置、C、POSIX 时为中文） / Language, zh or en; default from the locale (Chinese when unset, C or POSIX)
    #[arg(long, global = true, value_parser = crate::lang::parse, value_name = "zh|en / zh|en")]
    pub lang: Option<Lang>,
    /// 显示帮助 / Show this help
    #[arg(short = 'h', long, global = true, action = ArgAction::Help)]
    help: Option<bool>,
    /// 显示版本 / Show the version
    #[arg(short = 'V', long, action = ArgAction::Version)]
    version: Option<bool>,
    /// 从文件读台账口令（供脚本用，文件须仅本人可读）；也可设 FQ_PASSPHRASE / Read the ledger passphrase from FILE (scripts; owner-only file); FQ_PASSPHRASE also works
    #[arg(long, global = true, value_name = "文件 / FILE")]
    pub passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// 在本机建立台账 / Set up the ledger on this device
    Init(InitArgs),
    /// 用县里发的证书包登记已在使用的本机 / Enroll this device with a certificate bundle from the county
    Enroll(EnrollArgs),
    /// 与乡镇或县服务器同步，或与同村另一台设备直接同步 / Sync with the township or county server, or directly with another device of the village
    Sync(SyncArgs),
    /// 等待同村另一台设备连过来直接同步（同一无线网或热点，不用服务器） / Wait for another device of the village to sync with this one directly (same Wi-Fi or hotspot, no server)
    Serve(ServeArgs),
    /// 今日待办：超期、快到期、该回访、待接收、待回复督办 / Today's work: overdue, due soon, visits due, escalations to accept, supervision to answer
    Todo(TodoArgs),
    /// 案件：登记、查看、办理 / Cases: record, view, handle
    #[command(subcommand)]
    Case(CaseCommand),
    /// 统计报表：月度统计、以案定补 / Reports: monthly figures, cases per person
    #[command(subcommand)]
    Report(ReportCommand),
    /// 县级政策：办结期限、回访安排、分流规则 / The county policy: deadlines, follow-ups, routing
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// 导出全部案件 / Export every case
    Export(ExportArgs),
    /// 合并审计：概要、冲突、经过、校验、比对、拒收 / Merge audit: summary, conflicts, history, verify, compare, refusals
    Audit(AuditArgs),
    /// 演示：在本机跑一遍完整的县、乡、村流程 / A guided demo: the whole county, township and village story on this machine
    Demo,
    /// 加密旧版未加密的台账 / Encrypt a ledger made before encryption
    Encrypt(EncryptArgs),
    /// 台账口令 / The ledger's passphrase
    #[command(subcommand)]
    Passphrase(PassphraseCommand),
}

#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    /// 口令连续输错几次后清除本机密钥（默认10） / Wrong passphrases before the key is erased (default 10)
    #[arg(long, value_name = "次数 / N")]
    pub wipe_after: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PassphraseCommand {
    /// 更改台账口令（先输旧口令，再输两遍新口令） / Change the passphrase (old one, then the new one twice)
    Change(PassphraseChangeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PassphraseChangeArgs {
    /// 从文件读新口令（供脚本用） / Read the new passphrase from FILE (scripts)
    #[arg(long, value_name = "文件 / FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// 行政区划代码：网格员、调解员填12位村代码，乡镇干部填9位，县级填6位（有证书包时可不填） / Division code: 12 digits (village) for grid workers and mediators, 9 for township officers, 6 for county admins (optional with --bundle)
    #[arg(long, value_name = "代码 / CODE", required_unless_present = "bundle")]
    pub village: Option<String>,
    /// 使用人姓名 / Name of the person using this device
    #[arg(long, value_name = "姓名 / NAME")]
    pub name: String,
    /// 角色（有证书包时可不填） / Role (optional with --bundle)
    #[arg(long, value_name = "角色 / ROLE", required_unless_present = "bundle")]
    pub role: Option<String>,
    /// 网格编号（网格员填） / Grid number (grid workers)
    #[arg(long, value_name = "编号 / N")]
    pub grid: Option<String>,
    /// 县里发的证书包：角色和区划取自证书包，并登记本机 / Certificate bundle from the county: role and area come from it, and the device is enrolled
    #[arg(long, value_name = "证书包 / BUNDLE_FILE")]
    pub bundle: Option<PathBuf>,
    /// 县里随证书包提供的吊销清单（可选），已吊销的证书不能登记 / The county's revocation list file, if handed over with the bundle: a revoked certificate is refused
    #[arg(long, value_name = "文件 / FILE", requires = "bundle")]
    pub revocations: Option<PathBuf>,
    /// 口令连续输错几次后清除本机密钥（默认10） / Wrong passphrases before the key is erased (default 10)
    #[arg(long, value_name = "次数 / N")]
    pub wipe_after: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct EnrollArgs {
    /// 县里发的证书包文件 / Certificate bundle file from the county
    #[arg(long, value_name = "证书包 / BUNDLE_FILE")]
    pub bundle: PathBuf,
    /// 县里随证书包提供的吊销清单（可选），已吊销的证书不能登记 / The county's revocation list file, if handed over with the bundle: a revoked certificate is refused
    #[arg(long, value_name = "文件 / FILE")]
    pub revocations: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    /// 服务器地址（如 10.0.0.5:4433），默认用上次的 / Server address (e.g. 10.0.0.5:4433); default: the last one used
    #[arg(long, value_name = "地址 / ADDR", conflicts_with_all = ["to_file", "from_file"])]
    pub server: Option<String>,
    /// 与同村另一台设备直接同步：写对方运行 fq serve 时显示的地址 / Sync directly with another device of the village: the address its fq serve shows
    #[arg(long = "peer", value_name = "地址 / ADDR", conflicts_with_all = ["server", "to_file", "from_file"])]
    pub device: Option<String>,
    /// 没有网络时：把要上传的修改写进同步文件，用U盘带到乡镇导入 / No network: write the changes to send into a sync file, to carry to the township on a USB stick
    #[arg(long, value_name = "文件 / FILE", conflicts_with = "from_file")]
    pub to_file: Option<PathBuf>,
    /// 导入同步文件：乡镇的回执，或同村另一台设备的文件 / Import a sync file: the township's answer, or a file from another device of the village
    #[arg(long, value_name = "文件 / FILE")]
    pub from_file: Option<PathBuf>,
    /// 和 --to-file 一起用：文件给同村另一台设备（写它的证书编号），不给乡镇 / With --to-file: the file is for another device of the village (its certificate id), not the township
    #[arg(long = "for", value_name = "编号 / ID", requires = "to_file")]
    pub peer: Option<String>,
    /// 和 --from-file 一起用：导入另一台设备的文件后，把回执写到这里带回去 / With --from-file: after importing another device's file, write the answer here to carry back
    #[arg(long, value_name = "文件 / FILE", requires = "from_file")]
    pub answer: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// 在哪个地址和端口等待（默认 0.0.0.0:4433，即本机连着的所有网络） / Address and port to wait on (default 0.0.0.0:4433: every network this device is on)
    #[arg(long, value_name = "地址 / ADDR")]
    pub listen: Option<String>,
    /// 与一台设备同步完就结束 / Stop after one device has synced
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CaseCommand {
    /// 登记新案件 / Record a new case
    New(NewArgs),
    /// 列出案件 / List cases
    List(ListArgs),
    /// 查看案件详情 / Show a case
    Show(ShowArgs),
    /// 修改案件信息 / Edit a case
    Edit(EditArgs),
    /// 添加调解记录 / Add a mediation note
    Note(NoteArgs),
    /// 指派包保责任人 / Name the responsible person
    Assign(AssignArgs),
    /// 上报上一级 / Escalate one level up
    Escalate(ReasonArgs),
    /// 接收上报的案件 / Accept an escalated case
    Accept(CaseRef),
    /// 登记调解成功 / Record a settlement
    Settle(SettleArgs),
    /// 登记调解失败 / Record that mediation failed
    Fail(ReasonArgs),
    /// 登记司法确认 / Record judicial confirmation
    Confirm(ConfirmArgs),
    /// 登记回访 / Record a follow-up visit
    Followup(FollowupArgs),
    /// 归档 / Archive a closed case
    Archive(CaseRef),
    /// 督办：上级责令限期办理 / Order action on a case by a date (supervision)
    Supervise(SuperviseArgs),
    /// 回复督办 / Answer a supervision order
    Respond(RespondArgs),
    /// 免予回访：写明理由后不再回访 / Waive the remaining follow-up visits, with a reason
    Waive(ReasonArgs),
    /// 从表格（CSV）导入已有案件，列与导出相同 / Import existing cases from a CSV file with the export's columns
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TodoArgs {
    /// 只看这个乡镇或村（9或12位代码） / Only this township or village (9 or 12 digits)
    #[arg(long, value_name = "代码 / CODE")]
    pub scope: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SuperviseArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 督办要求 / What must be done
    #[arg(long, value_name = "文字 / TEXT")]
    pub instruction: String,
    /// 限期（日期，如 2026-11-10） / By when (a date, e.g. 2026-11-10)
    #[arg(long, value_name = "日期 / DATE")]
    pub due: String,
}

#[derive(Debug, Args)]
pub(crate) struct RespondArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 办理情况 / What was done
    #[arg(long, value_name = "文字 / TEXT")]
    pub note: String,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// CSV 文件（可用 fq export --format csv 导出的格式） / The CSV file (as fq export --format csv writes it)
    #[arg(value_name = "文件 / FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReportCommand {
    /// 月度统计报表（月汇总、月研判） / The monthly figures
    Monthly(ReportArgs),
    /// 以案定补：每人登记、调解、调解成功、回访的案件数 / Cases recorded, mediated, settled and followed up, per person
    Subsidy(SubsidyArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    /// 屏幕表格 / A table on screen
    Table,
    /// CSV 表格 / CSV
    Csv,
    /// JSON / JSON
    Json,
    /// 网页（单个文件，离线可看，含图表） / HTML, one file with charts, works offline
    Html,
    /// Excel 工作簿 / An Excel workbook
    Xlsx,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// 月份，如 2026-10（默认上个月） / The month, e.g. 2026-10 (default: last month)
    #[arg(long, value_name = "月份 / MONTH")]
    pub month: Option<String>,
    /// 只统计这个乡镇或村（默认本台账的区划） / Only this township or village (default: this ledger's area)
    #[arg(long, value_name = "代码 / CODE")]
    pub scope: Option<String>,
    /// 格式：table、csv、json、html、xlsx（默认 table） / Format: table, csv, json, html, xlsx (default table)
    #[arg(long, value_enum, value_name = "格式 / FORMAT")]
    pub format: Option<ReportFormat>,
    /// 写入文件（html、xlsx 必须写文件） / Write to this file (html and xlsx need one)
    #[arg(long, value_name = "文件 / FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SubsidyArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    /// 只看这个人（人员编号或姓名），并列出每项对应的案件 / Only this person (staff id or name), with the cases behind each count
    #[arg(long, value_name = "人员 / PERSON")]
    pub person: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// 显示正在执行的县级政策和版本 / Show the county policy in force and its version
    Show,
}

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// 纠纷类别：代码或中文名都可以，如 neighbor（邻里纠纷），全部类别见下 / Category: a code or a label, e.g. neighbor (Neighbour), all listed below
    #[arg(long, value_name = "类别 / CODE")]
    pub category: String,
    /// 标题 / Title
    #[arg(long, value_name = "文字 / TEXT")]
    pub title: String,
    /// 案情描述 / Description
    #[arg(long, value_name = "文字 / TEXT", conflicts_with = "description_file")]
    pub description: Option<String>,
    /// 从文件读取案情描述，- 表示从标准输入读 / Read the description from a file, - for standard input
    #[arg(long, value_name = "文件 / FILE")]
    pub description_file: Option<PathBuf>,
    /// 当事人，可写多次：“姓名,身份证号,电话”（后两项可不填），或写明各项“name=姓名,id=身份证号,phone=电话” / A party, repeatable: "NAME,ID_NUMBER,PHONE" (the last two optional), or "name=…,id=…,phone=…"
    #[arg(long, value_name = "当事人 / PARTY")]
    pub party: Vec<String>,
    /// 风险等级，不写时为“低” / Risk (default low)
    #[arg(long, value_name = "风险 / RISK")]
    pub risk: Option<String>,
    /// 风险标记，可写多次，如 criminal-risk（民转刑风险） / A risk flag, repeatable, e.g. criminal-risk
    #[arg(long, value_name = "标记 / FLAG")]
    pub flag: Vec<String>,
    /// 网格编号 / Grid number
    #[arg(long, value_name = "编号 / N")]
    pub grid: Option<String>,
    /// 所在村（12位代码，默认本机所在村） / Village code (default: this device's village)
    #[arg(long, value_name = "代码 / CODE")]
    pub village: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// 状态 / Status
    #[arg(long, value_name = "状态 / STATUS")]
    pub status: Option<String>,
    /// 办理级别 / Level
    #[arg(long, value_name = "级别 / LEVEL")]
    pub level: Option<String>,
    /// 纠纷类别 / Category
    #[arg(long, value_name = "类别 / CODE")]
    pub category: Option<String>,
    /// 只看这个县、乡镇或村（6、9或12位代码） / Only inside this county, township or village (6, 9 or 12 digits)
    #[arg(long, value_name = "代码 / CODE")]
    pub village: Option<String>,
    /// 风险等级 / Risk
    #[arg(long, value_name = "风险 / RISK")]
    pub risk: Option<String>,
    /// 只看已超期的 / Only overdue cases
    #[arg(long)]
    pub overdue: bool,
    /// 查找文字：标题、案情、调解记录、调解协议、当事人姓名（不查身份证号） / Text to find in titles, descriptions, notes, agreements and party names (not ID numbers)
    #[arg(long, value_name = "文字 / TEXT")]
    pub search: Option<String>,
    /// 最多显示几件 / At most this many
    #[arg(long, value_name = "数量 / N")]
    pub limit: Option<String>,
}

/// A case named by its number, its id, or a unique prefix of either.
#[derive(Debug, Args)]
pub(crate) struct CaseRef {
    /// 案件编号或 ID（可只写开头几位） / Case number or id, or a unique prefix
    #[arg(value_name = "案件 / CASE")]
    pub case: String,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 显示每一次修改 / Show every change
    #[arg(long)]
    pub history: bool,
    /// 显示完整身份证号 / Show full ID numbers
    #[arg(long)]
    pub unmasked: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EditArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 新标题 / New title
    #[arg(long, value_name = "文字 / TEXT")]
    pub title: Option<String>,
    /// 新案情描述 / New description
    #[arg(long, value_name = "文字 / TEXT", conflicts_with = "description_file")]
    pub description: Option<String>,
    /// 从文件读取新的案情描述，- 表示从标准输入读 / Read the new description from a file, - for standard input
    #[arg(long, value_name = "文件 / FILE")]
    pub description_file: Option<PathBuf>,
    /// 新类别 / New category
    #[arg(long, value_name = "类别 / CODE")]
    pub category: Option<String>,
    /// 新风险等级 / New risk
    #[arg(long, value_name = "风险 / RISK")]
    pub risk: Option<String>,
    /// 新网格编号 / New grid number
    #[arg(long, value_name = "编号 / N")]
    pub grid: Option<String>,
    /// 增加当事人，可写多次，写法同 fq case new 的 --party / Add a party, repeatable, written as for fq case new --party
    #[arg(long, value_name = "当事人 / PARTY")]
    pub add_party: Vec<String>,
    /// 加上风险标记，可写多次 / Add a risk flag, repeatable
    #[arg(long, value_name = "标记 / FLAG")]
    pub add_flag: Vec<String>,
    /// 去掉风险标记，可写多次 / Take a risk flag off, repeatable
    #[arg(long, value_name = "标记 / FLAG")]
    pub remove_flag: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct NoteArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 调解记录内容 / The note
    #[arg(value_name = "文字 / TEXT", required_unless_present = "file", conflicts_with = "file")]
    pub text: Option<String>,
    /// 从文件读取记录内容，- 表示从标准输入读 / Read the note from a file, - for standard input
    #[arg(long, value_name = "文件 / FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AssignArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 包保责任人：姓名或人员编号（同名时须写编号） / Responsible person: a name or a staff id (an id when a name is shared)
    #[arg(long, value_name = "姓名 / NAME")]
    pub to: String,
}

#[derive(Debug, Args)]
pub(crate) struct ReasonArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 理由 / Reason
    #[arg(long, value_name = "文字 / TEXT")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct SettleArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 调解协议内容 / The agreement
    #[arg(
        long,
        value_name = "文字 / TEXT",
        required_unless_present = "agreement_file",
        conflicts_with = "agreement_file"
    )]
    pub agreement: Option<String>,
    /// 从文件读取调解协议，- 表示从标准输入读 / Read the agreement from a file, - for standard input
    #[arg(long, value_name = "文件 / FILE")]
    pub agreement_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ConfirmArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 确认的法院 / The court
    #[arg(long, value_name = "法院 / COURT")]
    pub court: String,
    /// 文书编号 / Court reference
    #[arg(long = "ref", value_name = "编号 / REF")]
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct FollowupArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 回访结果 / Outcome
    #[arg(long, value_name = "结果 / OUTCOME")]
    pub outcome: String,
    /// 回访情况 / What was seen
    #[arg(long, value_name = "文字 / TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    /// JSON / JSON
    Json,
    /// CSV 表格（Excel、WPS 可直接打开） / CSV (opens in Excel and WPS)
    Csv,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// 格式 / Format
    #[arg(long, value_enum, value_name = "格式 / FORMAT")]
    pub format: ExportFormat,
    /// 写入文件（默认输出到屏幕） / Write to this file (default: standard output)
    #[arg(long, value_name = "文件 / FILE")]
    pub out: Option<PathBuf>,
    /// 导出完整身份证号（谨慎） / Export full ID numbers (careful)
    #[arg(long)]
    pub unmasked: bool,
}

/// `fq audit`: the summary, or one of the audit's commands.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// 列出所有并发冲突（字段的多个值、同时修改的文字、相互矛盾的办理事件） / Every open conflict
    Conflicts(ConflictsArgs),
    /// 写入一个新值来解决冲突（在设备或本人的台账上） / Settle a conflict by writing a new value
    Resolve(ResolveArgs),
    /// 一件案件的完整经过：谁在哪台设备、何时改了什么 / The full timeline of one case
    History(HistoryArgs),
    /// 校验整个台账：签名、权限、哈希链、案件列表、数据库完整性 / Check the whole replica
    Verify(VerifyArgs),
    /// 与上级服务器比对，列出双方各缺哪些修改（不改动任何数据） / Compare with the parent server
    Compare(CompareArgs),
    /// 本机拒收的修改 / Changes this replica refused
    Refused(RefusedArgs),
    /// 原始审计记录 / The raw audit records
    Log(LogArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConflictsArgs {
    /// 只看这件案件 / Only this case
    #[arg(long, value_name = "案件 / CASE")]
    pub case: Option<String>,
    /// 只看这天以后的（如 2026-11-01） / Only since this date (e.g. 2026-11-01)
    #[arg(long, value_name = "日期 / DATE")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    #[command(flatten)]
    pub case: CaseRef,
    #[arg(
        long,
        value_name = "字段 / FIELD",
        help = "有冲突的字段，如 title（标题）、description（案情描述）、status（办理状态）、parties[0].phone（第1个当事人的电话） / The field in conflict, e.g. title, description, status, parties[0].phone"
    )]
    pub field: String,
    /// 正确的值 / The right value
    #[arg(long, value_name = "值 / VALUE")]
    pub value: String,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 设备时间与收到时间允许相差几分钟（默认10） / Allowed clock difference in minutes (default 10)
    #[arg(long, value_name = "分钟 / MINUTES")]
    pub skew: Option<String>,
    /// 显示完整身份证号 / Show full ID numbers
    #[arg(long)]
    pub unmasked: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// 只校验这件案件（数据库完整性仍整体检查） / Only this case
    #[arg(long, value_name = "案件 / CASE")]
    pub case: Option<String>,
    /// 用证书包里的县级根证书核对授权（服务器目录需要；设备默认用本机证书包） / Check grants against the CA of this bundle
    #[arg(long, value_name = "证书包 / BUNDLE_FILE")]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// 上级服务器地址（设备默认用上次同步的） / The parent server (default for a device: the last one synced with)
    #[arg(long, value_name = "地址 / ADDR")]
    pub server: Option<String>,
    /// 用这个证书包连接（服务器目录用服务器自己的证书包） / Connect with this bundle (a server's own, for a server's directory)
    #[arg(long, value_name = "证书包 / BUNDLE_FILE")]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RefusedArgs {
    /// 只看这天以后的（如 2026-11-01） / Only since this date (e.g. 2026-11-01)
    #[arg(long, value_name = "日期 / DATE")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// 最多显示几条（默认50） / At most this many records (default 50)
    #[arg(long, value_name = "数量 / N")]
    pub limit: Option<String>,
}

/// The separator between the Chinese and the English half of a text.
#[cfg(test)]
const SEP: &str = " / ";

/// The half of `text` (`中文 / English`) for `lang`.
fn half(text: &str, lang: Lang) -> String {
    lang.half(text).to_owned()
}

/// The command line for `lang`: every text in that language, clap's own
/// headings translated, examples and value lists after the options.
pub(crate) fn command(lang: Lang) -> clap::Command {
    // The options every command takes come after each command's own.
    let mut order = 900;
    let root = Cli::command().mut_args(|a| {
        order += 1;
        a.display_order(order)
    });
    localize(root, lang, "fq")
}

fn localize(cmd: clap::Command, lang: Lang, path: &str) -> clap::Command {
    let zh = lang == Lang::Zh;
    let mut cmd = cmd.mut_args(|a| {
        let mut a = a;
        if let Some(help) = a.get_help().map(ToString::to_string) {
            a = a.help(half(&help, lang));
        }
        let names: Vec<String> = a.get_value_names().unwrap_or_default().iter().map(|n| half(n, lang)).collect();
        if !names.is_empty() {
            a = a.value_names(names);
        }
        let heading = if a.is_positional() { lang.pick("参数", "Arguments") } else { lang.pick("选项", "Options") };
        a = a.help_heading(heading);
        // Possible values of an enum are listed in words in the help itself.
        if a.get_action().takes_values() { a.hide_possible_values(true) } else { a }
    });
    if let Some(about) = cmd.get_about().map(ToString::to_string) {
        cmd = cmd.about(half(&about, lang));
    }
    if let Some(after) = after_help(path, lang) {
        cmd = cmd.after_help(after);
    }
    cmd = cmd
        .subcommand_help_heading(lang.pick("命令", "Commands"))
        .subcommand_value_name(lang.pick("命令", "COMMAND"))
        .help_template(if zh {
            "{about-with-newline}\n用法：{usage}\n\n{all-args}{after-help}"
        } else {
            "{about-with-newline}\nUsage: {usage}\n\n{all-args}{after-help}"
        });
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_owned()).collect();
    for name in names {
        let sub_path = format!("{path} {name}");
        cmd = cmd.mut_subcommand(&name, |s| localize(s, lang, &sub_path));
    }
    cmd
}

/// What clap still writes in English inside a rendered help, in Chinese.
pub(crate) fn localize_help(text: &str, lang: Lang) -> String {
    if lang == Lang::En {
        return text.to_owned();
    }
    text.replace("[OPTIONS]", "[选项]").replace("[default: ", "[默认：").replace("[aliases: ", "[别名：")
}

/// Examples and value lists shown after a command's options.
fn after_help(path: &str, lang: Lang) -> Option<String> {
    let zh = lang == Lang::Zh;
    let text = match path {
        "fq" => {
            if zh {
                "常用：\n  fq init --village 532924101201 --name 张三 --role mediator   在本机建立台账\n  \
                 fq case new --category neighbor --title \"宅基地滴水纠纷\" --party \"李四,532924198001011230,13800000000\"\n  \
                 fq case list                                                  看案件，超期和高风险在前\n  \
                 fq sync --server 10.0.0.5:4433                               与乡镇服务器同步\n\
                 每个命令后加 --help 看它的用法，例如 fq case new --help。"
                    .to_owned()
            } else {
                "Common:\n  fq init --village 532924101201 --name \"Zhang San\" --role mediator   set up this device\n  \
                 fq case new --category neighbor --title \"Eaves dripping\" --party \"Li Si,532924198001011230,13800000000\"\n  \
                 fq case list                                                  cases, overdue and high risk first\n  \
                 fq sync --server 10.0.0.5:4433                               sync with the township server\n\
                 Add --help after any command to see how to use it, e.g. fq case new --help."
                    .to_owned()
            }
        }
        "fq serve" => lang
            .pick(
                "同村的两台设备（如网格员和调解员）不用服务器也能交换案件：一台运行 fq serve，另一台运行 fq sync --peer 加上这里显示的地址。\n\
                 两台设备要连在同一个无线网或手机热点上。只交换两台设备都负责的区域里的案件；之后任何一台与乡镇同步时，都会把对方的修改连同对方的签名一起送上去。\n\
                 例如：fq serve --once\n      fq sync --peer 192.168.43.1:4433",
                "Two devices of one village (the grid worker and the mediator) exchange cases with no server: one runs fq serve, the other fq sync --peer with the address shown here.\n\
                 Both must be on the same Wi-Fi or phone hotspot. Only cases in the area both cover are exchanged; either device later carries the other's changes, with their signatures, to the township.\n\
                 e.g. fq serve --once\n     fq sync --peer 192.168.43.1:4433",
            )
            .to_owned(),
        "fq init" | "fq enroll" => format!(
            "{}{}\n{}",
            lang.pick("角色：", "Roles: "),
            choices(lang, Role::ALL),
            lang.pick(
                "例如：fq init --village 532924101201 --name 张三 --role mediator\n      fq init --bundle d07.bundle.json --name 张三",
                "e.g. fq init --village 532924101201 --name \"Zhang San\" --role mediator\n     fq init --bundle d07.bundle.json --name \"Zhang San\"",
            )
        ),
        "fq case new" => format!(
            "{}{}\n{}{}\n{}{}\n{}",
            lang.pick("类别（写代码或中文名都可以）：", "Categories (code or label): "),
            choices(lang, Category::ALL),
            lang.pick("风险等级：", "Risk: "),
            choices(lang, Risk::ALL),
            lang.pick("风险标记：", "Risk flags: "),
            choices(lang, RiskFlag::ALL),
            lang.pick(
                "例如：fq case new --category neighbor --title \"宅基地滴水纠纷\" --party \"李四,532924198001011230,13800000000\" --party 王五\n      \
                 fq case new --category debt --title \"借款纠纷\" --party \"name=赵六,phone=0872-1234567\" --description-file 案情.txt",
                "e.g. fq case new --category neighbor --title \"Eaves dripping\" --party \"Li Si,532924198001011230,13800000000\" --party \"Wang Wu\"\n     \
                 fq case new --category debt --title \"A loan\" --party \"name=Zhao Liu,phone=0872-1234567\" --description-file case.txt",
            )
        ),
        "fq case list" => format!(
            "{}{}\n{}{}\n{}{}\n{}{}\n{}",
            lang.pick("状态：", "Status: "),
            choices(lang, Status::ALL),
            lang.pick("级别：", "Level: "),
            choices(lang, Level::ALL),
            lang.pick("风险等级：", "Risk: "),
            choices(lang, Risk::ALL),
            lang.pick("类别：", "Categories: "),
            choices(lang, Category::ALL),
            lang.pick(
                "例如：fq case list --overdue\n      fq case list --risk high --status mediating",
                "e.g. fq case list --overdue\n     fq case list --risk high --status mediating",
            )
        ),
        "fq case edit" => format!(
            "{}{}\n{}{}\n{}",
            lang.pick("类别：", "Categories: "),
            choices(lang, Category::ALL),
            lang.pick("风险等级：", "Risk: "),
            choices(lang, Risk::ALL),
            lang.pick(
                "例如：fq case edit 532924101201-2026-d07a-0001 --risk high",
                "e.g. fq case edit 532924101201-2026-d07a-0001 --risk high",
            )
        ),
        "fq case followup" => format!(
            "{}{}\n{}",
            lang.pick("回访结果：", "Outcomes: "),
            choices(lang, Outcome::ALL),
            lang.pick(
                "例如：fq case followup 532924101201-2026-d07a-0001 --outcome honoured --note \"已安装接水槽\"",
                "e.g. fq case followup 532924101201-2026-d07a-0001 --outcome honoured --note \"gutter fitted\"",
            )
        ),
        "fq case note" => lang
            .pick(
                "例如：fq case note 532924101201-2026-d07a-0001 \"双方到场，李四同意加装接水槽\"\n      fq case note 532924101201-2026-d07a-0001 --file 记录.txt",
                "e.g. fq case note 532924101201-2026-d07a-0001 \"both came; Li Si agrees to fit a gutter\"\n     fq case note 532924101201-2026-d07a-0001 --file note.txt",
            )
            .to_owned(),
        "fq todo" => lang
            .pick(
                "顺序：已超期、3天内到期、该回访、待本级接收的上报、待回复的督办；每组高风险在前。\n                 本机：本人登记或负责的案件，以及本区域无人负责的案件；乡镇、县服务器的台账：整个区域。\n                 例如：fq todo\n      fq --data-dir /var/lib/fq/tw-101 todo --scope 532924101201",
                "Order: overdue, due within 3 days, follow-up visits due, escalations for this level to accept, supervision to answer; high risk first in each.\n                 On a device: the cases its user recorded or is responsible for, and the area's cases nobody is responsible for; on a township or county replica: the whole area.\n                 e.g. fq todo\n     fq --data-dir /var/lib/fq/tw-101 todo --scope 532924101201",
            )
            .to_owned(),
        "fq report monthly" => lang
            .pick(
                "格式：table（屏幕）、csv、json、html（含图表的单个网页，离线可看）、xlsx（Excel 工作簿）。\n                 例如：fq report monthly --month 2026-10\n      fq report monthly --month 2026-10 --format html --out 十月报表.html",
                "Formats: table (screen), csv, json, html (one page with charts, works offline), xlsx (Excel).\n                 e.g. fq report monthly --month 2026-10\n     fq report monthly --month 2026-10 --format html --out october.html",
            )
            .to_owned(),
        "fq report subsidy" => lang
            .pick(
                "每人当月登记、调解、调解成功、回访的案件数，同一案件只计一次。\n                 例如：fq report subsidy --month 2026-10 --format xlsx --out 以案定补.xlsx\n      fq report subsidy --month 2026-10 --person 532924101201-01",
                "Per person, the distinct cases recorded, mediated, settled and followed up in the month.\n                 e.g. fq report subsidy --month 2026-10 --format xlsx --out subsidy.xlsx\n     fq report subsidy --month 2026-10 --person 532924101201-01",
            )
            .to_owned(),
        "fq case supervise" => lang
            .pick(
                "乡镇可督办本乡镇村级办理的案件，县里可督办所有案件。\n例如：fq case supervise 532924101201-2026-d07a-0001 --instruction \"一周内组织调解\" --due 2026-11-10",
                "A township supervises its villages' cases, the county any case.\ne.g. fq case supervise 532924101201-2026-d07a-0001 --instruction \"mediate within a week\" --due 2026-11-10",
            )
            .to_owned(),
        "fq case import" => lang
            .pick(
                "列与 fq export --format csv 相同（中文或英文表头都可以）；先检查每一行，有一行不对就什么都不导入。\n例如：fq case import 旧台账.csv",
                "The columns of fq export --format csv (Chinese or English headers); every row is checked first, and one bad row imports nothing.\ne.g. fq case import old-ledger.csv",
            )
            .to_owned(),
        "fq export" => lang
            .pick(
                "格式：json、csv（CSV 可用 Excel、WPS 直接打开）。身份证号默认隐藏中间几位，--unmasked 导出完整号码。\n例如：fq export --format csv --out 案件.csv",
                "Formats: json, csv (CSV opens in Excel and WPS). ID numbers are masked unless --unmasked.\ne.g. fq export --format csv --out cases.csv",
            )
            .to_owned(),
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        command(Lang::Zh).debug_assert();
        command(Lang::En).debug_assert();
    }

    /// Every text a person reads, in every command, has its two halves.
    #[test]
    fn every_help_text_has_chinese_and_english() {
        fn halves_ok(text: &str) -> bool {
            let halves: Vec<&str> = text.split(SEP).collect();
            halves.len() == 2 && halves.iter().all(|h| !h.trim().is_empty())
        }
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            match cmd.get_about().map(ToString::to_string) {
                Some(about) if !halves_ok(&about) => missing.push(format!("{path} about: {about:?}")),
                None if path != "fq" => missing.push(format!("{path}: no about")),
                _ => {}
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().to_string();
                match a.get_help().map(ToString::to_string) {
                    Some(h) if !halves_ok(&h) => missing.push(format!("{path} --{id}: {h:?}")),
                    None => missing.push(format!("{path} --{id}: no help")),
                    _ => {}
                }
                let names = if a.get_action().takes_values() { a.get_value_names().unwrap_or_default() } else { &[] };
                for n in names {
                    if !halves_ok(n) {
                        missing.push(format!("{path} --{id} value: {n:?}"));
                    }
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "fq", &mut missing);
        assert!(missing.is_empty(), "texts without both halves:\n{}", missing.join("\n"));
    }

    #[test]
    fn chinese_help_has_no_clap_english() {
        let mut cmd = command(Lang::Zh);
        let help = localize_help(&cmd.render_help().to_string(), Lang::Zh);
        for english in ["Usage", "Options", "Commands", "Print help", "[OPTIONS]", "COMMAND"] {
            assert!(!help.contains(english), "{english} in:\n{help}");
        }
        assert!(help.contains("用法：") && help.contains("命令") && help.contains("显示帮助"), "{help}");
        let mut new = command(Lang::Zh);
        let case = new.find_subcommand_mut("case").and_then(|c| c.find_subcommand_mut("new")).map(|c| c.render_help());
        let case = case.map(|h| h.to_string()).unwrap_or_default();
        assert!(case.contains("neighbor（邻里纠纷）") && case.contains("例如："), "{case}");
    }
}
