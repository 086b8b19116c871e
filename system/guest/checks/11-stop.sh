# shellcheck shell=bash
# A clean stop: `systemctl stop` within TimeoutStopSec, exit 0, nothing killed.
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_hark
c=$(cursor); t0=$(now_us)
timeout 60 systemctl stop hark.service; rc=$?
took=$(( ($(now_us) - t0) / 1000 ))
journal_since "$c" -u hark.service | tail -n 8 | sed 's/^/  | /'
killed=$(journal_since "$c" -u hark.service -o cat | grep -c -i -E 'timed out|Killing|SIGKILL|core-dump' || true)
res="$(prop Result) $(prop ExecMainCode)/$(prop ExecMainStatus)"
verdict stop "$([ "$rc" = 0 ] && [ "$killed" = 0 ] && [ "$res" = "success 1/0" ] && echo 1)" \
  "rc=$rc in $took ms, Result/code/status: $res, kill or timeout lines: $killed"
finish
