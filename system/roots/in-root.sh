#!/bin/bash
# shellcheck disable=SC2016,SC2034  # expect evaluates its test string: single quotes on purpose
# Runs inside an arm64 root (chroot, no network), as root: what the Pi's owner sees of an
# installed hark.  Prints "ok   …" / "FAIL …" lines; exits 1 when anything failed.
#   in-root.sh verify OWNER VERSION     hark on PATH, doctor as the owner would, a spoken turn
#   in-root.sh removed OWNER            after --uninstall: hark gone, its config kept
#   in-root.sh purged OWNER             after --purge: no hark user, unit, rule or link
set -u
FAILS=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
expect() { if eval "$1"; then ok "$2"; else fail "$2"; fi; }  # expect TEST WHAT
# The owner's own login shell: their PATH, their home.
as_owner() { runuser -u "$OWNER" -- bash -lc "$1" </dev/null; }
# `sudo CMD` as the owner types it.  qemu-user cannot run a setuid sudo (binfmt_misc
# without the C flag), so root runs the same sudo command from the owner's home: sudo's
# own environment reset, secure_path and target user apply as they would on the Pi.
as_owner_sudo() { (cd "$(getent passwd "$OWNER" | cut -d: -f6)" && sudo "$@" </dev/null); }
SIM_KEY=sk-sim-hark-system

sim_up() {  # hark-sim, our OpenAI, on this root's loopback
    /opt/harksim/bin/hark-sim --host 127.0.0.1 --port 8765 --api-key "$SIM_KEY" \
        --brain parrot --realtime-factor 0 >/tmp/hark-sim.log 2>&1 &
    SIM_PID=$!
    for _ in $(seq 1 600); do
        if (exec 3<>/dev/tcp/127.0.0.1/8765) 2>/dev/null; then return 0; fi
        kill -0 "$SIM_PID" 2>/dev/null || break
        sleep 0.2
    done
    fail "hark-sim did not come up: $(tail -n 3 /tmp/hark-sim.log)"
    return 1
}

verify() {
    local want=$1 out rc t0
    out=$(as_owner 'hark --version' 2>&1)
    expect '[ "$out" = "hark $want" ]' "hark --version on the owner's PATH: $out"
    out=$(/opt/hark/venv/bin/python -c 'import pyaudio, systemd.daemon; print(pyaudio.__file__, systemd.daemon.__file__)' 2>&1)
    expect '[ "$(grep -o /usr/lib/python3/dist-packages <<<"$out" | wc -l)" = 2 ]' \
        "PyAudio and systemd-python are Debian's, seen from the venv: $out"
    expect '! command -v gcc >/dev/null && ! command -v cc >/dev/null' "no compiler on the device"
    if /opt/hark/venv/bin/python -c 'import lgpio; lgpio.gpiochip_open' 2>/dev/null; then
        ok "GPIO driver: lgpio ($(/opt/hark/venv/bin/python -c 'import lgpio; print(lgpio.__file__)'))"
    else
        ok "GPIO driver: none for this Python (install-device said so; Pi OS has python3-lgpio)"
    fi
    out=$(as_owner 'hark demo' 2>&1); rc=$?
    expect '[ $rc = 69 ] && [ "$(wc -l <<<"$out")" = 1 ] && grep -q "needs the simulator" <<<"$out"' \
        "hark demo without the [sim] extra: one line, exit $rc"
    out=$(/opt/hark/venv/bin/hark-sim 2>&1); rc=$?
    expect '[ $rc = 69 ] && [ "$(wc -l <<<"$out")" = 1 ]' "hark-sim without the [sim] extra: one line, exit $rc"
    out=$(as_owner 'hark doctor --quiet' 2>&1); rc=$?
    expect '[ $rc = 78 ] && grep -q "fix: run it as the service user: sudo -u hark hark doctor" <<<"$out"' \
        "the owner's plain 'hark doctor' says to run it as the service user (exit $rc)"
    sim_up || return
    t0=$SECONDS
    out=$(as_owner_sudo -u hark hark doctor --quiet 2>&1); rc=$?
    echo "$out" | sed 's/^/    | /'
    local name
    for name in config token backend; do
        expect 'grep -qE "^ok +$name " <<<"$out"' "sudo -u hark hark doctor: $name"
    done
    expect 'grep -q "minted a Realtime key" <<<"$out"' "doctor minted a key from hark-sim on loopback"
    expect '! grep -q "$SIM_KEY" <<<"$out"' "doctor never prints the token"
    # A root has no sound card and no GPIO chip: those two fail here (the guest has both).
    expect 'grep -qE "^FAIL +audio" <<<"$out"' "doctor: no sound card in a root (expected)"
    echo "time doctor $((SECONDS - t0)) s"
    t0=$SECONDS
    out=$(as_owner_sudo -u hark hark say --fake-audio "Hello from an arm64 root" 2>&1); rc=$?
    echo "$out" | tail -n 5 | sed 's/^/    | /'
    expect '[ $rc = 0 ] && grep -q "^You said: Hello from an arm64 root$" <<<"$out"' \
        "a turn: sudo -u hark hark say --fake-audio, hark-sim (parrot) answered (exit $rc)"
    expect 'grep -q "status: speaking" <<<"$out"' "the reply was spoken (played on the fake speaker)"
    echo "time say $((SECONDS - t0)) s"
    kill "$SIM_PID" 2>/dev/null; wait "$SIM_PID" 2>/dev/null
}

removed() {
    expect '! as_owner "command -v hark" >/dev/null' "after --uninstall: hark is not on the owner's PATH"
    expect '[ ! -e /opt/hark ] && [ ! -e /etc/systemd/system/hark.service ]' \
        "after --uninstall: /opt/hark and the unit are gone"
    expect '[ ! -e /etc/udev/rules.d/60-hark-gpio.rules ]' "after --uninstall: the udev rule is gone"
    expect '[ -f /etc/hark/hark.toml ] && [ -f /etc/hark/device-token ]' \
        "after --uninstall: /etc/hark (config, token) is kept"
}

purged() {
    expect '! getent passwd hark >/dev/null && ! getent group hark >/dev/null' \
        "after --purge: no hark user or group"
    expect '[ ! -e /etc/hark ] && [ ! -e /var/lib/hark ]' "after --purge: /etc/hark, /var/lib/hark gone"
    expect '[ ! -e /etc/systemd/system/hark-firstboot.service ] && ! ls /etc/systemd/system/*.wants/hark* >/dev/null 2>&1' \
        "after --purge: no hark units or enable links"
    expect '! as_owner "command -v hark" >/dev/null' "after --purge: hark is not on the owner's PATH"
}

cmd=$1 OWNER=$2
shift 2
"$cmd" "$@"
[ "$FAILS" = 0 ]
