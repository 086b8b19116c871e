# shellcheck shell=bash
# `systemctl reload` as systemd reports it.  Good config: exit 0, and the new config is
# in force when systemctl returns.  Bad config: refused, the old one kept, no restart,
# and the refusal visible where systemd shows it: a non-zero exit of `systemctl reload`
# and the journal.  (systemd >= 253 has Type=notify-reload for this; on 252,
# Bookworm's, an ExecReload= that waits for the outcome gives the same.)
# shellcheck source=lib.sh
. /share/checks/lib.sh
ensure_hark
sdver=$(systemctl --version | awk 'NR==1 {print $2}')
note "systemd $sdver; hark.service Type=$(prop Type), ExecReload: $(prop ExecReload | sed 's/.*argv\[\]=\([^;]*\);.*/\1/')"
pid=$(main_pid); r0=$(prop NRestarts)
cp -p /etc/hark/hark.toml /tmp/good.toml

reload() {   # reload LABEL: systemctl reload, timed; sets rc, took_ms, c (cursor before), t_ret (us)
  c=$(cursor); local t0; t0=$(now_us)
  timeout 120 systemctl reload hark.service; rc=$?
  t_ret=$(now_us); took_ms=$(( (t_ret - t0) / 1000 ))
  note "$1: systemctl reload rc=$rc after $took_ms ms"
}
# --- a good change
set_config 's/^instructions = "\(.*\)"$/instructions = "\1 Be brief."/'
reload good
held=$(fds_of "$(main_pid)")   # the moment systemctl returned: the reopened streams must be there
streams=0; grep -q '^/dev/snd/pcmC0D0c' <<< "$held" && grep -q '^/dev/snd/pcmC0D0p' <<< "$held" && streams=1
reloaded() { hark_journal "$c" -o cat | grep -q -E ': config reloaded$'; }
wait_for 120 reloaded
wait_for 60 systemctl is-active -q hark.service
sleep 5
hark_journal "$c" | grep -v -E '^ ' | tail -n 12 | sed 's/^/  | /'
# Done when systemd says so ("Reloaded", the end of the reload job): by then the new
# config is in force and the streams it reopened are open (journal order, not the
# shell's clock: systemctl itself can take seconds to return here).
t_job=$(first_at "$c" 'systemd\[1\]: Reloaded hark'); t_done=$(first_at "$c" ': config reloaded$')
t_mic=$(first_at "$c" "$OPENED_MIC"); t_spk=$(first_at "$c" "$OPENED_SPK")
order="systemd's Reloaded at ${t_job:-never} s, config reloaded at ${t_done:-never} s"
in_order=0
if [ -n "$t_mic$t_spk" ]; then
  order="$order, microphone open at ${t_mic:-never} s, speaker open at ${t_spk:-never} s"
  before "$t_done" "$t_job" && before "$t_mic" "$t_job" && before "$t_spk" "$t_job" && in_order=1
else
  order="$order, streams held when systemctl returned: $streams"
  before "$t_done" "$t_job" && [ "$streams" = 1 ] && in_order=1
fi
crashed=$(hark_journal "$c" -o cat | grep -E 'crashed|did not stop in time|Traceback' | head -n 2 | tr '\n' ' ')
ok=0; [ "$rc" = 0 ] && [ $in_order = 1 ] && [ -z "$crashed" ] && [ "$(main_pid)" = "$pid" ] && [ "$(prop NRestarts)" = "$r0" ] && ok=1
verdict reload-good "$ok" "rc=$rc; $order; same process: $([ "$(main_pid)" = "$pid" ] && echo yes || echo no)${crashed:+; during the reload: $crashed}"

# --- a broken file
cp -p /etc/hark/hark.toml /tmp/before-bad.toml
sed -i '1i bogus_key = 1' /etc/hark/hark.toml
reload refused
sleep 5
status=$(prop StatusText)
refused_log=$(hark_journal "$c" | grep -i -E 'refused|bogus_key' | head -n 3)
echo "$refused_log" | sed 's/^/  | /'
ok=1; why=""
[ "$(main_pid)" = "$pid" ] && [ "$(prop NRestarts)" = "$r0" ] && systemctl is-active -q hark.service || { ok=0; why="$why; the daemon did not stay up"; }
grep -q -i 'bogus_key' <<< "$refused_log" || { ok=0; why="$why; the journal does not name the problem"; }
[ "$rc" != 0 ] || { ok=0; why="$why; systemctl reload returned 0"; }
verdict reload-refused "$ok" "rc=$rc, journal: $(grep -c . <<< "$refused_log") line(s) naming it, same process${why}"
note "STATUS after the refused reload: '$status'"
cp -p /tmp/before-bad.toml /etc/hark/hark.toml
systemctl reload hark.service || true
sleep 3
ensure_hark
finish
