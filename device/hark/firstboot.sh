#!/bin/bash
# hark first boot: installs hark on this Raspberry Pi from the files that
# `hark provision` (scripts/provision-sd) put into the boot partition's hark/ folder.
#
# It runs as root from hark-firstboot.service (after network-online.target) on every
# boot until it has succeeded once (stamp: /var/lib/hark/firstboot.done), and every
# step is safe to repeat, so a power cut in the middle only means it runs again.
# A short result log is written to the boot partition (hark-firstboot.log) so the
# owner can read why it failed by putting the card back into their computer.
#
#   firstboot.sh                        install (what hark-firstboot.service runs)
#   firstboot.sh --install-unit [--start]
#                                       write and enable hark-firstboot.service
#                                       (firstrun.sh / cloud-init runcmd call this)
#
# HARK_ROOT prefixes every absolute path (tests run this in a throwaway root).
set -u
umask 022

# ---- written by hark provision -------------------------------------------------
SERVICE_USER=@@SERVICE_USER@@
CONFIG_PATH=@@CONFIG_PATH@@
TOKEN_PATH=@@TOKEN_PATH@@
INSTALL_FROM=@@INSTALL_FROM@@
WHEEL_NAME=@@WHEEL_NAME@@
PACKAGE_SPEC=@@PACKAGE_SPEC@@
INDEX_URL=@@INDEX_URL@@
APT_PACKAGES=@@APT_PACKAGES@@
SSH_USER=@@SSH_USER@@
PROVISIONED_AT=@@PROVISIONED_AT@@
# ---------------------------------------------------------------------------------

ROOT="${HARK_ROOT:-}"
CARD="$(cd "$(dirname "$0")" && pwd)"
BOOT="$(dirname "$CARD")"
STATE="$ROOT/var/lib/hark"
STAMP="$STATE/firstboot.done"
LOG="$BOOT/hark-firstboot.log"
OUT="$STATE/firstboot.out"
UNIT_DIR="$ROOT/etc/systemd/system"
export DEBIAN_FRONTEND=noninteractive

note() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
    printf '%s\n' "$line"
    printf '%s\n' "$line" >>"$LOG" 2>/dev/null || true
}

fail() {
    note "FAILED: $*"
    note "hark is NOT ready. Fix the cause, put the card back and power on: this step runs again."
    note "On the Pi: journalctl -u hark-firstboot; full output in /var/lib/hark/firstboot.out"
    sync
    exit 1
}

# step NAME COMMAND...: run it with its output kept in $OUT; stop with a log on failure.
step() {
    local name=$1 rc start
    shift
    printf '\n== %s: %s\n' "$(date -u +%H:%M:%S)" "$name" >>"$OUT"
    start=$(wc -l <"$OUT")
    "$@" >>"$OUT" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        note "ok      $name"
        return 0
    fi
    note "error   $name (exit $rc); the last lines of its output:"
    tail -n +"$((start + 1))" "$OUT" | tail -n 20 | sed 's/^/        /' >>"$LOG" 2>/dev/null
    fail "$name"
}

# Called once per provisioning (firstrun.sh, or cloud-init's per-instance runcmd): a
# re-provisioned card on a Pi that ran hark before must install again, so the old
# stamp goes.
install_unit() {
    local script="${CARD#"$ROOT"}/firstboot.sh"
    rm -f "$STAMP"
    mkdir -p "$UNIT_DIR/multi-user.target.wants" || return 1
    cat >"$UNIT_DIR/hark-firstboot.service" <<EOF
[Unit]
Description=hark first boot: install hark from the boot partition
Wants=network-online.target
After=network-online.target time-sync.target
ConditionPathExists=!/var/lib/hark/firstboot.done

[Service]
Type=oneshot
ExecStart=/bin/bash $script
TimeoutStartSec=60min
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
    ln -sf ../hark-firstboot.service "$UNIT_DIR/multi-user.target.wants/hark-firstboot.service"
}

# The token moves to the root filesystem (0600, root) and leaves the card at once, so
# even a later failure does not leave it on a card that goes back into a computer.
stage_secrets() {
    install -d -m 700 "$STATE/staged" || return 1
    if [ -f "$CARD/device-token" ]; then
        install -m 600 "$CARD/device-token" "$STATE/staged/device-token" || return 1
        sync
        rm -f "$CARD/device-token" || return 1
    fi
    rm -f "$CARD/wifi.nmconnection"
    if [ -f "$BOOT/network-config" ] && grep -q '^ *password:' "$BOOT/network-config"; then
        # cloud-init applied it before runcmd and keeps its own copy (/etc/netplan).
        sed -i 's/^\( *\)password:.*$/\1# password: removed by hark first boot/' \
            "$BOOT/network-config" || return 1
    fi
    if [ ! -f "$STATE/staged/device-token" ] && [ ! -f "$ROOT$TOKEN_PATH" ]; then
        echo "no device token: neither $CARD/device-token nor $TOKEN_PATH exists;"
        echo "provision the card again with --token-file or --backend-admin"
        return 1
    fi
    sync
}

apt_install() {
    local attempt
    [ -n "$APT_PACKAGES" ] || return 0
    # shellcheck disable=SC2086 # a list of package names, split on purpose
    apt-get install -y --no-install-recommends $APT_PACKAGES && return 0
    for attempt in 1 2 3 4 5; do
        # shellcheck disable=SC2086
        apt-get update && apt-get install -y --no-install-recommends $APT_PACKAGES && return 0
        echo "apt attempt $attempt failed (is the network up?); retrying in 20 s"
        sleep 20
    done
    return 1
}

