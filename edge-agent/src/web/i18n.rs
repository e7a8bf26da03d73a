//! The page's two languages, 中文 and English: chosen by a switch (`?lang=zh`, remembered in a
//! cookie), else by the browser's Accept-Language. Every label the pages show is a [`T`], so a
//! label without a translation does not compile.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub const LANG_COOKIE: &str = "lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    fn from_param(value: &str) -> Option<Self> {
        match value {
            "en" => Some(Lang::En),
            "zh" | "zh-CN" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The switch in the query, else the remembered choice, else the browser's first language.
    pub fn from_request(query: Option<&str>, headers: &HeaderMap) -> Self {
        if let Some(lang) = query.and_then(lang_param).and_then(Self::from_param) {
            return lang;
        }
        if let Some(lang) = super::auth::cookie(headers, LANG_COOKIE).and_then(Self::from_param) {
            return lang;
        }
        let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        Self::from_accept_language(accept)
    }

    /// The most preferred of English and Chinese in an Accept-Language header; English by default.
    pub fn from_accept_language(accept: &str) -> Self {
        let mut best: Option<(f32, Lang)> = None;
        for item in accept.split(',') {
            let mut parts = item.trim().split(';');
            let tag = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality =
                parts.find_map(|p| p.trim().strip_prefix("q=")).and_then(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
            let lang = if tag == "zh" || tag.starts_with("zh-") {
                Lang::Zh
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };
            if best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, lang));
            }
        }
        best.map(|(_, lang)| lang).unwrap_or(Lang::En)
    }
}

fn lang_param(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix("lang="))
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Lang::from_request(parts.uri.query(), &parts.headers))
    }
}

