//! The raw command line, as clap sees it.
//!
//! Values a cadre types (codes, categories, roles, parties, numbers) are kept
//! as text here and parsed by `request` with the core's forgiving parsers, so
//! that a mistake gets a message in the user's language naming the problem,
//! not a generic usage error.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::lang::Lang;

/// 枫桥矛盾纠纷案件台账（离线可用）/ Fengqiao dispute case ledger, offline first.
#[derive(Debug, Parser)]
#[command(name = "fq", version, propagate_version = true)]
pub(crate) struct Cli {
    /// 台账所在目录 / Directory holding ledger.db
    #[arg(long, global = true, env = "FQ_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// 输出 JSON（供程序读取）/ Print machine-readable JSON
    #[arg(long, global = true)]
    pub json: bool,
    /// 显示语言，默认看 LANG（未设置时为中文）/ Language; default from LANG (Chinese if unset)
    #[arg(long, global = true, value_parser = crate::lang::parse, value_name = "zh|en")]
    pub lang: Option<Lang>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// 在本机建立台账 / Set up the ledger on this device
    Init(InitArgs),
    /// 用县里发的证书包登记已在使用的本机 / Enroll this device with a certificate bundle from the county
    Enroll(EnrollArgs),
    /// 与乡镇或县服务器同步 / Sync with the township or county server
    Sync(SyncArgs),
    /// 案件：登记、查看、办理 / Cases: record, view, handle
    #[command(subcommand)]
    Case(CaseCommand),
    /// 导出全部案件 / Export every case
    Export(ExportArgs),
    /// 合并审计：概要、冲突、经过、校验、比对、拒收 / Merge audit: summary, conflicts, history, verify, compare, refusals
    Audit(AuditArgs),
    /// 演示 / A guided demo
    Demo,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// 行政区划代码：网格员、调解员填12位村代码，乡镇干部填9位，县级填6位（有证书包时可不填）/
    /// Division code: 12 digits (village) for grid workers and mediators, 9 for township officers, 6 for county admins (optional with --bundle)
    #[arg(long, value_name = "CODE", required_unless_present = "bundle")]
    pub village: Option<String>,
    /// 使用人姓名 / Name of the person using this device
    #[arg(long)]
    pub name: String,
    /// 角色（有证书包时可不填）/ Role: grid-worker|mediator|township-officer|county-admin (optional with --bundle)
    #[arg(long, required_unless_present = "bundle")]
    pub role: Option<String>,
    /// 网格编号（网格员）/ Grid number (grid workers)
    #[arg(long, value_name = "N")]
    pub grid: Option<String>,
    /// 县里发的证书包：角色和区划取自证书包，并登记本机 / Certificate bundle from the county: role and area come from it, and the device is enrolled
    #[arg(long, value_name = "BUNDLE_FILE")]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct EnrollArgs {
    /// 县里发的证书包文件 / Certificate bundle file from the county
    #[arg(long, value_name = "BUNDLE_FILE")]
    pub bundle: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    /// 服务器地址（如 10.0.0.5:4433），默认用上次的 / Server address (e.g. 10.0.0.5:4433); default: the last one used
    #[arg(long, value_name = "ADDR")]
    pub server: Option<String>,
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
}

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// 纠纷类别（代码或中文名，如 neighbor、邻里纠纷）/ Category code or label
    #[arg(long, value_name = "CODE")]
    pub category: String,
    /// 标题 / Title
    #[arg(long, value_name = "TEXT")]
    pub title: String,
    /// 案情描述 / Description
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    #[arg(
        long,
        value_name = "PARTY",
        help = "当事人：姓名[,身份证号][,电话]，可多次 / Party \"NAME[,ID_NUMBER][,PHONE]\", repeatable"
    )]
    pub party: Vec<String>,
    /// 风险等级 low|medium|high（默认 low）/ Risk (default low)
    #[arg(long)]
    pub risk: Option<String>,
    /// 网格编号 / Grid number
    #[arg(long, value_name = "N")]
    pub grid: Option<String>,
    /// 所在村（12位代码，默认本机所在村）/ Village code (default: this device's village)
    #[arg(long, value_name = "CODE")]
    pub village: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// 状态 / Status: recorded|mediating|escalated|settled|failed|archived
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// 办理级别 / Level: village|township|county
    #[arg(long, value_name = "L")]
    pub level: Option<String>,
    /// 纠纷类别 / Category
    #[arg(long, value_name = "C")]
    pub category: Option<String>,
    /// 只看这个县、乡镇或村（6/9/12位代码）/ Only inside this county, township or village
    #[arg(long, value_name = "CODE")]
    pub village: Option<String>,
    /// 风险等级 / Risk
    #[arg(long, value_name = "R")]
    pub risk: Option<String>,
    /// 只看已超期的 / Only overdue cases
    #[arg(long)]
    pub overdue: bool,
    /// 标题包含的文字 / Text in the title
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// 最多显示几件 / At most this many
    #[arg(long, value_name = "N")]
    pub limit: Option<String>,
}

