# shellcheck shell=bash
# The watchdog is enforced: a frozen daemon (SIGSTOP) is killed by systemd after
# WatchdogSec and started again, up to READY.
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_hark
pid=$(main_pid); r0=$(prop NRestarts); c=$(cursor); t0=$(date +%s)
kill -STOP "$pid"; note "froze pid $pid (WatchdogUSec=$(prop WatchdogUSec))"
wait_for 120 bash -c "[ \"\$(systemctl show -p MainPID --value hark.service)\" != $pid ]"
t_kill=$(( $(date +%s) - t0 ))
wait_for 120 systemctl is-active -q hark.service
t_up=$(( $(date +%s) - t0 ))
journal_since "$c" -u hark.service | grep -v -E 'hark\[[0-9]+\]: hark\.' | tail -n 12 | sed 's/^/  | /'
timeout=$(journal_since "$c" -u hark.service -o cat | grep -c 'Watchdog timeout' || true)
ok=0; [ "$timeout" -ge 1 ] && [ "$(main_pid)" != "$pid" ] && [ "$(main_pid)" != 0 ] && systemctl is-active -q hark.service && [ "$(prop NRestarts)" -gt "$r0" ] && ok=1
verdict watchdog-enforced "$ok" "watchdog timeout logged: $timeout, old process gone after ${t_kill} s, READY again after ${t_up} s, NRestarts $r0 -> $(prop NRestarts)"
kill -CONT "$pid" 2>/dev/null || true
finish
