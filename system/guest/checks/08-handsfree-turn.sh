# shellcheck shell=bash
# A hands-free turn: trigger.mode = "vad" (by reload), the question spoken with no
# button, the parrot's reply recorded and compared piece by piece.  Under emulation
# audio drops out now and then; the daemon must count such over- and underruns in
# the journal (a Pi that drops audio must not look healthy).
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_backend >/dev/null
ensure_hark
set_config 's/^mode = "button"/mode = "vad"/'
c=$(cursor); systemctl reload hark.service
reloaded() { hark_journal "$c" -o cat | grep -q -E ': config reloaded$' && hark_journal "$c" -o cat | grep -q -E 'session [^ ]+ active'; }
wait_for 90 reloaded || note "no 'config reloaded' and a new session within 90 s"
wait_for 30 bash -c 'systemctl show -p StatusText --value hark.service | grep -q "^idle"'
pid=$(main_pid)
question
turn() {   # turn N: one hands-free turn, its journal, the reply judged; returns the verdict
  local n=$1 prc
  c=$(cursor)
  record_speaker /tmp/reply-vad.wav 90
  nap 1
  echo "  .. attempt $n: speak at $(uptime_s)"; play_to_mic /tmp/q-lead.wav; echo "  .. spoken at $(uptime_s)"
  WAIT_STEP=1 wait_for 60 turn_done "$c" || note "no 'status: speaking' then idle within 60 s"
  nap 1; stop_recording
  cp /tmp/reply-vad.wav "$OUT/handsfree-reply-$n.wav"
  hark_journal "$c" | sed 's/^/  | /'
  out=$("$RIG_PY" $CHECKS/pieces.py /tmp/q.wav /tmp/reply-vad.wav); prc=$?
  echo "$out" | sed 's/^/  .. /'
  return $prc
}
# As in the button turn: one more attempt if emulation mangled the first, and said.
attempt=1; turn 1 || { attempt=2; sleep 2; turn 2; }; prc=$?
verdict handsfree-turn "$([ $prc = 0 ] && [ "$(main_pid)" = "$pid" ] && echo 1)" \
  "$(echo "$out" | head -n1)$([ $attempt = 2 ] && echo " (second attempt)")"
# The daemon's own count of dropouts: those the emulation caused by chance, and one
# made on purpose (the daemon frozen for 0.8 s while the card runs on: the capture
# overruns, the playback underruns).  Either way the journal must count them (a daemon
# may summarise them once a minute: up to 90 s are allowed).
natural=$(journalctl -b -u hark.service -q -o cat | grep -i -E 'xrun|overrun|overflow|underrun|underflow|dropout' | grep -E '[0-9]' | tail -n 3)
[ -z "$natural" ] || echo "$natural" | sed 's/^/  | (so far) /'
pid=$(main_pid); c=$(cursor)
kill -STOP "$pid"; sleep 0.8; kill -CONT "$pid"; note "froze pid $pid for 0.8 s at $(uptime_s)"
counted() { hark_journal "$c" -o cat | grep -i -E 'xrun|overrun|overflow|underrun|underflow|dropout' | grep -q -E '[0-9]'; }
wait_for 90 counted && seen=1 || seen=0
counts=$(hark_journal "$c" -o cat | grep -i -E 'xrun|overrun|overflow|underrun|underflow|dropout' | head -n 3)
echo "$counts" | sed 's/^/  | /'
note "STATUS: '$(prop StatusText)'"
verdict dropouts-logged "$seen" "$([ $seen = 1 ] && echo "counted within 90 s: $(echo "$counts" | head -n1)" || echo "no over/underrun count in hark's journal within 90 s of a 0.8 s freeze")"
finish
