#!/bin/bash
# Runs inside the chroot (on the per-run layer over the cached base): installs this
# run's hark the way an owner would, `scripts/install-device --wheel`, and puts the
# same wheel's hark-backend and hark-sim into the rig's venv.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
IN=/in
WHEEL=$(ls $IN/dist/*.whl)

# The rig's side: backend and simulator from the same wheel, a registered device.
/opt/hark-rig/venv/bin/pip install -q --disable-pip-version-check "${WHEEL}[backend,sim]"
/opt/hark-rig/venv/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall "$WHEEL"
rm -f /var/lib/hark-rig/devices.db
/opt/hark-rig/venv/bin/hark-backend device add hark-guest --db sqlite:////var/lib/hark-rig/devices.db \
  | tail -n1 > /tmp/device-token
grep -q . /tmp/device-token

# The device: exactly the documented install, from the checkout, with its wheel.
echo "== install-device --wheel"
t0=$(date +%s)
$IN/src/scripts/install-device --wheel "$WHEEL" --config $IN/guest/hark.toml --token-file /tmp/device-token
echo "== install-device took $(( $(date +%s) - t0 )) s"
rm -f /tmp/device-token
systemctl is-enabled hark.service

# Does hark ship a udev rule that gives /dev/gpiochip* to group gpio?  If not, the rig
# adds one so the other checks can run, and the checks report the missing rule.
if grep -l -s -E 'GROUP:?="gpio"' /etc/udev/rules.d/*.rules /lib/udev/rules.d/*.rules /usr/lib/udev/rules.d/*.rules \
   | grep -v -q 99-rig-gpiochip; then
  echo "== hark ships a gpiochip udev rule"
  rm -f /etc/hark-rig/no-product-gpio-rule
else
  echo "== hark ships no gpiochip udev rule: the rig adds its own (reported by the checks)"
  install -m 644 /etc/hark-rig/99-rig-gpiochip.rules /etc/udev/rules.d/
  touch /etc/hark-rig/no-product-gpio-rule
fi
/opt/hark/venv/bin/python -c 'import lgpio, pyaudio, systemd.daemon' \
  || { echo "install-hark: hark's venv cannot import lgpio/pyaudio/systemd" >&2; exit 1; }
/opt/hark/venv/bin/hark --version
# What the install needed from caches stays out of the image (a smaller, quicker mke2fs).
apt-get clean
rm -rf /root/.cache
