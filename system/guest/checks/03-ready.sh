# shellcheck shell=bash
# READY only after the microphone, the speaker and the GPIO are open: `systemctl start`
# returns when systemd got READY=1, so hark must already hold the PCM and GPIO nodes
# then; and in the journal the streams' "open" lines come before systemd's "Started".
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_backend >/dev/null
systemctl stop hark.service
c=$(cursor)
timeout 120 systemctl start hark.service; rc=$?
pid=$(main_pid)
fds=$(fds_of "$pid")   # the very moment after READY
cap=0; play=0; gpio=0
grep -q '^/dev/snd/pcmC0D0c' <<< "$fds" && cap=1
grep -q '^/dev/snd/pcmC0D0p' <<< "$fds" && play=1
grep -q -E '^/dev/gpiochip0|^anon_inode:gpio' <<< "$fds" && gpio=1
note "start rc=$rc; at READY pid $pid holds: capture=$cap playback=$play gpio=$gpio"
sleep 8
hark_journal "$c" | head -n 20 | sed 's/^/  | /'
# journal order: READY (systemd's "Started") after both streams' "open" lines
t_ready=$(first_at "$c" 'systemd\[1\]: Started hark'); t_mic=$(first_at "$c" "$OPENED_MIC"); t_spk=$(first_at "$c" "$OPENED_SPK")
order="READY at ${t_ready:-never} s, microphone open at ${t_mic:-never} s, speaker open at ${t_spk:-never} s"
in_order=0; before "$t_mic" "$t_ready" && before "$t_spk" "$t_ready" && in_order=1
verdict ready-after-devices "$([ "$rc" = 0 ] && [ $cap$play$gpio = 111 ] && [ $in_order = 1 ] && echo 1)" \
  "held at READY: capture=$cap playback=$play gpio=$gpio; journal: $order"
ensure_hark
finish
