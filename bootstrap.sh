#!/usr/bin/env bash
# Sets up everything the kit needs on a fresh Debian/Ubuntu machine, then runs it or its tests.
#   ./bootstrap.sh sim    – the whole system on this machine playing a disaster scenario (kit sim)
#   ./bootstrap.sh run    – the kit's daemons and a local command centre (configs in local/)
#   ./bootstrap.sh test   – lint, type checks and the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

# System packages the kit and its tests use. Grows as issues land; installed only if missing.
APT_PACKAGES=(python3 python3-venv sqlite3 ppp gpsd gpsd-clients ffmpeg chromium fonts-wqy-microhei postgresql mosquitto gcc libc6-dev faketime systemd shellcheck parted dosfstools mtools e2fsprogs util-linux nodejs)

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf '错误 / error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@";
    elif command -v sudo >/dev/null; then sudo "$@";
    else die "need root (or sudo) to install: $*"; fi
}

install_system_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
    say "installing system packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# The firmware's tests run it under a real MicroPython: the WebAssembly port, run by Node.
MICROPYTHON_PORT="@micropython/micropython-webassembly-pyscript@1.27.0"
setup_micropython() {
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/fieldkit/mp-1.27.0"
    [ -f "$cache/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs" ] \
        && return 0
    if ! command -v npm >/dev/null; then
        say "installing npm"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            npm >/dev/null
    fi
    say "installing MicroPython (WebAssembly port, npm) for the firmware tests"
    mkdir -p "$cache"
    npm install --no-audit --no-fund --prefix "$cache" "$MICROPYTHON_PORT" >/dev/null
}

pick_python() {
    for py in python3.11 python3; do
        if command -v "$py" >/dev/null \
            && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    die "Python 3.11 is required (Debian 12 ships it as python3)"
}

setup_venv() {
    local py stamp want
    py=$(pick_python)
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv with $py"
        "$py" -m venv .venv
    fi
    # Reinstall only when the dependency list changed.
    stamp=.venv/.fieldkit-deps
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing Python packages (pinned in pyproject.toml)"
        .venv/bin/pip install -q --disable-pip-version-check -e '.[pi,firmware,centre,test]'
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
case "$cmd" in
    run)
        install_system_packages
        setup_venv
        mkdir -p local
        if [ ! -f local/kit.toml ]; then
            # The centre's key pair first (the kit trusts it), then the kit's (the centre enrols it).
            [ -f local/centre.toml ] || printf 'listen = "127.0.0.1:8440"\ndata_dir = "centre"\n' > local/centre.toml
            centre_key=$(cd local && ../.venv/bin/kit centre keys --profile default --config centre.toml)
            .venv/bin/kit init-config local/kit.toml --centre http://127.0.0.1:8440 --centre-key "$centre_key"
            kit_key=$(.venv/bin/kit provision --config local/kit.toml 2>/dev/null)
            printf '[[kits]]\nkit_id = 1\nname = "演示套件 / demo kit"\nprofile = "default"\npublic_key = "%s"\n' \
                "$kit_key" >> local/centre.toml
        fi
        say "starting a local command centre on http://127.0.0.1:8440 (log: local/centre.log)"
        (cd local && exec ../.venv/bin/kit centre --config centre.toml) > local/centre.log 2>&1 &
        centre_pid=$!
        trap 'kill "$centre_pid" 2>/dev/null; wait "$centre_pid" 2>/dev/null' EXIT
        say "starting the kit (Ctrl-C stops both); status: .venv/bin/kit status --config local/kit.toml"
        .venv/bin/kit run --config local/kit.toml
        ;;
    sim)
        install_system_packages
        setup_venv
        exec .venv/bin/kit sim "${@:2}"
        ;;
    test)
        install_system_packages
        setup_venv
        setup_micropython
        say "ruff"
        .venv/bin/ruff check .
        say "mypy"
        .venv/bin/mypy
        say "pytest"
        exec .venv/bin/pytest -q "${@:2}"
        ;;
    *)
        echo "usage: ./bootstrap.sh sim [kit sim options] | run | test" >&2
        exit 2
        ;;
esac
