# shellcheck shell=bash
# The watchdog is on and fed: WatchdogUSec set, and the last WATCHDOG=1 keeps moving
# while the daemon idles (systemd's own record of it), with no restart.
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_hark
pid=$(main_pid); r0=$(prop NRestarts); wd=$(prop WatchdogUSec)
a=$(prop WatchdogTimestampMonotonic); sleep 25; b=$(prop WatchdogTimestampMonotonic)
note "WatchdogUSec=$wd; last ping at $a then $b (us, monotonic)"
verdict watchdog-fed "$([ "$wd" != 0 ] && [ "$wd" != infinity ] && [ "$b" -gt "$a" ] && [ "$(main_pid)" = "$pid" ] && [ "$(prop NRestarts)" = "$r0" ] && echo 1)" \
  "WatchdogUSec=$wd, pinged again within 25 s: $([ "$b" -gt "$a" ] && echo yes || echo no), no restart"
finish
