"""Chinese first, English second: the page's language and the strings its scripts show."""

from __future__ import annotations

LANGS = ("zh", "en")
COOKIE = "kit_lang"


class Tr:
    """``tr(zh, en)``: the string in the visitor's language."""

    def __init__(self, code: str) -> None:
        self.code = code if code in LANGS else "zh"

    def __call__(self, zh: str, en: str) -> str:
        return zh if self.code == "zh" else en

    @property
    def html_lang(self) -> str:
        return "zh-CN" if self.code == "zh" else "en"


# Strings the scripts need (they build the live parts of the pages), by key.
SCRIPT_STRINGS: dict[str, tuple[str, str]] = {
    "online": ("在线", "online"),
    "offline": ("离线", "offline"),
    "stale": ("无消息", "no news"),
    "never": ("尚无", "none yet"),
    "ago": ("{n} 秒前", "{n} s ago"),
    "min_ago": ("{n} 分钟前", "{n} min ago"),
    "hours_left": ("约 {n} 小时", "about {n} h left"),
    "mains": ("市电供电", "on mains"),
    "no_battery": ("无电池数据", "no battery data"),
    "fix": ("已定位，{n} 颗卫星", "fix, {n} satellites"),
    "no_fix": ("未定位", "no fix"),
    "clock_ok": ("时钟已校准", "clock set"),
    "clock_bad": ("时钟未校准", "clock not set"),
    "edge_down": (
        "edge 进程无响应：报告暂时无法受理",
        "edge not answering: reports cannot be filed now",
    ),
    "safe_mode": ("安全模式：配置有错误", "SAFE MODE: the config has errors"),
    "disk_free": ("剩余 {free} / 共 {total}", "{free} free of {total}"),
    "store": ("出站队列 {n}", "outbox {n}"),
    "no_links": ("未配置链路", "no links configured"),
    "no_deliveries": ("本次开机尚无送达", "nothing delivered since start"),
    "delivered_on": ("#{seq} 经 {link}", "#{seq} via {link}"),
    "state_ACCEPTED": ("已受理，等待链路", "accepted, waiting for a link"),
    "state_IN_FLIGHT": ("发送中", "on its way"),
    "state_ACKNOWLEDGED": ("指挥中心已收到", "delivered to the centre"),
    "state_EVICTABLE": ("指挥中心已收到", "delivered to the centre"),
    "state_SUPERSEDED": ("已被更新的数据取代", "superseded"),
    "state_unknown": ("状态未知", "state unknown"),
    "sending": ("正在提交…", "sending…"),
    "accepted": ("已受理 #{seq}", "accepted #{seq}"),
    "photo_too_big": ("照片过大（上限 {n} MB）：{name}", "photo too large (limit {n} MB): {name}"),
    "not_image": ("不是图片：{name}", "not an image: {name}"),
    "too_many_photos": ("照片太多（最多 {n} 张）", "too many photos (at most {n})"),
    "no_geo": (
        "手机无法定位（需要 HTTPS 或定位权限）",
        "the phone cannot give a position (needs HTTPS or permission)",
    ),
    "kit_no_fix": ("套件尚未定位", "the kit has no fix yet"),
    "tap_map": ("在地图上点选位置", "tap the map to set the position"),
    "network_error": ("网络错误，报告未提交，请重试", "network error: not filed, try again"),
    "team_member": ("队员", "member"),
    "kit": ("本套件", "this kit"),
    "report": ("报告", "report"),
    "battery": ("电量", "battery"),
    "snr": ("信噪比", "SNR"),
    "no_team": ("暂无队员位置", "no team positions yet"),
    "photos_pending": ("{n} 张照片稍后提交", "{n} photo(s) to be filed later"),
}


def script_strings(tr: Tr) -> dict[str, str]:
    return {k: tr(*v) for k, v in SCRIPT_STRINGS.items()}


KIND_NAMES: dict[str, tuple[str, str]] = {
    "sos": ("SOS 求救", "SOS"),
    "casualties": ("伤亡", "casualties"),
    "trapped": ("被困", "trapped"),
    "needs": ("需求", "needs"),
    "situation": ("灾情", "situation"),
    "other": ("其他", "other"),
}
