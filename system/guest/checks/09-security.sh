# shellcheck shell=bash
# The unit's sandbox as systemd itself scores it, online (the unit as loaded, with the
# rig's drop-in): at most 2.0.
# shellcheck source=lib.sh
. /share/checks/lib.sh
out=$(systemd-analyze security hark.service --no-pager 2>&1)
echo "$out" | grep -E '^✗' | head -n 12 | sed 's/^/  | /'
score=$(echo "$out" | sed -n 's/.*Overall exposure level for hark.service: \([0-9.]*\).*/\1/p')
ok=$(awk -v s="${score:-99}" 'BEGIN { print (s <= 2.0) ? 1 : 0 }')
verdict security "$ok" "systemd-analyze security hark: ${score:-no score} (want <= 2.0)"
finish
