#!/usr/bin/env bash
# checks.sh RELEASE BASE PREP WHEEL OUT: hark installed as a Pi owner would, in throwaway
# overlays over the cached root, with no network (unshare -n: loopback only).
#   firstboot   a card provisioned from this checkout (--wheel), its first boot exactly as
#               the Pi runs it (firstrun.sh or cloud-init's runcmd, then the script
#               hark-firstboot.service runs), then install-device --purge: nothing left
#   wheelhouse  the install-device inside the wheel, --wheelhouse made by the recipe in
#               docs/provisioning.md, and no package index at all; then the owner's clone,
#               one version newer, installed over it with `sudo scripts/install-device`
#               (an upgrade, from a checkout); then --uninstall
#   extras      hark-voice[webrtc,wake,frontend] and livekit in a venv from the index's wheels alone
#               (no compiler), libspeexdsp1 from apt's cache, then extras.py: the wake word
#               heard, speex cancelling an echo, a WebRTC offer and an
#               Opus round trip through aiortc/av, webrtc-noise-gain
# After each install: hark --version, hark doctor as the owner would, a spoken turn.
# Prints "ok/FAIL …" lines and "cost SCENARIO: S s, N MB" (time under qemu-user, disk).
# shellcheck disable=SC2015  # `test && ok || fail`: ok never fails
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
if [ -z "${HARK_IN_NS:-}" ]; then   # every mount below vanishes with this namespace
    exec unshare -m --propagation private env HARK_IN_NS=1 "$0" "$@"
fi
release=$1 base=$2 prep=$3 wheel=$4 out=$5
ROOTS=$SYSTEM_DIR/roots
version=$(basename "$wheel" | cut -d- -f2)
next_version=$version.post1
rm -rf "$out"; mkdir -p "$out"
FAILS=0
ok() { echo "ok   $release: $*"; }
fail() { echo "FAIL $release: $*"; FAILS=$((FAILS + 1)); }

# offline CMD...: CMD in the root ($m), with no network but loopback (up).
offline() {
    unshare -n sh -c 'ip link set lo up && exec "$@"' offline \
        chroot "$m" /usr/bin/env -i "${ROOT_ENV[@]}" "$@"
}

scenario() {  # scenario NAME: a fresh overlay over the cached root, at $m
    S=$out/$1
    mkdir -p "$S"
    overlay "$S/m" "$S/u" "$S/w" "$prep" "$base"
    m=$S/m
    mount_chroot "$m"
    mkdir -p "$m/hark-system"
    cp "$ROOTS/in-root.sh" "$wheel" "$m/hark-system/"
    # The device's config: hark-sim on this root's loopback is its backend and its OpenAI.
    printf '%s\n' '[backend]' 'url = "http://127.0.0.1:8765/v1/realtime/client_secrets"' \
        '[realtime]' 'url = "ws://127.0.0.1:8765/v1/realtime"' >"$m/hark-system/hark.toml"
    echo sk-sim-hark-system >"$m/hark-system/token"
    # A chroot has no running systemd: what needs one is logged and skipped (the guest
    # has the real thing); enable/disable are the real systemctl's.
    cat >"$m/usr/local/sbin/systemctl" <<'SHIM'
#!/bin/sh
case "$1" in
daemon-reload | start | stop | restart | reload | try-restart | reload-or-restart)
    echo "systemctl $* (skipped: no systemd running in this root)" >&2; exit 0 ;;