/// Remembers a language chosen with the switch (`?lang=en|zh`) in a cookie.
pub async fn remember_language(request: Request, next: Next) -> Response {
    let chosen = request.uri().query().and_then(lang_param).and_then(Lang::from_param);
    let mut response = next.run(request).await;
    if let Some(lang) = chosen {
        let cookie = format!(
            "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Strict",
            if lang == Lang::Zh { "zh" } else { "en" }
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Every label of the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T {
    AppName,
    Overview,
    Cameras,
    Events,
    Statistics,
    LogIn,
    LogOut,
    UserName,
    Password,
    WrongPassword,
    TooManyAttempts,
    LoginExpired,
    OpenAccessNote,
    Device,
    DeviceId,
    Station,
    NotConfigured,
    Version,
    Uptime,
    Mqtt,
    MqttConnected,
    MqttDisconnected,
    MqttNotConfigured,
    Outbox,
    Waiting,
    QuotaReached,
    Storage,
    Part,
    Size,
    Quota,
    Pruned,
    HeldMessages,
    EventsLost,
    EvidenceKey,
    ChainHead,
    RunningOnLastGoodConfig,
    UnsignedCommandsAccepted,
    UnsignedModelsAccepted,
    QuotaWasReached,
    EvidencePicturesPruned,
    DiskFree,
    CpuTemperature,
    NotAvailable,
    EventsSinceStart,
    Models,
    SiteClassifiers,
    HeldOutAccuracy,
    NewestSample,
    NewSinceTraining,
    Crops,
    Name,
    Task,
    Backend,
    ExecutionProvider,
    Latency,
    LatencyLastMean,
    Camera,
    Fps,
    FramesCaptured,
    FramesDropped,
    InferenceTime,
    Errors,
    NoFrameYet,
    Decoder,
    MainStreamKept,
    InferenceLooksAt,
    LatestEvents,
    AllEvents,
    NoEvents,
    Kind,
    Category,
    Label,
    Score,
    Time,
    From,
    Until,
    All,
    Filter,
    Reset,
    Newer,
    Older,
    LiveUpdates,
    EventsShown,
    Box,
    Model,
    EventId,
    Zone,
    Track,
    Plate,
    PlatePicture,
    TrucksByPlate,
    RegisteredTrucks,
    RegisteredTrucksNote,
    SaveRegistered,
    Evidence,
    EvidenceHash,
    HashMatches,
    HashMismatch,
    HashOfKeptFrame,
    Signature,
    Signed,
    NotSigned,
    SignatureBroken,
    Lifecycle,
    State,
    Started,
    Ended,
    TimeToClear,
    StillOpen,
    NoPictureKept,
    LiveViewInstead,
    Acknowledge,
    AcknowledgedBy,
    NotAcknowledged,
    Back,
    NotFound,
    Forbidden,
    DailyByKind,
    DailyByCategory,
    DailyTimeToClear,
    Mean,
    Max,
    Count,
    Date,
    Days,
    NoClearedEvents,
    StatsNote,
    Uncategorised,
    OpenImage,
    Clip,
    ClipNote,
    Seconds,
    Language,
    Installer,
    Zones,
    ZonesInConfigFile,
    ZonesInSiteFile,
    NothingSavable,
    ReadOnlyNote,
    DrawHint,
    NewZone,
    UndoCorner,
    DeleteZone,
    SaveZones,
    ZoneId,
    Role,
    Corners,
    NewPicture,
    RoleBin,
    RoleDropArea,
    RoleRoad,
    RoleSiteExit,
    RoleIgnore,
    RolePrivacy,
    SavedTo,
    NeedsThreeCorners,
    UnsavedChanges,
    NotSaved,
    NoZones,
    Thresholds,
    Actions,
    ActionsNote,
    NoActionPrograms,
    Program,
    Rule,
    Setting,
    Value,
    ModelDefault,
    ClassThresholds,
    SaveThresholds,
    TestModels,
    TestNote,
    RunTest,
    Running,
    NoFindings,
    Found,
    LabelForSamples,
    LabelIntro,
    Right,
    Wrong,
    ReallyIs,
    SaveLabel,
    LabelledAs,
    OnlyAdminsLabel,
    SamplesIn,
    LearnSite,
    LearnNote,
    LabelledCrops,
    OnlyLabels,
    Train,
    Training,
    TrainedHead,
    DeployAs,
    Deploy,
    Report,
}

impl T {
    pub fn in_lang(self, lang: Lang) -> &'static str {
        let (en, zh) = self.both();
        match lang {
            Lang::En => en,
            Lang::Zh => zh,
        }
    }

    fn both(self) -> (&'static str, &'static str) {
        match self {
            T::AppName => ("Edge box", "边缘盒子"),
            T::Overview => ("Overview", "概览"),
            T::Cameras => ("Cameras", "摄像头"),
            T::Events => ("Events", "事件"),
            T::Statistics => ("Statistics", "统计"),
            T::LogIn => ("Log in", "登录"),
            T::LogOut => ("Log out", "退出"),
            T::UserName => ("User name", "用户名"),
            T::Password => ("Password", "密码"),
            T::WrongPassword => ("Wrong user name or password.", "用户名或密码错误。"),
            T::TooManyAttempts => ("Too many failed logins. Try again in", "登录失败次数过多，请稍后再试，剩余"),
            T::LoginExpired => ("The login form expired; please try again.", "登录表单已过期，请重试。"),
            T::OpenAccessNote => (
                "No users are configured: this page is open to this machine only (loopback).",
                "未配置用户：本页面仅对本机开放（回环地址）。",
            ),
            T::Device => ("Device", "设备"),
            T::DeviceId => ("Device id", "设备编号"),
            T::Station => ("Station / site", "站点 / 工地"),
            T::NotConfigured => ("not configured", "未配置"),
            T::Version => ("Version", "版本"),
            T::Uptime => ("Uptime", "运行时间"),
            T::Mqtt => ("MQTT", "MQTT"),
            T::MqttConnected => ("connected to", "已连接"),
            T::MqttDisconnected => ("disconnected from", "未连接"),
            T::MqttNotConfigured => ("not configured (events stay in the outbox)", "未配置（事件保存在发件箱）"),
            T::Outbox => ("Outbox", "发件箱"),
            T::Waiting => ("waiting", "待发送"),
            T::QuotaReached => ("quota reached", "已达磁盘配额"),
            T::Storage => ("Storage (state folder)", "存储（状态目录）"),
            T::Part => ("Part", "部分"),
            T::Size => ("Size", "大小"),
            T::Quota => ("Quota", "配额"),
            T::Pruned => ("Deleted to stay in budget", "为守预算已删除"),
            T::HeldMessages => (
                "The outbox cannot be written (disk full?); messages held in memory and retried",
                "发件箱无法写入（磁盘已满？）；消息暂存内存并重试",
            ),
            T::EventsLost => ("events lost to the memory bound", "因内存上限丢失的事件"),
            T::EvidenceKey => ("Evidence key (enrol on the platform)", "取证签名公钥（在平台登记）"),
            T::ChainHead => ("Evidence chain head", "取证链最新记录"),
            T::RunningOnLastGoodConfig => (
                "The config file would not start; the box runs on the last config that started cleanly. Fix the file:",
                "配置文件无法启动；本机正以上次正常启动的配置运行。请修正配置文件：",
            ),
            T::UnsignedCommandsAccepted => (
                "Unsigned remote commands are accepted (commands.accept_unsigned): anyone on the broker can change this box.",
                "已接受未签名的远程命令（commands.accept_unsigned）：代理服务器上的任何人都能更改本机。",
            ),
            T::UnsignedModelsAccepted => (
                "Unsigned model updates are accepted (model_update.require_signature = false).",
                "已接受未签名的模型更新（model_update.require_signature = false）。",
            ),
            T::QuotaWasReached => ("quota was reached", "曾达磁盘配额"),
            T::EvidencePicturesPruned => ("evidence pictures pruned, oldest first; events kept", "张取证图片已删除（最旧优先），事件均保留"),
            T::DiskFree => ("Disk free", "磁盘可用"),
            T::CpuTemperature => ("CPU temperature", "CPU 温度"),
            T::NotAvailable => ("not available", "不可用"),
            T::EventsSinceStart => ("Events kept (history on disk)", "已保存事件（磁盘历史）"),
            T::Models => ("Models", "模型"),
            T::SiteClassifiers => ("Site classifiers (learnt on this site)", "站点分类器（本站训练）"),
            T::HeldOutAccuracy => ("Held-out accuracy", "留出集准确率"),
            T::NewestSample => ("Newest sample", "最新样本"),
            T::NewSinceTraining => ("New labels since training", "训练后新增标注"),
            T::Crops => ("Crops", "样本数"),
            T::Name => ("Name", "名称"),
            T::Task => ("Task", "任务"),
            T::Backend => ("Backend", "后端"),
            T::ExecutionProvider => ("Execution provider", "执行设备"),
            T::Latency => ("Latency", "延迟"),
            T::LatencyLastMean => ("last / mean", "最近 / 平均"),
            T::Camera => ("Camera", "摄像头"),
            T::Fps => ("fps", "帧/秒"),
            T::FramesCaptured => ("frames", "帧数"),
            T::FramesDropped => ("dropped", "丢帧"),
            T::InferenceTime => ("inference", "推理"),
            T::Errors => ("errors", "错误"),
            T::NoFrameYet => ("no frame yet", "尚无画面"),
            T::Decoder => ("decoder", "解码器"),
            T::InferenceLooksAt => ("inference:", "推理范围："),
            T::MainStreamKept => ("main stream, kept for clips (not decoded):", "主码流，仅录像（不解码）："),
            T::LatestEvents => ("Latest events", "最新事件"),
            T::AllEvents => ("All events", "全部事件"),
            T::NoEvents => ("No events yet.", "暂无事件。"),
            T::Kind => ("Kind", "类型"),
            T::Category => ("Category", "分类"),
            T::Label => ("Label", "标签"),
            T::Score => ("Score", "置信度"),
            T::Time => ("Time", "时间"),
            T::From => ("From", "从"),
            T::Until => ("Until", "到"),
            T::All => ("all", "全部"),
            T::Filter => ("Filter", "筛选"),
            T::Reset => ("Reset", "重置"),
            T::Newer => ("← Newer", "← 较新"),
            T::Older => ("Older →", "较早 →"),
            T::LiveUpdates => ("live", "实时"),
            T::EventsShown => ("events", "条事件"),
            T::Box => ("Box", "框"),
            T::Model => ("Model", "模型"),
            T::EventId => ("Event id", "事件编号"),
            T::Zone => ("Zone", "区域"),
            T::Track => ("Track", "跟踪编号"),
            T::Plate => ("Plate", "车牌"),
            T::PlatePicture => ("Plate picture", "车牌图像"),
            T::TrucksByPlate => ("Trucks by plate", "出场车辆（按车牌）"),
            T::RegisteredTrucks => ("Registered trucks", "登记车辆"),
            T::RegisteredTrucksNote => (
                "One plate a line (京A12345). A truck leaving through the exit with a plate not listed here is an unregistered_truck event; with none listed there are none.",
                "每行一个车牌（京A12345）。经出口驶出、车牌不在此列表中的车辆产生 unregistered_truck 事件；列表为空时不产生。",
            ),
            T::SaveRegistered => ("Save registered trucks", "保存登记车辆"),
            T::Evidence => ("Evidence", "证据"),
            T::EvidenceHash => ("Evidence sha256", "证据 sha256"),
            T::HashMatches => ("matches the image", "与图片一致"),
            T::HashMismatch => ("DOES NOT match the image", "与图片不一致"),
            T::HashOfKeptFrame => {
                ("of the kept frame (the event carries no evidence hash)", "（保存帧的哈希；事件未携带证据哈希）")
            }
            T::Signature => ("Signature", "签名"),
            T::Signed => ("signature verified with the device key: chain record", "已用设备密钥验证签名：链记录"),
            T::NotSigned => ("not signed (evidence is off)", "未签名（未保留取证）"),
            T::SignatureBroken => ("signature does NOT hold", "签名无效"),
            T::Lifecycle => ("Lifecycle", "生命周期"),
            T::State => ("State", "状态"),
            T::Started => ("Started", "开始"),
            T::Ended => ("Ended", "结束"),
            T::TimeToClear => ("Time to clear", "整改时长"),
            T::StillOpen => ("not cleared yet", "尚未整改"),
            T::NoPictureKept => ("no picture kept", "未保存图片"),
            T::LiveViewInstead => (
                "The event's own frame is no longer kept; this is the camera's live view.",
                "事件画面已不再保存；下图为摄像头实时画面。",
            ),
            T::Acknowledge => ("Acknowledge", "确认处理"),
            T::AcknowledgedBy => ("Acknowledged by", "已确认："),
            T::NotAcknowledged => ("not acknowledged", "未确认"),
            T::Back => ("Back", "返回"),
            T::NotFound => ("Not found", "未找到"),
            T::Forbidden => ("Only an admin may do this.", "仅管理员可执行此操作。"),
            T::DailyByKind => ("Events per day, by kind", "每日事件数（按类型）"),
            T::DailyByCategory => ("Events per day, by category", "每日事件数（按分类）"),
            T::DailyTimeToClear => ("Time to clear per day (minutes)", "每日整改时长（分钟）"),
            T::Mean => ("mean", "平均"),
            T::Max => ("max", "最长"),
            T::Count => ("count", "数量"),
            T::Date => ("Date", "日期"),
            T::Days => ("days", "天"),
            T::NoClearedEvents => ("No event has been cleared in these days.", "这些天内没有已整改的事件。"),
            T::StatsNote => {
                ("Counted from the events this box has seen since it started.", "根据本设备启动以来看到的事件统计。")
            }
            T::Uncategorised => ("uncategorised", "未分类"),
            T::OpenImage => ("Open the image", "打开图片"),
            T::Clip => ("Video clip", "视频片段"),
            T::ClipNote => (
                "From before the event to after it, as the camera sent it; its sha256 is in the signed evidence chain.",
                "从事件发生前到结束后，摄像机原始视频；其 sha256 记录在签名的证据链中。",
            ),
            T::Seconds => ("s", "秒"),
            T::Language => ("Language", "语言"),
            T::Installer => ("Installer tools", "安装工具"),
            T::Zones => ("Zones", "区域"),
            T::ZonesInConfigFile => ("Zones of this camera are saved in the config file", "本摄像头的区域保存在配置文件"),
            T::ZonesInSiteFile => ("Zones of this camera are saved in the site calibration file (its zones replace the config file's for this camera)", "本摄像头的区域保存在站点标定文件（其区域替代配置文件中本摄像头的区域）"),
            T::NothingSavable => ("The agent runs on its embedded defaults (started without --config FILE): nothing can be saved.", "设备以内置默认配置运行（未指定 --config 文件）：无法保存。"),
            T::ReadOnlyNote => ("Only an admin may change these; you see them read-only.", "仅管理员可修改；您只能查看。"),
            T::DrawHint => ("Press “New zone”, then tap the picture at each corner of the zone. Drag a corner to move it.", "点击“新建区域”，然后在画面上依次点击区域的各个角点。拖动角点可调整位置。"),
            T::NewZone => ("New zone", "新建区域"),
            T::UndoCorner => ("Undo corner", "撤销角点"),
            T::DeleteZone => ("Delete zone", "删除区域"),
            T::SaveZones => ("Save zones", "保存区域"),
            T::ZoneId => ("Zone id", "区域编号"),
            T::Role => ("Role", "用途"),
            T::Corners => ("corners", "个角点"),
            T::NewPicture => ("New picture", "刷新画面"),
            T::RoleBin => ("Bin", "垃圾桶"),
            T::RoleDropArea => ("Drop area", "投放区"),
            T::RoleRoad => ("Road", "道路"),
            T::RoleSiteExit => ("Site exit", "工地出口"),
            T::RoleIgnore => ("Ignore", "忽略区"),
            T::RolePrivacy => ("Privacy (blacked out)", "隐私遮挡"),
            T::SavedTo => ("Saved and applied. Written to", "已保存并生效。写入"),
            T::NeedsThreeCorners => ("A zone needs at least 3 corners:", "区域至少需要 3 个角点："),
            T::UnsavedChanges => ("Unsaved changes", "有未保存的修改"),
            T::NotSaved => ("Not saved:", "未保存："),
            T::NoZones => ("No zones yet.", "暂无区域。"),
            T::Thresholds => ("Thresholds", "阈值"),
            T::Actions => ("On-site actions", "现场宣教动作"),
            T::ActionsNote => (
                "A rule's action runs one of these programs when its event starts; only root adds programs, in",
                "规则事件开始时可运行以下程序之一；只有 root 可在此文件夹中添加程序：",
            ),
            T::NoActionPrograms => ("No programs in the actions folder.", "动作文件夹中没有程序。"),
            T::Program => ("Program", "程序"),
            T::Rule => ("Rule", "规则"),
            T::Setting => ("Setting", "设置项"),
            T::Value => ("Value", "值"),
            T::ModelDefault => ("empty: the model's default", "留空：使用模型默认值"),
            T::ClassThresholds => ("Per-class thresholds from the site file", "站点文件中的分类别阈值"),
            T::SaveThresholds => ("Save thresholds", "保存阈值"),
            T::TestModels => ("Test the models on the current frame", "用当前画面测试模型"),
            T::TestNote => ("Runs the loaded models once on the camera's newest frame; no event comes of it.", "用摄像头最新画面运行一次已加载的模型；不会产生事件。"),
            T::RunTest => ("Run the models", "运行模型"),
            T::Running => ("Running…", "运行中…"),
            T::NoFindings => ("The models found nothing above their thresholds.", "模型未发现高于阈值的目标。"),
            T::Found => ("Findings:", "发现目标："),
            T::LabelForSamples => ("Label for the site's samples", "标注（加入站点样本集）"),
            T::LabelIntro => ("Was this event right? The crop and your label go into the site's sample set, from which `edge-agent calibrate thresholds` chooses thresholds.", "该事件是否正确？截图和标注将加入站点样本集，`edge-agent calibrate thresholds` 据此选择阈值。"),
            T::Right => ("Right", "正确"),
            T::Wrong => ("Wrong", "错误"),
            T::ReallyIs => ("What it really is (model label, or none)", "实际是什么（模型标签，或 none）"),
            T::SaveLabel => ("Save label", "保存标注"),
            T::LabelledAs => ("Labelled", "已标注"),
            T::LearnSite => ("The box learns its site", "本机学习现场"),
            T::LearnNote => ("Trains a classifier head on this site's labelled crops and checks it on crops held out from training. Deploying it self-tests it, switches it in, and switches the previous classifier back if it fails or never runs during its probation.", "用本站已标注的截图训练分类头，并用未参与训练的截图检验。部署时先自检再切换；若在试用期内失败或未运行，自动切回原分类器。"),
            T::LabelledCrops => ("Labelled crops", "已标注截图"),
            T::OnlyLabels => ("Only these labels (comma-separated; empty: all)", "仅用这些标签（逗号分隔；留空为全部）"),
            T::Train => ("Train", "训练"),
            T::Training => ("Training…", "训练中…"),
            T::TrainedHead => ("Trained", "已训练"),
            T::DeployAs => ("Deploy as", "部署为"),
            T::Deploy => ("Deploy", "部署"),
            T::Report => ("Report", "报告"),
            T::OnlyAdminsLabel => ("Only an admin may label events.", "仅管理员可标注事件。"),
            T::SamplesIn => ("Sample set", "样本集"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chinese_browser_gets_chinese() {
        assert_eq!(Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("en-US,en;q=0.9,zh-CN;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept_language("fr-FR, zh-TW;q=0.7"), Lang::Zh);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
    }

    #[test]
    fn the_switch_beats_the_cookie_and_the_browser() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
        headers.insert(header::COOKIE, HeaderValue::from_static("lang=zh"));
        assert_eq!(Lang::from_request(None, &headers), Lang::Zh);
        assert_eq!(Lang::from_request(Some("kind=object&lang=en"), &headers), Lang::En);
    }
}
