# shellcheck shell=bash
# Started at boot (enabled by install-device) while hark-backend was not up yet: hark
# must be running (READY, not failed, not restarting), and once the backend comes up it
# connects by itself, without a restart.
# shellcheck source=lib.sh
. /share/checks/lib.sh
note "hark.service: $(prop ActiveState)/$(prop SubState), enabled: $(systemctl is-enabled hark.service), NRestarts=$(prop NRestarts)"
journalctl -b -u hark.service --no-pager -q -o short-monotonic | head -n 25 | sed 's/^/  | /'
pid=$(main_pid); restarts=$(prop NRestarts)
active=$(systemctl is-active hark.service || true)
started=$(journalctl -b -u hark.service -q -o cat | grep -c -E '^Started hark' || true)
backend_state=$(systemctl is-active rig-backend.service || true)
bootlog() { journalctl -b -u hark.service -q -o short-monotonic | grep -m1 -E -- "$1" | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
note "at boot: READY at $(bootlog 'systemd\[1\]: Started hark') s, microphone open at $(bootlog "$OPENED_MIC") s, speaker open at $(bootlog "$OPENED_SPK") s"
verdict boot-start "$([ "$active" = active ] && [ "$started" -ge 1 ] && [ "$restarts" = 0 ] && [ "$backend_state" != active ] && echo 1)" \
  "at boot with no backend ($backend_state): $active, READY ${started}x, NRestarts=$restarts, STATUS '$(prop StatusText)'"
note "starting hark-sim and hark-backend"
c=$(cursor)
ensure_backend
t0=$(date +%s)
if wait_for 120 linked_since "$c"; then linked=1; else linked=0; fi
took=$(( $(date +%s) - t0 ))
hark_journal "$c" | tail -n 12 | sed 's/^/  | /'
same=0; [ "$(main_pid)" = "$pid" ] && [ "$(prop NRestarts)" = "$restarts" ] && [ "$pid" != 0 ] && same=1
verdict boot-connects-later "$([ "$linked" = 1 ] && [ "$same" = 1 ] && echo 1)" \
  "backend up -> session active: $([ $linked = 1 ] && echo "after ${took} s" || echo "no"); same process: $([ $same = 1 ] && echo yes || echo "no (pid $pid -> $(main_pid), NRestarts $restarts -> $(prop NRestarts))")"
ensure_hark
finish
