# shellcheck shell=bash
# The sound card vanishes (its driver unbound, as a USB card pulled out) and comes back:
# hark stays up (same process, no restart), says so, and reopens both streams.
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_hark
pid=$(main_pid); r0=$(prop NRestarts)
dev=$(basename "$(readlink -f /sys/class/sound/card0/device)")
drv=/sys/bus/platform/drivers/snd_aloop
c=$(cursor)
echo "  .. unbind $dev at $(uptime_s)"; echo "$dev" > $drv/unbind
lost() { hark_journal "$c" -o cat | grep -q -E ': (microphone|speaker)\b.*(lost|unavailable)'; }
wait_for 60 lost && saw_lost=1 || saw_lost=0
sleep 5
up_while_gone=0; [ "$(main_pid)" = "$pid" ] && systemctl is-active -q hark.service && up_while_gone=1
note "while gone: STATUS '$(prop StatusText)'"
echo "  .. bind $dev at $(uptime_s)"; echo "$dev" > $drv/bind
t0=$(date +%s)
reopened() { local f; f=$(fds_of "$pid"); grep -q '^/dev/snd/pcmC0D0c' <<< "$f" && grep -q '^/dev/snd/pcmC0D0p' <<< "$f" \
  && grep -q 'state: RUNNING' /proc/asound/card0/pcm0c/sub0/status 2>/dev/null; }
wait_for 120 reopened && back=1 || back=0
took=$(( $(date +%s) - t0 ))
sleep 2
hark_journal "$c" | tail -n 16 | sed 's/^/  | /'
verdict card-vanish "$([ $saw_lost$up_while_gone$back = 111 ] && [ "$(main_pid)" = "$pid" ] && [ "$(prop NRestarts)" = "$r0" ] && echo 1)" \
  "loss logged: $saw_lost, up while gone: $up_while_gone, both streams back: $([ $back = 1 ] && echo "after ${took} s" || echo no), same process: $([ "$(main_pid)" = "$pid" ] && echo yes || echo no)"
# Once both streams are back, STATUS must not keep the loss as if it were current.
sleep 3; status=$(prop StatusText)
ok=1; case "$status" in *error*|*lost*|*"no audio"*|*unavailable*) ok=0 ;; esac
verdict status-after-card-back "$ok" "STATUS with the card back: '$status'"
ensure_hark
finish
