"""The kit's access point: hostapd's settings written from the [wifi] section."""

from __future__ import annotations

from pathlib import Path

from config.schema import WifiSection
from config.web.configform import write_atomically


def hostapd_conf(wifi: WifiSection) -> str:
    lines = [
        "# 由套件网页生成 / written by the kit's web page from [wifi]; edits here are overwritten",
        f"interface={wifi.interface}",
        "driver=nl80211",
        "utf8_ssid=1",
        f"ssid={wifi.ssid}",
        f"country_code={wifi.country}",
        "ieee80211d=1",
        "hw_mode=g",
        f"channel={wifi.channel}",
        "wmm_enabled=1",
        "auth_algs=1",
        "wpa=2",
        "wpa_key_mgmt=WPA-PSK",
        "rsn_pairwise=CCMP",
        f"wpa_passphrase={wifi.passphrase}",
    ]
    return "\n".join(lines) + "\n"


def write_hostapd(wifi: WifiSection, data_dir: Path) -> Path | None:
    """Write ``<data>/hostapd.conf`` (mode 0600: it holds the passphrase); None when off."""
    if not wifi.enabled:
        return None
    path = data_dir / "hostapd.conf"
    write_atomically(path, hostapd_conf(wifi).encode(), mode=0o600)
    return path
