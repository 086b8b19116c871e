#!/bin/bash
# Runs inside the chroot on the per-run layer: the rig's side of the guest (the board
# stand-ins and the services that drive the checks).  Cheap, so not in the cached base.
set -euxo pipefail
IN=/in/guest
printf 'snd-aloop\ngpio-sim\n' > /etc/modules-load.d/hark-rig.conf
echo "options snd-aloop index=0 pcm_substreams=2" > /etc/modprobe.d/hark-rig.conf
install -d /etc/hark-rig /var/lib/hark-rig
echo sk-sim > /etc/hark-rig/openai-key; chmod 600 /etc/hark-rig/openai-key
# gpiozero reads the board revision from /proc/cpuinfo: this PC says it is a Pi 4.
{ grep -v -E '^(Hardware|Revision|Serial|Model)' /proc/cpuinfo || true
  printf 'Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000deadbeef\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
} > /etc/hark-rig/cpuinfo-pi4
install -D -m 644 $IN/50-rig-board.conf /etc/systemd/system/hark.service.d/50-rig-board.conf
install -m 644 $IN/99-rig-gpiochip.rules /etc/hark-rig/
install -D -m 755 $IN/rig-agent /usr/local/sbin/rig-agent
install -D -m 755 $IN/rig-gpiochip /usr/local/sbin/rig-gpiochip
install -m 644 $IN/rig-agent.service $IN/rig-gpiochip.service $IN/rig-sim.service \
  $IN/rig-backend.service /etc/systemd/system/
systemctl enable rig-agent.service rig-gpiochip.service
