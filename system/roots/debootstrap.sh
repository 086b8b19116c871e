#!/usr/bin/env bash
# debootstrap.sh RELEASE DIR: an arm64 Debian root with what Raspberry Pi OS Lite has
# that hark's install relies on (python3, venv, sudo, systemd, CA certificates), and
# no compilers.  The slowest stage (6-10 min under qemu-user): cached by its own hash.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
release=$1 dir=$2
BASE_PACKAGES=python3,python3-venv,sudo,systemd,ca-certificates,adduser
need_arm64
rm -rf "$dir.tmp"
log "debootstrap $release arm64 into $dir (minbase + $BASE_PACKAGES)"
debootstrap --arch=arm64 --variant=minbase --include="$BASE_PACKAGES" \
    "$release" "$dir.tmp" "$MIRROR" >&2
# debootstrap leaves its own package cache; a Pi OS card has none.
rm -f "$dir.tmp"/var/cache/apt/archives/*.deb
mv "$dir.tmp" "$dir"
