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
use fq_core::case::{Category, Level, Outcome, Risk, Role, Status};

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
    /// 与乡镇或县服务器同步 / Sync with the township or county server
    Sync(SyncArgs),
    /// 案件：登记、查看、办理 / Cases: record, view, handle
    #[command(subcommand)]
    Case(CaseCommand),
    /// 导出全部案件 / Export every case
    Export(ExportArgs),
    /// 查看本机审计记录（拒收的修改、并发冲突） / Show this replica's audit log (refused changes, conflicts)
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
    /// 查找标题中的文字 / Text to find in the title
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
    /// 包保责任人姓名 / Responsible person
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

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// 最多显示几条（默认50） / At most this many records (default 50)
    #[arg(long, value_name = "数量 / N")]
    pub limit: Option<String>,
}

/// The separator between the Chinese and the English half of a text.
const SEP: &str = " / ";

/// The half of `text` (`中文 / English`) for `lang`; a text without the
/// separator is shown as it is.
fn half(text: &str, lang: Lang) -> String {
    match text.split_once(SEP) {
        Some((zh, en)) => (if lang == Lang::Zh { zh } else { en }).trim().to_owned(),
        None => text.to_owned(),
    }
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
            "{}{}\n{}{}\n{}",
            lang.pick("类别（写代码或中文名都可以）：", "Categories (code or label): "),
            choices(lang, Category::ALL),
            lang.pick("风险等级：", "Risk: "),
            choices(lang, Risk::ALL),
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
