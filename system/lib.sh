# Shared by system/run, system/roots/* and system/guest/*: the cache, input hashes,
# host tools, chroot mounts.  Sourced, never run.  Needs root (debootstrap, chroot, mounts).
# shellcheck shell=bash disable=SC2034  # CACHE, MIRROR, ROOT_ENV: for the scripts that source it

SYSTEM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(dirname "$SYSTEM_DIR")
# Outside the clone: a fresh clone reuses what an earlier run built.
CACHE=${HARK_SYSTEM_CACHE:-/var/cache/hark-system}
MIRROR=${HARK_SYSTEM_MIRROR:-http://deb.debian.org/debian}
# qemu-user's default CPU emulates pointer authentication slowly (Trixie ~4x slower).
export QEMU_CPU=${QEMU_CPU:-cortex-a72}
export LC_ALL=C.UTF-8

log() { printf '%s system: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# key FILE... STRING...: a short hash of these inputs (files by content, the rest as text).
key() {
    local a
    for a in "$@"; do
        if [ -f "$a" ]; then sha256sum <"$a"; else printf '%s\n' "$a"; fi
    done | sha256sum | cut -c1-16
}

# need_packages CMD:PKG...: install the Debian packages whose command is missing.
need_packages() {
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || [ -e "${pair%%:*}" ] || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: run as root so they can be installed"
    log "installing host packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# Run arm64 binaries: qemu-user through binfmt_misc (F flag: works inside chroots).
need_arm64() {
    need_packages debootstrap:debootstrap qemu-aarch64-static:qemu-user-static \
        update-binfmts:binfmt-support unshare:util-linux ip:iproute2
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >&2 ||
        die "cannot register qemu-aarch64 with binfmt_misc"
}

# mount_chroot DIR / umount_chroot DIR: the kernel file systems a chroot needs.
mount_chroot() {
    local d=$1
    mountpoint -q "$d/proc" || mount -t proc proc "$d/proc"
    mountpoint -q "$d/sys" || mount -t sysfs sys "$d/sys"
    mountpoint -q "$d/dev" || mount --bind /dev "$d/dev"
    mountpoint -q "$d/dev/pts" || mount -t devpts -o newinstance devpts "$d/dev/pts"
}
umount_chroot() {
    local d=$1 m
    for m in dev/pts dev sys proc; do
        ! mountpoint -q "$d/$m" || umount -l "$d/$m"
    done
}

# in_root DIR CMD...: run CMD in the chroot with a clean environment (the host's pip and
# proxy settings mean nothing there).  Extra VAR=value words may precede CMD.
ROOT_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    LC_ALL=C.UTF-8 TERM=dumb QEMU_CPU="$QEMU_CPU" DEBIAN_FRONTEND=noninteractive)
in_root() {
    local d=$1; shift
    chroot "$d" /usr/bin/env -i "${ROOT_ENV[@]}" "$@"
}

# overlay MERGED UPPER WORK LOWER...: a writable view of LOWER (topmost first) into UPPER.
overlay() {
    local merged=$1 upper=$2 work=$3 lower; shift 3
    lower=$(IFS=:; echo "$*")
    mkdir -p "$merged" "$upper" "$work"
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
}

# copy_checkout DIR: this checkout's files (tracked and new, not ignored) into DIR.
copy_checkout() {
    mkdir -p "$1"
    (cd "$CHECKOUT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
        tar -xf - -C "$1"
}

# bump_version DIR SUFFIX: make the checkout copy in DIR version VERSION.SUFFIX (an upgrade).
bump_version() {
    sed -i "s/^version = \"\(.*\)\"/version = \"\1.$2\"/" "$1/pyproject.toml"
    sed -i "s/^__version__ = \"\(.*\)\"/__version__ = \"\1.$2\"/" "$1/device/hark/__init__.py"
}

# hark_wheel OUTDIR: this checkout's wheel, built from a copy of its files (no stale
# build/ or egg-info can leak in, and the checkout stays untouched).
hark_wheel() {
    local out=$1 tmp py
    tmp=$(mktemp -d)
    copy_checkout "$tmp/src"
    py=$CHECKOUT/.venv/bin/python; [ -x "$py" ] || py=python3
    "$py" -m pip wheel -q --no-deps -w "$out" "$tmp/src" >&2
    rm -rf "$tmp"
    ls "$out"/hark_voice-*.whl
}
