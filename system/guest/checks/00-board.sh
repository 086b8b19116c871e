# shellcheck shell=bash
# The guest itself: Debian's kernel and systemd as PID 1, no network device, snd-aloop
# as the sound card, gpio-sim as the GPIO chip (from the rig); and /dev/gpiochip0
# reachable by hark's gpio group through a udev rule hark ships (Pi OS has one; plain
# Debian leaves the node root:root 0600).
# shellcheck source=lib.sh
. /share/checks/lib.sh
note "kernel $(uname -r); $(systemctl --version | head -1); PID 1 is $(cat /proc/1/comm)"
note "$(systemd-analyze time 2>/dev/null | head -1)"
systemd-analyze blame --no-pager 2>/dev/null | head -n 5 | sed "s/^/  .. slowest: /"
ifaces=
for i in /sys/class/net/*; do [ "${i##*/}" = lo ] || ifaces+="${i##*/} "; done
verdict board-no-network "$([ -z "$ifaces" ] && echo 1)" "network interfaces besides lo: ${ifaces:-none}"
card=$(sed -n 's/^ *0 \[\([^] ]*\) *\].*/\1/p' /proc/asound/cards)
verdict board-sound-card "$([ "$card" = Loopback ] && echo 1)" "card 0 is '${card:-none}' (snd-aloop)"
verdict board-gpio-chip "$([ -c /dev/gpiochip0 ] && [ -d "$GPIO_SYS/sim_gpio$BUTTON_LINE" ] && echo 1)" \
  "/dev/gpiochip0 from gpio-sim ($(modinfo -F filename gpio-sim 2>/dev/null))"
perm=$(stat -c '%U:%G %a' /dev/gpiochip0 2>/dev/null)
if [ -e /etc/hark-rig/no-product-gpio-rule ]; then
  fail gpio-udev-rule "hark installs no udev rule for /dev/gpiochip*; the rig put in its own (now $perm)"
else
  verdict gpio-udev-rule "$([ "$perm" = "root:gpio 660" ] && echo 1)" "/dev/gpiochip0 is $perm (want root:gpio 660, from hark's rule)"
fi
finish
