# shellcheck shell=bash
# A held-button turn: press (gpio-sim pulls line 17 low), the question into the
# microphone, release; hark-sim's parrot answers with the question's own audio; the
# speaker's side of the loopback is recorded and compared piece by piece.  The LED
# (line 25) must change during the turn.  The turn's journal is printed.
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_backend >/dev/null
ensure_hark
if ! grep -q '^mode = "button"' /etc/hark/hark.toml; then   # run on its own after 08
  set_config 's/^mode = ".*"/mode = "button"/'; c=$(cursor); systemctl reload hark.service
  wait_for 90 bash -c "journalctl --after-cursor '$c' -u hark.service -q -o cat | grep -q -E ': config reloaded$'"
fi
wait_for 60 bash -c 'systemctl show -p StatusText --value hark.service | grep -q "^idle"' || note "STATUS is '$(prop StatusText)', not idle"
question
note "question: $(soxi -D /tmp/q.wav) s at $(soxi -r /tmp/q.wav) Hz, played after 1 s of silence"
pid=$(main_pid)
L=$GPIO_SYS/sim_gpio$LED_LINE
( for _ in $(seq 1 900); do read -r v < $L/value; echo "$v"; nap 0.2; done ) > /tmp/led.txt 2>/dev/null & LEDW=$!
turn() {   # turn N: one held-button turn, its journal, the reply judged; returns the verdict
  local n=$1 prc
  c=$(cursor)
  record_speaker /tmp/reply.wav 90
  nap 1
  # A person presses, then speaks: the player already runs (its silent lead-in) when the
  # button goes down, so the voice comes well within long_press_s (a silent hold cancels).
  play_to_mic /tmp/q-lead.wav & PLAY=$!
  wait_for 10 mic_feed_running
  echo "  .. attempt $n: press at $(uptime_s)"; press
  wait $PLAY
  nap 0.4
  echo "  .. release at $(uptime_s)"; release
  WAIT_STEP=1 wait_for 60 turn_done "$c" || note "no 'status: speaking' then idle within 60 s"
  nap 1; stop_recording
  cp /tmp/q.wav $OUT/button-question.wav; cp /tmp/reply.wav "$OUT/button-reply-$n.wav"
  echo "  .. the guest's journal for this turn (hark.service):"
  hark_journal "$c" | sed 's/^/  | /'
  hark_journal "$c" > "$OUT/button-turn-$n.journal"
  out=$("$RIG_PY" $CHECKS/pieces.py /tmp/q.wav /tmp/reply.wav); prc=$?
  echo "$out" | sed 's/^/  .. /'
  return $prc
}
# Under emulation a starved guest can mangle one turn's audio past judging; a second
# turn is allowed, and said.  A turn that does not work fails both.
attempt=1; turn 1 || { attempt=2; turn 2; }; prc=$?
kill $LEDW 2>/dev/null; wait $LEDW 2>/dev/null
verdict button-turn "$([ $prc = 0 ] && [ "$(main_pid)" = "$pid" ] && echo 1)" \
  "$(echo "$out" | head -n1)$([ $attempt = 2 ] && echo " (second attempt)")"
led=$(sort -u /tmp/led.txt | tr '\n' ' ')
verdict led "$([ "$(sort -u /tmp/led.txt | wc -l)" -ge 2 ] && echo 1)" "LED line $LED_LINE took values: ${led:-none}"
finish