/// A case named by its number, its id, or a unique prefix of either.
#[derive(Debug, Args)]
pub(crate) struct CaseRef {
    /// 案件编号或 ID（可只写开头几位）/ Case number or id, or a unique prefix
    #[arg(value_name = "CASE")]
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
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// 新案情描述 / New description
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// 新类别 / New category
    #[arg(long, value_name = "CODE")]
    pub category: Option<String>,
    /// 新风险等级 / New risk
    #[arg(long)]
    pub risk: Option<String>,
    /// 新网格编号 / New grid number
    #[arg(long, value_name = "N")]
    pub grid: Option<String>,
    #[arg(long, value_name = "PARTY", help = "增加当事人：姓名[,身份证号][,电话]，可多次 / Add a party, repeatable")]
    pub add_party: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct NoteArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 调解记录内容 / The note
    #[arg(value_name = "TEXT")]
    pub text: String,
}

#[derive(Debug, Args)]
pub(crate) struct AssignArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 包保责任人姓名 / Responsible person
    #[arg(long, value_name = "NAME")]
    pub to: String,
}

#[derive(Debug, Args)]
pub(crate) struct ReasonArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 理由 / Reason
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct SettleArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 调解协议内容 / The agreement
    #[arg(long, value_name = "TEXT")]
    pub agreement: String,
}

#[derive(Debug, Args)]
pub(crate) struct ConfirmArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 确认的法院 / The court
    #[arg(long, value_name = "TEXT")]
    pub court: String,
    /// 文书编号 / Court reference
    #[arg(long = "ref", value_name = "TEXT")]
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct FollowupArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 回访结果 honoured（履行良好）|relapsed（反弹）/ Outcome
    #[arg(long)]
    pub outcome: String,
    /// 回访情况 / What was seen
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// 格式 / Format
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// 写入文件（默认输出到屏幕）/ Write to this file (default: standard output)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// 导出完整身份证号（谨慎）/ Export full ID numbers (careful)
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
    /// 列出所有并发冲突（字段的多个值、同时修改的文字、相互矛盾的办理事件）/ Every open conflict
    Conflicts(ConflictsArgs),
    /// 写入一个新值来解决冲突（在设备或本人的台账上）/ Settle a conflict by writing a new value
    Resolve(ResolveArgs),
    /// 一件案件的完整经过：谁在哪台设备、何时改了什么 / The full timeline of one case
    History(HistoryArgs),
    /// 校验整个台账：签名、权限、哈希链、案件列表、数据库完整性 / Check the whole replica
    Verify(VerifyArgs),
    /// 与上级服务器比对，列出双方各缺哪些修改（不改动任何数据）/ Compare with the parent server
    Compare(CompareArgs),
    /// 本机拒收的修改 / Changes this replica refused
    Refused(RefusedArgs),
    /// 原始审计记录 / The raw audit records
    Log(LogArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConflictsArgs {
    /// 只看这件案件 / Only this case
    #[arg(long, value_name = "CASE")]
    pub case: Option<String>,
    /// 只看这天以后的（如 2026-11-01）/ Only since this date (e.g. 2026-11-01)
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    #[command(flatten)]
    pub case: CaseRef,
    #[arg(
        long,
        value_name = "FIELD",
        help = "有冲突的字段（如 title、description、status、parties[0].phone）/ The field in conflict"
    )]
    pub field: String,
    /// 正确的值 / The right value
    #[arg(long, value_name = "VALUE")]
    pub value: String,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    pub case: CaseRef,
    /// 设备时间与收到时间允许相差几分钟（默认10）/ Allowed clock difference in minutes (default 10)
    #[arg(long, value_name = "MINUTES")]
    pub skew: Option<String>,
    /// 显示完整身份证号 / Show full ID numbers
    #[arg(long)]
    pub unmasked: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// 只校验这件案件（数据库完整性仍整体检查）/ Only this case
    #[arg(long, value_name = "CASE")]
    pub case: Option<String>,
    /// 用证书包里的县级根证书核对授权（服务器目录需要；设备默认用本机证书包）/ Check grants against the CA of this bundle
    #[arg(long, value_name = "BUNDLE_FILE")]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// 上级服务器地址（设备默认用上次同步的）/ The parent server (default for a device: the last one synced with)
    #[arg(long, value_name = "ADDR")]
    pub server: Option<String>,
    /// 用这个证书包连接（服务器目录用服务器自己的证书包）/ Connect with this bundle (a server's own, for a server's directory)
    #[arg(long, value_name = "BUNDLE_FILE")]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RefusedArgs {
    /// 只看这天以后的（如 2026-11-01）/ Only since this date (e.g. 2026-11-01)
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// 最多显示几条（默认50）/ At most this many records (default 50)
    #[arg(long, value_name = "N")]
    pub limit: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
