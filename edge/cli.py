"""The `kit` command: run the kit, file reports, show status, check config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from config.loader import BadConfig, default_path, load, parse, render_default
from edge.errors import KitError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $KIT_CONFIG or /etc/kit/kit.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kit", description="野外应急通信套件 / Field-communications kit for rescue teams"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="启动套件全部进程 / start all of the kit's processes")
    _config_arg(p)
    p = sub.add_parser("edge", help="只运行 edge 进程（systemd 用）/ run the edge daemon alone")
    _config_arg(p)
    p = sub.add_parser(
        "drivers", help="只运行设备进程（systemd 用）/ run GNSS, battery and button alone"
    )
    _config_arg(p)
    p = sub.add_parser("mesh", help="只运行自组网进程（systemd 用）/ run the team mesh alone")
    _config_arg(p)
    p = sub.add_parser("media", help="只运行媒体进程（systemd 用）/ run the video recorders alone")
    _config_arg(p)
    p = sub.add_parser("uplink", help="只运行上行进程（systemd 用）/ run the uplink alone")
    _config_arg(p)
    p = sub.add_parser("web", help="只运行本地网页（systemd 用）/ run the kit's web page alone")
    _config_arg(p)
    p.add_argument("--listen", help="host:port (default: [web] listen in the config)")
    p = sub.add_parser("web-password", help="设置网页配置登录密码 / set a web configuration login")
    _config_arg(p)
    p.add_argument("--user", default="admin", help="user name (default: admin)")
    p.add_argument("--stdin", action="store_true", help="read the password from stdin")
    sub.add_parser(
        "centre",
        help="指挥中心接收服务 / run the command centre's ingest (kit centre --help)",
        add_help=False,
    )

    p = sub.add_parser(
        "sim",
        help="整套系统模拟演练 / the whole system on this machine, playing a scenario",
    )
    p.add_argument(
        "--scenario",
        "-s",
        default="first-hours",
        help="name in sim/scenarios (first-hours, night-flood, aftershock) or a .toml file",
    )
    p.add_argument("--kits", type=int, help="number of kits (default: as the scenario lists)")
    p.add_argument("--speed", type=float, help="scenario seconds per real second")
    p.add_argument("--duration", type=float, help="scenario seconds to run (default: all)")
    p.add_argument("--dir", type=Path, help="folder for the run (default: a new temp folder)")
    p.add_argument("--drone", action=argparse.BooleanOptionalAction, help="drone video on/off")

    p = sub.add_parser("status", help="套件状态 / show the kit's status")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable JSON")

    p = sub.add_parser("report", help="从命令行提交报告 / file a report from the shell")
    _config_arg(p)
    p.add_argument("kind", help="sos, trapped, casualties, needs, situation, message, other, track")
    p.add_argument("--text", "-t", help="文字说明 / free text")
    p.add_argument("--position", "-p", help="纬度,经度[,海拔] / lat,lon[,alt]")
    p.add_argument("--count", "-n", type=int, help="人数 / number of people")
    p.add_argument("--priority", help="P0–P4 (default: by kind)")
    p.add_argument("--source", default="cli", help="who files it (default: cli)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")

    p = sub.add_parser("config", help="配置文件工具 / config file tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="检查配置，列出全部错误 / list every error in a config")
    c.add_argument("file", type=Path)

    p = sub.add_parser("init-config", help="写一个初始配置 / write a starting config")
    p.add_argument("file", type=Path)
    p.add_argument("--id", type=int, default=1, help="kit id 1–65535 (default 1)")
    p.add_argument("--name", default="演示套件 / demo kit")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--runtime-dir", default="run")
    p.add_argument("--centre", metavar="URL", help="add an IP link to this centre URL")
    p.add_argument("--centre-key", default="", help="the centre's public key (kit centre keys)")
    p = sub.add_parser("provision", help="生成本机密钥对 / make this kit's key pair")
    _config_arg(p)
    p.add_argument("--profile", choices=["default", "national"], help="default: [security]")
    p = sub.add_parser("wipe-keys", help="销毁本机密钥 / destroy this kit's keys")
    _config_arg(p)
    p.add_argument("--yes", action="store_true", help="confirm")
    p = sub.add_parser("firmware", help="伴随单片机固件 / the companion microcontroller's firmware")
    fsub = p.add_subparsers(dest="firmware_command", required=True, metavar="ACTION")
    f = fsub.add_parser("flash", help="用 mpremote 写入 Pico / copy the firmware to the Pico")
    f.add_argument("--device", help="serial port of the Pico (default: mpremote finds it)")
    return parser


def fail(err: KitError | str, code: int = EXIT_FAILED) -> int:
    print(f"错误 / error: {err}", file=sys.stderr)
    return code


def _client(config_path: Path | None) -> Any:
    from edge.client import EdgeClient
    from edge.daemon import RPC_SOCKET

    loaded = load(config_path)
    return EdgeClient(
        loaded.config.endpoint(RPC_SOCKET), timeout_s=loaded.config.edge.rpc_timeout_s, retries=1
    )


def cmd_report(args: argparse.Namespace) -> int:
    from edge.item import Kind, Position, new_item

    try:
        kind = Kind.parse(args.kind)
        position = Position.parse(args.position) if args.position else None
        data: dict[str, int] = {}
        if args.count is not None:
            data["count"] = args.count
        item = new_item(
            kind,
            source=args.source,
            priority=args.priority,
            text=args.text,
            position=position,
            data=data,
        )
    except KitError as err:
        return fail(err, EXIT_USAGE)
    with _client(args.config) as client:
        try:
            answer = client.accept(item)
        except KitError as err:
            return fail(err)
    if args.json:
        print(
            json.dumps(
                {
                    "seq": answer["seq"],
                    "uid": str(item.uid),
                    "kind": kind.value,
                    "priority": item.priority.name,
                    "state": answer["state"],
                }
            )
        )
    else:
        print(f"已受理 / accepted: #{answer['seq']} {item.priority.name} {kind.value} ({item.uid})")
    return EXIT_OK


def _status_table(s: dict[str, Any]) -> str:
    lines = [
        f"套件 / kit        {s['kit']['id']}  {s['kit']['name']}",
        f"运行 / uptime     {s['uptime_s']} s  (pid {s['pid']})",
    ]
    if s["safe_mode"]:
        lines.append(f"安全模式 / SAFE MODE — 配置错误 / config errors in {s['config']}:")
        lines += [f"    {e}" for e in s["config_errors"]]
    lines.append("待发送 / queued   " + "  ".join(f"{p}:{n}" for p, n in s["queued"].items()))
    lines.append(f"存储 / store      {s['store']['path']}  ({s['store']['bytes'] / 1e6:.1f} MB)")
    at_rest = s.get("at_rest") or {}
    if at_rest.get("wiped"):
        lines.append(f"密钥已销毁 / KEYS WIPED  {at_rest['message']}")
    lines += _reports_table(s)
    return "\n".join(lines)


STALE_S = 30.0  # a report older than this: its process is probably not running


def _mark(report: dict[str, Any]) -> str:
    if report["age_s"] > STALE_S:
        return f"?  ({report['age_s']:.0f} 秒前 / s ago)"
    return "在线 / up  " if report["online"] else "离线 / down"


def _reports_table(s: dict[str, Any]) -> list[str]:
    lines = []
    links, devices = s.get("links") or {}, s.get("devices") or {}
    if links:
        lines.append("链路 / links")
        for name, ln in links.items():
            lines.append(
                f"    {name:<14} {ln['kind']:<9} {_mark(ln)}  "
                f"{ln['rate_bps']:g} B/s  rtt {ln['rtt_s']:g} s"
            )
    if devices:
        lines.append("设备 / devices")
        for name, d in devices.items():
            lines.append(
                f"    {name:<14} {d['kind']:<9} {_mark(d)}  {d['summary_zh']} / {d['summary_en']}"
            )
    battery = s.get("battery")
    if battery:
        mains = "市电 / mains" if battery["on_mains"] else "电池 / battery"
        hours = battery.get("hours_left")
        left = "" if hours is None else f"  约 {hours:.1f} 小时 / about {hours:.1f} h left"
        volts = "" if battery["volts"] is None else f"  {battery['volts']:.2f} V"
        lines.append(f"电量 / battery    {battery['percent']:.0f} %{volts}  {mains}{left}")
    orders = s.get("orders") or []
    if orders:
        lines.append("指令 / orders")
        for o in orders[:5]:
            target = o["target"] or "本机 / kit"
            lines.append(f"    #{o['order_id']:<6} → {target:<12} {o['text']}  ({o['link']})")
    fix = s.get("position")
    if fix:
        lines.append(
            f"位置 / position   {fix['lat']:.5f}, {fix['lon']:.5f}  "
            f"{fix['satellites']} 颗卫星 / satellites"
        )
    return lines + _team_lines(s.get("team") or [], time.time())


TEAM_SHOWN = 12  # members listed by `kit status`; the rest are counted


def _team_lines(team: list[dict[str, Any]], now_s: float) -> list[str]:
    """The team on the mesh: name, position, when last heard, battery."""
    if not team:
        return []
    lines = [f"队员 / team       {len(team)} 名 / members"]
    for m in team[:TEAM_SHOWN]:
        if m["lat"] is None or m["lon"] is None:
            where = "位置未知 / no position"
        else:
            where = f"{m['lat']:.5f}, {m['lon']:.5f}"
        battery = m["battery_pct"]
        power = (
            "电量 ? / battery ?"
            if battery is None
            else "外接电源 / powered"
            if battery > 100
            else f"电量 / battery {battery} %"
        )
        lines.append(f"    {m['name']:<10} {where:<22}  {_ago(m['last_heard_ms'], now_s)}  {power}")
    if len(team) > TEAM_SHOWN:
        lines.append(f"    … 另 {len(team) - TEAM_SHOWN} 名 / {len(team) - TEAM_SHOWN} more")
    return lines


def _ago(ms: int, now_s: float) -> str:
    if not ms:
        return "未收到 / not heard"
    s = max(0.0, now_s - ms / 1000)
    if s < 120:
        return f"{s:.0f} 秒前 / s ago"
    if s < 7200:
        return f"{s / 60:.0f} 分钟前 / min ago"
    return f"{s / 3600:.1f} 小时前 / h ago"


def _edge_socket_missing(endpoint: str) -> KitError | None:
    """No edge daemon can answer when its socket file is not there: say so at once rather
    than after the client's time-outs (a squad member typing `kit status` waits for it)."""
    from edge.client import unavailable

    path = endpoint.removeprefix("ipc://")
    if endpoint.startswith("ipc://") and not Path(path).exists():
        return unavailable(endpoint)
    return None


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args.config) as client:
        try:
            missing = _edge_socket_missing(client.endpoint)
            if missing is not None:
                raise missing
            status = client.status()
        except KitError as err:
            if args.json:
                print(json.dumps({"edge": {"running": False, "error": err.en}}))
            return fail(err)
    if args.json:
        print(json.dumps({"edge": {"running": True}, **status}, ensure_ascii=False))
    else:
        print(_status_table(status))
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        parse(args.file)
    except BadConfig as bad:
        print(f"配置有 {len(bad.issues)} 处错误 / {len(bad.issues)} error(s) in {args.file}:")
        for issue in bad.issues:
            print(f"  {issue}")
        return EXIT_FAILED
    print(f"配置正确 / config OK: {args.file}")
    return EXIT_OK