is-active) exit 3 ;;
esac
exec /usr/bin/systemctl "$@"
SHIM
    chmod 755 "$m/usr/local/sbin/systemctl"
    # sudo resets the environment; qemu-user needs QEMU_CPU to stay fast (lib.sh).
    echo 'Defaults env_keep += "QEMU_CPU"' >"$m/etc/sudoers.d/qemu-cpu"
    # hark-sim is this build's (its dependencies are in the cached root).
    offline /opt/harksim/bin/pip install -q --no-index --no-deps \
        --disable-pip-version-check "/hark-system/$(basename "$wheel")"
    log "$release: scenario $1"
}
pypi_standin() {  # pip.conf: the cached index stands in for PyPI (no network here)
    printf '[global]\nno-index = true\nfind-links = /var/cache/hark-index\n' >"$m/etc/pip.conf"
}
step() {  # step WHAT CMD...: run it offline in the root; FAIL (and its output) when it fails
    local what=$1 t0=$SECONDS rc=0
    shift
    offline "$@" >"$S/step.log" 2>&1 || rc=$?
    sed 's/^/    | /' "$S/step.log"
    if [ $rc = 0 ]; then ok "$what ($((SECONDS - t0)) s)"; else fail "$what (exit $rc)"; fi
    return $rc
}
verify() { in_root_check verify "$@"; }  # verify OWNER VERSION: as the owner would
in_root_check() {  # in_root_check CHECK OWNER ...: in-root.sh, offline
    local rc=0
    offline bash /hark-system/in-root.sh "$@" >"$S/check.log" 2>&1 || rc=$?
    sed "s/^\(ok  \|FAIL\) /\1 $release: /" "$S/check.log"
    [ $rc = 0 ] || FAILS=$((FAILS + 1))
}
cost() {  # cost NAME SECONDS: what the install added to the root's disk
    local du=(du -mx --exclude=./boot/firmware --exclude=./hark-system --exclude=./home/pi/hark
        --exclude=./opt/harksim --exclude=./var/cache/apt --exclude=./var/log --exclude=./tmp)
    (cd "$S/u" && "${du[@]}" -d 3 . | sort -rn | sed -n '2,9s/^/    du MB | /p')
    echo "cost $release $1: $2 s under qemu-user, $(cd "$S/u" && "${du[@]}" -s . | cut -f1) MB on disk"
}
leftovers() {  # after --purge: any path of hark's in what this scenario wrote
    (cd "$S/u" && find . \( -path ./boot/firmware -o -path ./hark-system -o -path ./opt/harksim \
        -o -path ./home/pi/hark -o -path ./tmp \) -prune -o -iname '*hark*' -print)
}
done_scenario() { umount -R "$m"; rm -rf "$S/u" "$S/w"; }

# ----------------------------------------------------------------------------- first boot
scenario firstboot
pypi_standin
boot=$m/boot/firmware
mkdir -p "$boot/overlays"
printf 'dtparam=audio=on\narm_64bit=1\n' >"$boot/config.txt"
echo "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait quiet" >"$boot/cmdline.txt"
echo dtb >"$boot/bcm2710-rpi-zero-2-w.dtb"
echo overlays >"$boot/overlays/README"
if [ "$release" = bookworm ]; then
    echo "Raspberry Pi reference 2024-11-19" >"$boot/issue.txt"
else
    echo "Raspberry Pi reference 2025-11-24" >"$boot/issue.txt"
    printf 'instance_id: rpios-image\n' >"$boot/meta-data"
    printf '#cloud-config\n' >"$boot/user-data"
    printf 'network:\n  version: 2\n' >"$boot/network-config"
fi
py=$CHECKOUT/.venv/bin/python; [ -x "$py" ] || py=python3
# As the owner provisions a card: the wheel from this checkout.  (No --user: the root
# has no sshd to enable; the owner is Pi OS's first user, pi.)
if "$py" -m hark.provision "$boot" --config "$m/hark-system/hark.toml" --hostname "hark-$release" \
    --token-file "$m/hark-system/token" --wheel "$wheel" \
    --timezone Europe/London >"$S/provision.log" 2>&1; then
    ok "hark provision wrote the card (--wheel)"
else
    fail "hark provision: $(tail -n 3 "$S/provision.log")"
fi
t0=$SECONDS
if [ "$release" = bookworm ]; then
    # systemd.run= runs it once, before the network; then the Pi reboots.
    step "firstrun.sh (hostname, time zone, hark-firstboot.service)" bash /boot/firmware/firstrun.sh || true
else
    # cloud-init applies user-data (hostname, time zone) itself, then runs the runcmd.
    step "cloud-init runcmd: firstboot.sh --install-unit --start" \
        bash /boot/firmware/hark/firstboot.sh --install-unit --start || true
fi
[ -f "$m/etc/systemd/system/multi-user.target.wants/hark-firstboot.service" ] &&
    ok "hark-firstboot.service is enabled" || fail "hark-firstboot.service is not enabled"
t1=$SECONDS
# What hark-firstboot.service runs (ExecStart=/bin/bash …/firstboot.sh), as root, from /.
step "hark-firstboot.service: firstboot.sh" bash /boot/firmware/hark/firstboot.sh || true
t_install=$((SECONDS - t1))
sed 's/^/    card log | /' "$boot/hark-firstboot.log" 2>/dev/null || true
grep -q "done: hark is installed" "$boot/hark-firstboot.log" 2>/dev/null &&
    ok "the card's log says hark is installed" || fail "the card's log has no 'done'"