# --from-index mode (explicitly asked for at provisioning): fetch that exact release's
# wheel, then install it like a card wheel.  Never an sdist: it would run its setup code
# as root here.
fetch_wheel() {
    local pip_args=()
    [ -n "$INDEX_URL" ] && pip_args=(--index-url "$INDEX_URL")
    rm -rf "$STATE/download" || return 1
    mkdir -p "$STATE/download" || return 1
    python3 -m venv "$STATE/bootstrap" || return 1
    "$STATE/bootstrap/bin/pip" download --no-deps --only-binary=:all: "${pip_args[@]}" \
        --dest "$STATE/download" "$PACKAGE_SPEC"
}

# Every hark wheel carries install-device and the unit (hark/_install/): a card without
# them (provisioned without a checkout) takes them from the wheel it installs.
installer_from_wheel() {
    rm -rf "$STATE/installer" || return 1
    python3 - "$1" "$STATE/installer" <<'PY'
import sys, zipfile
from pathlib import Path

wheel, out = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    names = set(zf.namelist())
    for member, dest in (("hark/_install/install-device", "scripts/install-device"),
                         ("hark/_install/hark.service", "systemd/hark.service")):
        if member not in names:
            sys.exit(f"{wheel} carries no {member} (a hark wheel older than 0.1.0?); "
                     "provision again with --install-script and --unit, or from a checkout")
        (out / dest).parent.mkdir(parents=True, exist_ok=True)
        (out / dest).write_bytes(zf.read(member))
PY
}

install_hark() {
    local args=() wheels script="$CARD/scripts/install-device"
    case "$INSTALL_FROM" in
    wheel) wheels=("$CARD/wheels/$WHEEL_NAME"); args=(--wheel "${wheels[0]}") ;;
    wheelhouse) wheels=("$CARD"/wheels/hark_voice-*.whl); args=(--wheelhouse "$CARD/wheels") ;;
    index)
        fetch_wheel || return 1
        wheels=("$STATE"/download/*.whl)
        [ -f "${wheels[0]}" ] || { echo "pip downloaded no wheel for $PACKAGE_SPEC"; return 1; }
        args=(--wheel "${wheels[0]}")
        [ -n "$INDEX_URL" ] && export PIP_INDEX_URL="$INDEX_URL"
        ;;
    *) echo "unknown install source: $INSTALL_FROM"; return 1 ;;
    esac
    if [ ! -f "$script" ]; then
        installer_from_wheel "${wheels[0]}" || return 1
        script="$STATE/installer/scripts/install-device"
    fi
    # Its own options for a prefix root (tests, image builds): --root plus any
    # extras in HARK_INSTALL_DEVICE_OPTS (e.g. --no-apt --no-systemctl).
    [ -z "$ROOT" ] || args+=(--root "$ROOT")
    # shellcheck disable=SC2206 # option words, split on purpose
    [ -z "${HARK_INSTALL_DEVICE_OPTS:-}" ] || args+=($HARK_INSTALL_DEVICE_OPTS)
    bash "$script" "${args[@]}"
}

# Same modes as scripts/install-device: config 0640 root:hark, token 0600 hark:hark.
place_files() {
    mkdir -p "$ROOT$(dirname "$CONFIG_PATH")" "$ROOT$(dirname "$TOKEN_PATH")" || return 1
    install -m 640 "$CARD/hark.toml" "$ROOT$CONFIG_PATH" || return 1
    chown "root:$SERVICE_USER" "$ROOT$CONFIG_PATH" || return 1
    if [ -f "$STATE/staged/device-token" ]; then
        install -m 600 "$STATE/staged/device-token" "$ROOT$TOKEN_PATH" || return 1
        rm -f "$STATE/staged/device-token"
    fi
    chown "$SERVICE_USER:$SERVICE_USER" "$ROOT$TOKEN_PATH" || return 1
    chmod 600 "$ROOT$TOKEN_PATH"
}

main() {
    if [ -e "$STAMP" ]; then
        echo "hark first boot already done ($(cat "$STAMP")); nothing to do"
        exit 0
    fi
    if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
        echo "run as root" >&2
        exit 1
    fi
    if ! mkdir -p "$STATE" || ! chmod 700 "$STATE"; then
        fail "cannot create $STATE"
    fi
    note "hark first boot started (card provisioned $PROVISIONED_AT, hark from $INSTALL_FROM)"
    step "move the device token off the card" stage_secrets
    step "install system packages" apt_install
    step "install hark" install_hark
    step "place $CONFIG_PATH and the device token" place_files
    if [ -n "$SSH_USER" ]; then
        step "enable ssh for $SSH_USER" systemctl enable --now ssh
    fi
    step "enable hark.service" systemctl enable hark.service
    echo "card provisioned $PROVISIONED_AT, installed $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$STAMP"
    if timeout 180 systemctl restart hark.service >>"$OUT" 2>&1; then
        note "ok      start hark.service"
    else
        note "warning hark.service is installed but did not start; on the Pi run"
        note "        'sudo -u hark hark doctor' or 'journalctl -u hark' to see why"
    fi
    systemctl disable hark-firstboot.service >>"$OUT" 2>&1 || true
    note "done: hark is installed; the card no longer holds the device token or Wi-Fi key"
    sync
}

case "${1:-}" in
--install-unit)
    install_unit || exit 1
    if [ "${2:-}" = --start ]; then
        systemctl daemon-reload
        systemctl start --no-block hark-firstboot.service
    fi
    ;;
"") main ;;
*)
    echo "usage: $0 [--install-unit [--start]]" >&2
    exit 2
    ;;
esac
