#!/usr/bin/env bash
# measure.sh RELEASE [REV]: what `sudo scripts/install-device` from a checkout at git
# revision REV (default HEAD) costs on a fresh arm64 root of RELEASE: wall time under
# qemu-user and MB added to the disk.  Uses the network (Debian's mirror, PyPI) like a
# Pi would, so run it when comparing revisions, not in the checks.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
if [ -z "${HARK_IN_NS:-}" ]; then
    exec unshare -m --propagation private env HARK_IN_NS=1 "$0" "$@"
fi
release=$1 rev=${2:-HEAD}
base=$CACHE/roots/$release-base-$(key "$SYSTEM_DIR/roots/debootstrap.sh" "$release")
[ -d "$base" ] || die "no base root for $release yet: system/roots/run build $release"
work=$(mktemp -d "$CACHE/tmp.measure.XXXXXX")
trap 'umount -R "$work/m" 2>/dev/null; rm -rf "$work"' EXIT
overlay "$work/m" "$work/u" "$work/w" "$base"
m=$work/m
mount_chroot "$m"
cp /etc/ssl/certs/ca-certificates.crt "$m/tmp/host-ca.crt"
cp /etc/resolv.conf "$m/etc/resolv.conf"
mkdir -p "$m/opt/src"
git -C "$CHECKOUT" archive "$rev" | tar -x -C "$m/opt/src"
printf '[backend]\nurl = "https://keys.example.com/v1/realtime/client_secrets"\n' >"$m/tmp/hark.toml"
echo tok >"$m/tmp/token"
t0=$SECONDS
in_root "$m" SSL_CERT_FILE=/tmp/host-ca.crt PIP_CERT=/tmp/host-ca.crt \
    bash /opt/src/scripts/install-device --source /opt/src --config /tmp/hark.toml --token-file /tmp/token \
    >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log"; die "install failed"; }
secs=$((SECONDS - t0))
mb=$(du -smx --exclude=./opt/src --exclude=./tmp --exclude=./var/cache/apt \
    --exclude=./var/lib/apt/lists --exclude=./var/log "$work/u" | cut -f1)
apt=$(grep -o 'installing Debian packages: .*' "$work/install.log" || echo "no Debian packages")
echo "measure $release $(git -C "$CHECKOUT" rev-parse --short "$rev"): $secs s, $mb MB; $apt"
