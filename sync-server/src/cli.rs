//! The raw command line of `fq-server`, as clap sees it.
//!
//! Help texts are Chinese with the English after them (as `fq`'s), and clap's own words
//! (headings, the help and version flags) are replaced by bilingual ones ([`command`]). Values
//! an operator types (addresses, division codes, ids, roles) are kept as text here and checked
//! by `main` with the library's parsers, so that a mistake gets a message in the operator's
//! language (`message`), not clap's English.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Args, Command, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use fq_core::lang::Lang;

/// 枫桥案件台账的乡镇、县同步服务器和县证书中心 / Township and county sync server and county CA of the fq case ledger
#[derive(Debug, Parser)]
#[command(name = "fq-server", version)]
pub(crate) struct Cli {
    /// 输出 JSON（供程序读取） / Print what was done as one JSON object
    #[arg(long, global = true)]
    pub json: bool,
    /// 显示语言 zh 或 en，默认看 LANG（未设置、C、POSIX 时为中文） / Language zh or en; default from LANG (Chinese if unset, C or POSIX)
    #[arg(long, global = true, value_parser = parse_lang, value_name = "zh|en / zh|en")]
    pub lang: Option<Lang>,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CliCommand {
    /// 运行乡镇或县同步服务器（直到收到 SIGTERM 或 SIGINT） / Run a township or county sync server (until SIGTERM or SIGINT)
    Run(RunArgs),
    /// 查看服务器台账：身份、数量、对端、最近的拒收（只读，可在服务器运行时使用） / Show a server's identity, counts, peers and recent refusals (read-only, works while it runs)
    Status(StatusArgs),
    /// 导入村里用U盘带来的同步文件，交给正在运行的服务器，并写出回执文件 / Import a sync file a village brought on a USB stick into the running server, and write the answer file
    Import(ImportArgs),
    /// 县证书中心：建立、签发、吊销证书，签发县级政策 / The county's certificate authority: init, issue, revoke, sign the county policy
    #[command(subcommand)]
    Ca(CaCommand),
    /// 把不加密时建立的服务器台账加密（先停止服务器） / Encrypt a server replica made without --encrypt (stop the server first)
    Encrypt(EncryptArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    /// 服务器台账所在目录 / Directory of the server's replica
    #[arg(long, value_name = "目录 / DIR")]
    pub data_dir: PathBuf,
    /// 存放台账密钥的文件（权限0600，至少16个字符） / File holding the replica's secret (mode 0600, 16 characters or more)
    #[arg(long, value_name = "文件 / FILE")]
    pub key_file: PathBuf,
}

/// The tier of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TierArg {
    /// 县服务器 / county server
    County,
    /// 乡镇服务器 / township server
    Township,
}

/// How the server logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormatArg {
    /// 每条事件一行文字，用所选语言 / One line of text per event, in the chosen language
    Human,
    /// 每条事件一个 JSON 对象，事件名为固定的英文 / One JSON object per event, with stable English event names
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// 服务器层级：county（县）或 township（乡镇） / Tier: county or township
    #[arg(long, value_enum, hide_possible_values = true, value_name = "层级 / TIER")]
    pub tier: TierArg,
    /// 监听的 UDP 地址，例如 0.0.0.0:4433 / UDP address to listen on, e.g. 0.0.0.0:4433
    #[arg(long, value_name = "地址 / ADDR")]
    pub listen: String,
    /// 服务器台账所在目录（首次运行时在此建立 ledger.db） / Directory of the server's replica (ledger.db is created there on first run)
    #[arg(long, value_name = "目录 / DIR")]
    pub data_dir: PathBuf,
    /// 本服务器的证书包（由 fq-server ca issue --role county|township 签发） / The server's bundle (from fq-server ca issue --role county|township)
    #[arg(long, value_name = "证书包 / BUNDLE_FILE")]
    pub bundle: PathBuf,
    /// 县服务器地址（仅乡镇服务器） / The county server's address (township servers only)
    #[arg(long, value_name = "地址 / ADDR")]
    pub upstream: Option<String>,
    /// 配置文件（TOML 或 JSON），可设置项见 docs/OPERATIONS.md / Settings file, TOML or JSON (see docs/OPERATIONS.md)
    #[arg(long, value_name = "文件 / FILE")]
    pub config: Option<PathBuf>,
    /// 日志格式：human（默认，文字）或 json；用 RUST_LOG 过滤 / Log format: human (default) or json; filter with RUST_LOG
    #[arg(
        long,
        value_enum,
        default_value = "human",
        hide_default_value = true,
        hide_possible_values = true,
        value_name = "格式 / FORMAT"
    )]
    pub log_format: LogFormatArg,
    /// 台账加密保存，密钥由 --key-file 中的密文保护 / Keep the replica encrypted at rest, its key wrapped by the secret in --key-file
    #[arg(long, requires = "key_file")]
    pub encrypt: bool,
    /// 存放台账密钥的文件，只有服务账户可读（权限0600） / File holding the replica's secret, readable by the service user only (mode 0600)
    #[arg(long, value_name = "文件 / FILE", requires = "encrypt")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// 服务器台账所在目录 / Directory of the server's replica
    #[arg(long, value_name = "目录 / DIR")]
    pub data_dir: PathBuf,
    /// 加密台账的密钥文件（与 run --key-file 相同） / The key file of an encrypted replica (as given to run --key-file)
    #[arg(long, value_name = "文件 / FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// 正在运行的服务器的台账目录 / Directory of the running server's replica
    #[arg(long, value_name = "目录 / DIR")]
    pub data_dir: PathBuf,
    /// 村里用U盘带来的同步文件 / The sync file from the village (.fqs)
    #[arg(value_name = "文件 / FILE")]
    pub file: PathBuf,
    /// 回执文件写到这里，带回村里用 fq sync --from-file 导入 / Where to write the answer file, to carry back and import with fq sync --from-file
    #[arg(long, value_name = "文件 / FILE")]
    pub answer: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// 建立县证书中心（密钥、证书、空的签发记录和吊销列表） / Create the county CA (key, certificate, empty ledger and revocation list)
    Init(InitArgs),
    /// 为设备或服务器签发证书包 / Issue a certificate bundle for a device or server
    Issue(IssueArgs),
    /// 吊销签发给某个编号的全部证书 / Revoke every certificate issued to an id
    Revoke(RevokeArgs),
    /// 签发县级政策（办结时限、回访、分流）和花名册，版本号加一 / Sign the county policy (deadlines, follow-ups, routing) and roster with the next version
    Policy(PolicyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PolicyArgs {
    /// 证书中心目录 / The CA directory
    #[arg(long, value_name = "证书中心目录 / CA_DIR")]
    pub ca: PathBuf,
    /// 政策文件（TOML：表 deadlines 的 village、township、county，表 follow_up 的 days，表 routing 的 high_risk_to_township、flags_to_township、flag_overdue_village、township_categories） / The policy, TOML (table deadlines: village, township, county; follow_up: days; routing: high_risk_to_township, flags_to_township, flag_overdue_village, township_categories)
    #[arg(long, value_name = "政策文件 / POLICY_TOML")]
    pub file: PathBuf,
    /// 县的花名册：带人员编号的县文件（如 fixtures/county-532924.json）；不写则沿用上一版政策的花名册 / The county's roster: a county file with staff ids (like fixtures/county-532924.json); without it the roster of the CA's newest policy is kept
    #[arg(long, value_name = "县文件 / COUNTY_JSON")]
    pub roster: Option<PathBuf>,
    /// 另外把签好的政策写到这个文件（证书中心目录里总会保存一份 policy.json） / Also write the signed policy here (it is always kept as CA_DIR/policy.json)
    #[arg(long, value_name = "文件 / FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// 证书中心目录（不存在则建立；不能已有证书中心） / Directory for the CA (created if missing; must not already hold a CA)
    #[arg(long, value_name = "证书中心目录 / CA_DIR")]
    pub dir: PathBuf,
    /// 县的6位行政区划代码，例如 532924 / The county's 6-digit division code, e.g. 532924
    #[arg(long, value_name = "代码 / CODE")]
    pub county: String,
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// 证书中心目录 / The CA directory
    #[arg(long, value_name = "证书中心目录 / CA_DIR")]
    pub ca: PathBuf,
    /// 持有者（设备或服务器）的编号，如 d07：1-64个字母、数字、. _ - / Holder's id, e.g. d07: 1-64 of A-Z a-z 0-9 . _ -
    #[arg(long, value_name = "编号 / ID")]
    pub id: String,
    /// 角色：county、township、mediator、grid-worker、township-officer、county-admin / Role: county, township, mediator, grid-worker, township-officer, county-admin
    #[arg(long, value_name = "角色 / ROLE")]
    pub role: String,
    /// 角色负责的区划代码：县级6位，乡镇9位，调解员和网格员12位 / Division code of the role: 6 digits for county roles, 9 for township roles, 12 for mediators and grid workers
    #[arg(long, value_name = "代码 / CODE")]
    pub scope: String,
    /// 要写出的证书包文件（权限0600，不能已存在） / Bundle file to write (mode 0600; must not exist)
    #[arg(long, value_name = "证书包 / BUNDLE_FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// 证书中心目录 / The CA directory
    #[arg(long, value_name = "证书中心目录 / CA_DIR")]
    pub ca: PathBuf,
    /// 要吊销证书的编号 / Id whose certificates are revoked
    #[arg(long, value_name = "编号 / ID")]
    pub id: String,
}

/// clap's parser for `--lang`.
fn parse_lang(text: &str) -> Result<Lang, String> {
    text.parse().map_err(|_| format!("{text:?}: zh | en"))
}

/// The command line in `lang`: every text (written `中文 / English` above) in that language,
/// clap's own headings, flags and placeholders too.
pub(crate) fn command(lang: Lang) -> Command {
    // The options every command takes come after each command's own.
    let mut order = 900;
    let root = Cli::command().mut_args(|a| {
        order += 1;
        a.display_order(order)
    });
    localize(root, lang, true)
}

fn localize(cmd: Command, lang: Lang, top: bool) -> Command {
    let options = lang.pick("选项", "Options");
    let mut cmd = cmd
        .help_template(if lang == Lang::Zh {
            "{about-with-newline}\n用法：{usage}\n\n{all-args}{after-help}"
        } else {
            "{about-with-newline}\nUsage: {usage}\n\n{all-args}{after-help}"
        })
        .subcommand_help_heading(lang.pick("命令", "Commands"))
        .subcommand_value_name(lang.pick("命令", "COMMAND"))
        .disable_help_subcommand(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .mut_args(|arg| {
            let mut arg = arg;
            if let Some(help) = arg.get_help().map(ToString::to_string) {
                arg = arg.help(lang.half(&help).to_owned());
            }
            let names: Vec<String> =
                arg.get_value_names().unwrap_or_default().iter().map(|n| lang.half(n).to_owned()).collect();
            if !names.is_empty() && arg.get_action().takes_values() {
                arg = arg.value_names(names);
            }
            arg.help_heading(options)
        })
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::Help)
                .help(lang.pick("显示帮助", "Print help"))
                .help_heading(options),
        );
    if let Some(about) = cmd.get_about().map(ToString::to_string) {
        cmd = cmd.about(lang.half(&about).to_owned());
    }
    let cmd = if top {
        cmd.arg(
            Arg::new("version")
                .short('V')
                .long("version")
                .action(ArgAction::Version)
                .help(lang.pick("显示版本", "Print version"))
                .help_heading(options),
        )
    } else {
        cmd
    };
    cmd.mut_subcommands(|sub| localize(sub, lang, false))
}

/// What clap still writes in English inside a rendered help or usage, in Chinese.
pub(crate) fn localize_help(text: &str, lang: Lang) -> String {
    if lang == Lang::En {
        return text.to_owned();
    }
    text.replace("[OPTIONS]", "[选项]").replace("[default: ", "[默认：")
}

/// Parses the arguments (the first is the program's name).
pub(crate) fn parse(args: &[OsString]) -> Result<Cli, clap::Error> {
    let matches = command(Lang::from_args(args)).try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}
