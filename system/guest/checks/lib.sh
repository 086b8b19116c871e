# Helpers for the checks inside the guest (sourced).  Each check prints one or more
# "PASS <name>: ..." / "FAIL <name>: ..." lines; the host collects them.
# shellcheck shell=bash disable=SC2034  # the names below are for the checks that source this
set -u
export SYSTEMD_PAGER='' SYSTEMD_COLORS=0 LC_ALL=C.UTF-8
RIG_PY=/opt/hark-rig/venv/bin/python
CHECKS=/share/checks
OUT=/share/out
MIC_FEED=plughw:0,1,0   # what is played here, hark's microphone (hw:0,0) hears
SPEAKER_TAP=plughw:0,1,0  # what hark plays on hw:0,0 is recorded here
GPIO_SYS=/sys/devices/platform/gpio-sim.0/gpiochip0
BUTTON_LINE=17
LED_LINE=25
FAILS=0

pass() { echo "PASS $1: ${*:2}"; }
fail() { echo "FAIL $1: ${*:2}"; FAILS=$((FAILS + 1)); }
verdict() { local n=$1 ok=$2; shift 2; if [ "$ok" = 1 ]; then pass "$n" "$@"; else fail "$n" "$@"; fi; }
note() { echo "  .. $*"; }
finish() { exit $(( FAILS > 0 )); }

prop() { systemctl show -p "$1" --value "${2:-hark.service}"; }
main_pid() { prop MainPID; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
now_us() { echo $(( $(date +%s%N) / 1000 )); }

cursor() { journalctl -n 0 --show-cursor -q 2>/dev/null | sed -n 's/^-- cursor: //p'; }
# journal_since CURSOR [journalctl args]: what was logged after CURSOR
journal_since() { local c=$1; shift; journalctl --after-cursor "$c" --no-pager -q -o short-monotonic "$@"; }
hark_journal() { journal_since "$1" -u hark.service "${@:2}"; }

# nap SECONDS: sleep without a fork (under emulation every fork costs the daemon CPU)
mkfifo /tmp/.nap 2>/dev/null; exec 7<>/tmp/.nap
nap() { read -r -t "$1" -u 7 || true; }
# wait_for SECONDS CMD...: poll CMD every ${WAIT_STEP:-0.5} s until it succeeds
wait_for() {
  local limit=$1; shift
  local end=$(( SECONDS + limit ))
  while [ "$SECONDS" -lt "$end" ]; do "$@" && return 0; nap "${WAIT_STEP:-0.5}"; done
  "$@"
}
# turn_done CURSOR: hark spoke since CURSOR and is idle again (STATUS first: cheaper)
turn_done() {
  local st; st=$(systemctl show -p StatusText --value hark.service)
  [ "${st%%;*}" = idle ] && hark_journal "$1" -o cat | grep -q 'status: speaking'
}

ensure_hark() {   # leave hark running (after a failed check) so later checks can run
  systemctl is-active -q hark.service && return 0
  note "hark.service is $(prop ActiveState); starting it"
  systemctl reset-failed hark.service 2>/dev/null || true
  timeout 120 systemctl start hark.service || note "start failed: $(prop Result)"
}

backend_up() {   # GET /healthz answers 200 (bash's /dev/tcp: a Python per poll is slow here)
  local line
  { exec 3<>/dev/tcp/127.0.0.1/8080; } 2>/dev/null || return 1
  printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  read -r -t 10 line <&3; exec 3>&-
  [[ $line == *" 200 "* ]]
}

ensure_backend() {
  systemctl start rig-sim.service rig-backend.service
  wait_for 240 backend_up || note "hark-backend is not answering on 127.0.0.1:8080"
}

linked_since() {   # linked_since CURSOR: the link reported an active session after CURSOR
  hark_journal "$1" | grep -q -E 'session [^ ]+ active'
}

# The fds of a process, one target a line (sound and GPIO nodes are what we look for).
fds_of() { ls -l "/proc/$1/fd" 2>/dev/null | sed -n 's/.* -> //p'; }

set_config() {   # set_config SED-EXPR: edit /etc/hark/hark.toml in place (keeps owner/mode)
  sed -i "$1" /etc/hark/hark.toml
}

QUESTION="What time is it in the kitchen, and is the oven still on?"
question() {   # /tmp/q.wav: the question; /tmp/q-lead.wav: the same after 1 s of silence
  [ -s /tmp/q-lead.wav ] && return 0
  espeak-ng -s 150 -w /tmp/q.wav "$QUESTION"
  sox /tmp/q.wav /tmp/q-lead.wav pad 1.0 0
}
# The test's own players get big buffers and real-time priority, so that what starves
# under emulation is hark, not the tools that stand in for the room.
play_to_mic() { chrt -f 50 aplay -q -D "$MIC_FEED" --buffer-time=500000 "$1"; }
record_speaker() {   # record_speaker FILE SECONDS: in the background, REC its pid (arecord's own)
  chrt -f 50 arecord -q -D "$SPEAKER_TAP" -f S16_LE -r 48000 -c 1 --buffer-time=1000000 -d "$2" "$1" &
  REC=$!
}
stop_recording() { kill -TERM "$REC" 2>/dev/null; wait "$REC" 2>/dev/null || true; }
mic_feed_running() { grep -q 'state: RUNNING' /proc/asound/card0/pcm1p/sub0/status 2>/dev/null; }

press() { echo pull-down > "$GPIO_SYS/sim_gpio$BUTTON_LINE/pull"; }
release() { echo pull-up > "$GPIO_SYS/sim_gpio$BUTTON_LINE/pull"; }

# first_at CURSOR REGEX: monotonic seconds of the first line in hark's journal (systemd's
# lines about the unit included) after CURSOR that matches, or nothing.
first_at() { hark_journal "$1" | grep -m1 -E -- "$2" | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
# before A B: A and B are set and A <= B (seconds)
before() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
OPENED_MIC=': microphone\b.*: \[[0-9]+\] .* at [0-9]+ Hz'
OPENED_SPK=': speaker\b.*: \[[0-9]+\] .* at [0-9]+ Hz'