[ ! -e "$boot/hark/device-token" ] && ok "the token left the card" || fail "the token is still on the card"
[ -e "$m/var/lib/hark/firstboot.done" ] && ok "firstboot.done stamp" || fail "no firstboot.done stamp"
cost firstboot "$t_install"
verify pi "$version"
step "install-device --purge (the card's copy)" bash /boot/firmware/hark/scripts/install-device --purge || true
in_root_check purged pi
left=$(leftovers)
[ -z "$left" ] && ok "after --purge nothing named hark is left" || fail "left after --purge: $left"
echo "time firstboot-scenario $((SECONDS - t0)) s"
done_scenario

# ------------------------------------------------------------ a wheelhouse, then a checkout
scenario wheelhouse
t0=$SECONDS
[ ! -e "$m/etc/pip.conf" ] && ok "no pip.conf: nothing but the wheelhouse" || fail "a pip.conf is set"
mkdir -p "$m/hark-system/wheelhouse"
cp "$m"/var/cache/hark-wheelhouse/*.whl "$wheel" "$m/hark-system/wheelhouse/"
# The copy of install-device every wheel carries, on its own.
"$py" -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("hark/_install/install-device"))' \
    "$wheel" >"$m/hark-system/install-device"
t1=$SECONDS
step "sudo bash install-device (from the wheel) --wheelhouse, no index" bash -c "cd /home/pi && sudo bash /hark-system/install-device --wheelhouse /hark-system/wheelhouse --config /hark-system/hark.toml --token-file /hark-system/token </dev/null" || true
cost wheelhouse $((SECONDS - t1))
verify pi "$version"

# The owner's clone, pulled to a newer version, installed over it.  pip builds the wheel
# with setuptools from an index: the cached one stands in for PyPI.
pypi_standin
copy_checkout "$m/home/pi/hark"
bump_version "$m/home/pi/hark" post1
in_root "$m" chown -R pi:pi /home/pi/hark
# `sudo CMD` typed by the owner in the clone: root runs that sudo command there (a setuid
# sudo cannot run under qemu-user; see in-root.sh).
t1=$SECONDS
step "upgrade: sudo scripts/install-device from the owner's clone (hark $next_version)" \
    bash -c "cd /home/pi/hark && sudo scripts/install-device </dev/null" || true
echo "time upgrade-from-checkout $((SECONDS - t1)) s"
owned=$(in_root "$m" find /home/pi/hark \( -uid 0 -o -name build -o -name '*.egg-info' \) -print)
[ -z "$owned" ] && ok "the clone has no root-owned files, no build/ or egg-info" ||
    fail "left in the clone: $owned"
cmp -s "$m/etc/hark/hark.toml" "$m/hark-system/hark.toml" && [ -s "$m/etc/hark/device-token" ] &&
    ok "the upgrade kept the config and the token" || fail "the upgrade lost the config or token"
verify pi "$next_version"
step "sudo scripts/install-device --uninstall" \
    bash -c "cd /home/pi/hark && sudo scripts/install-device --uninstall </dev/null" || true
in_root_check removed pi
echo "time wheelhouse-scenario $((SECONDS - t0)) s"
done_scenario

# ------------------------------------------------- the optional extras: wheels only, offline
scenario extras
t1=$SECONDS
cp "$ROOTS/extras.py" "$m/hark-system/"
# "okay nabu" as espeak-ng says it, 16 kHz mono, made on the host (the root has no espeak).
espeak-ng -w "$S/wake.wav" "okay nabu" && sox "$S/wake.wav" -r 16000 -c 1 -b 16 -e signed "$m/hark-system/wake16.wav"
step "pip install hark-voice[device-wheels,webrtc,wake,frontend] livekit: wheels from the index, no compiler" \
    bash -c "python3 -m venv /opt/hark-extras && /opt/hark-extras/bin/pip install -q --no-index --find-links /var/cache/hark-index --disable-pip-version-check '/hark-system/$(basename "$wheel")[device-wheels,webrtc,wake,frontend]' livekit" || true
step "apt-get install libspeexdsp1 (install-device's optional package), from apt's cache" \
    bash -c "apt-get install -y -q --no-install-recommends libspeexdsp1 </dev/null" || true
cost extras $((SECONDS - t1))
step "the extras run: the wake word heard, a WebRTC offer and Opus, noise suppression, speex, AEC3" \
    /opt/hark-extras/bin/python /hark-system/extras.py /hark-system/wake16.wav || true
done_scenario

echo "$release: $FAILS failed"
[ "$FAILS" = 0 ]
