#!/usr/bin/env bash
# prep.sh RELEASE BASE OUT WHEEL: the layer every check starts from, on top of the
# debootstrap root (an overlay upper dir, OUT).  Needs the network (Debian's mirror, PyPI);
# the checks after it need none.
#   - Raspberry Pi OS Lite's groups and its first user `pi` (uid 1000, sudo), hostname
#   - fresh apt lists, and the .deb files hark's install asks for, downloaded (not
#     installed): apt then installs them with no network, from its own cache
#   - /var/cache/hark-index: a stand-in for PyPI (every wheel a hark install, a checkout
#     build and hark-sim fetch), for pip.conf's find-links in the checks; fetched by this
#     host's pip for aarch64 and the root's Python (native speed, not emulated)
#   - /var/cache/hark-wheelhouse: docs/provisioning.md's wheelhouse recipe, run as on a Pi
#   - /opt/harksim: a venv with hark-sim's dependencies (the check adds hark itself)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
release=$1 base=$2 out=$3 wheel=$4
if [ -z "${HARK_IN_NS:-}" ]; then   # every mount below vanishes with this namespace
    exec unshare -m --propagation private env HARK_IN_NS=1 "$0" "$@"
fi
work=$(mktemp -d "$CACHE/tmp.prep.XXXXXX")
trap 'umount -R "$work/m" 2>/dev/null; rm -rf "$work"' EXIT
rm -rf "$out.tmp"
overlay "$work/m" "$out.tmp" "$work/w" "$base"
m=$work/m
mount_chroot "$m"
cp /etc/ssl/certs/ca-certificates.crt "$m/tmp/host-ca.crt"   # what this host trusts
cp /etc/resolv.conf "$m/etc/resolv.conf"
net=(SSL_CERT_FILE=/tmp/host-ca.crt PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1)

log "$release: Pi OS Lite's groups, its first user (pi), hostname"
in_root "$m" sh -euc '
    for g in gpio i2c spi netdev render input plugdev; do
        getent group $g >/dev/null || groupadd --system $g
    done
    useradd -m -u 1000 -s /bin/bash \
        -G users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo pi
    echo "pi ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/010_pi-nopasswd
    chmod 440 /etc/sudoers.d/010_pi-nopasswd
    echo raspberrypi >/etc/hostname
    printf "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n" >/etc/hosts
    mkdir -p /boot/firmware'

log "$release: apt lists and the .deb files hark installs (downloaded only)"
in_root "$m" apt-get update -q >&2
# scripts/install-device's packages (python3-lgpio is Pi OS's only), first boot's too.
in_root "$m" apt-get install -y -q --download-only --no-install-recommends \
    python3-pyaudio python3-systemd alsa-utils espeak-ng libspeexdsp1 >&2

log "$release: the stand-in package index (fetched by this host's pip, for aarch64)"
cp "$wheel" "$m/tmp/"
w=/tmp/$(basename "$wheel")
pyver=$(in_root "$m" python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
glibc=$(in_root "$m" sh -c 'ldd --version | head -n1 | grep -o "[0-9.]*$"')
platforms=(--platform manylinux2014_aarch64)
for minor in $(seq 17 "${glibc#2.}"); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
hostpy=$CHECKOUT/.venv/bin/python; [ -x "$hostpy" ] || hostpy=python3
fetch=("$hostpy" -m pip download -q --disable-pip-version-check --only-binary=:all:
    --implementation cp --python-version "$pyver" "${platforms[@]}" -d "$m/var/cache/hark-index")
"${fetch[@]}" "${wheel}[device-wheels,sim,webrtc,wake,frontend]" "setuptools>=68" wheel >&2
# [frontend] echo_cancel = "webrtc": WebRTC's AEC3 through livekit (docs/audio.md).
"${fetch[@]}" livekit >&2
# lgpio has aarch64 wheels up to Python 3.12: Trixie (3.13) gets none (install-device says so).
"${fetch[@]}" "lgpio>=0.2.2" >&2 || log "$release: no lgpio wheel for Python $pyver"
rm -f "$m"/var/cache/hark-index/hark_voice-*.whl
log "$release: docs/provisioning.md's wheelhouse recipe, hark-sim's venv"
# The wheelhouse recipe of docs/provisioning.md, word for word, with this Python's pip.
mkdir -p "$m/var/cache/hark-wheelhouse"
sed -n '/<!-- wheelhouse-recipe -->/,/<!-- \/wheelhouse-recipe -->/p' \
    "$CHECKOUT/docs/provisioning.md" | sed -n '/^ *```sh$/,/^ *```$/p' | sed '1d;$d' >"$m/tmp/recipe.sh"
[ -s "$m/tmp/recipe.sh" ] || die "no wheelhouse recipe in docs/provisioning.md"
in_root "$m" "${net[@]}" bash -euxc "mkdir /tmp/r && cd /tmp/r && cp $w . && . /tmp/recipe.sh && mv wheelhouse/* /var/cache/hark-wheelhouse/" >&2
rm -f "$m"/var/cache/hark-wheelhouse/hark_voice-*.whl   # each check brings its own
in_root "$m" python3 -m venv /opt/harksim
in_root "$m" /opt/harksim/bin/pip install -q --no-index --find-links /var/cache/hark-index \
    --disable-pip-version-check "${w}[sim]" >&2
in_root "$m" /opt/harksim/bin/pip uninstall -q -y hark-voice >&2
rm -rf "$m/tmp/"* "$m/root/.cache"
: >"$m/etc/resolv.conf"
umount -R "$m"
mv "$out.tmp" "$out"