def cmd_init_config(args: argparse.Namespace) -> int:
    if args.file.exists():
        return fail(f"{args.file} 已存在，不覆盖 / already exists, not overwriting", EXIT_USAGE)
    if not 1 <= args.id <= 65535:
        return fail("kit id 必须在 1–65535 / kit id must be 1-65535", EXIT_USAGE)
    args.file.parent.mkdir(parents=True, exist_ok=True)
    if args.centre and not args.centre.startswith(("http://", "https://")):
        return fail("--centre 需要 http(s):// 地址 / --centre needs an http(s):// URL", EXIT_USAGE)
    args.file.write_text(
        render_default(
            args.id, args.name, args.data_dir, args.runtime_dir, args.centre, args.centre_key
        )
    )
    print(f"已写入 / wrote {args.file}")
    return EXIT_OK


def cmd_sim(args: argparse.Namespace) -> int:
    import tempfile

    from sim.kitsim import main as sim_main
    from sim.scenario import ScenarioError, find_scenario, load_scenario

    if args.kits is not None and not 1 <= args.kits <= 16:
        return fail("--kits 应为 1–16 / --kits must be 1-16", EXIT_USAGE)
    if args.speed is not None and not 0 < args.speed <= 1000:
        return fail("--speed 应为 0–1000 / --speed must be in (0, 1000]", EXIT_USAGE)
    try:
        scenario = load_scenario(find_scenario(args.scenario))
    except ScenarioError as err:
        return fail(err)
    root = args.dir or Path(tempfile.mkdtemp(prefix="kit-sim-"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    return sim_main(
        scenario,
        root.resolve(),
        speed=args.speed,
        kits=args.kits,
        duration=args.duration,
        drone=args.drone,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["centre"]:  # the centre has its own options
        from centre.app import main as centre_main

        return centre_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "config":
        return cmd_config_check(args)
    if args.command == "init-config":
        return cmd_init_config(args)
    if args.command == "sim":
        return cmd_sim(args)
    if args.command == "firmware":
        from drivers.companion import flash_main

        return flash_main(args.device)
    config_path = args.config or default_path()
    if args.command in ("provision", "wipe-keys"):
        from security import cli as security_cli

        try:
            kit_config = parse(config_path)
        except BadConfig as err:
            return fail(str(err), EXIT_USAGE)
        if args.command == "provision":
            return security_cli.provision_main(kit_config, args.profile)
        return security_cli.wipe_main(kit_config, args.yes)
    if args.command == "edge":
        from edge.daemon import main as edge_main

        return edge_main(config_path)
    if args.command == "drivers":
        from drivers.process import main as drivers_main

        return drivers_main(config_path)
    if args.command == "mesh":
        from mesh.process import main as mesh_main

        return mesh_main(config_path)
    if args.command == "media":
        from media.process import main as media_main

        return media_main(config_path)
    if args.command == "uplink":
        from uplink.process import main as uplink_main

        return uplink_main(config_path)
    if args.command == "web":
        from config.web.server import main as web_main

        return web_main(config_path, args.listen)
    if args.command == "web-password":
        from config.web.server import password_main

        return password_main(config_path, args.user, args.stdin)
    if args.command == "run":
        from edge.supervisor import run

        logging.basicConfig(level=logging.INFO, format="%(asctime)s kit %(levelname)s %(message)s")
        loaded = load(config_path)
        if loaded.safe_mode:
            print(f"安全模式 / SAFE MODE: {config_path} 有错误 / has errors:", file=sys.stderr)
            for issue in loaded.issues:
                print(f"  {issue}", file=sys.stderr)
        return run(config_path)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
