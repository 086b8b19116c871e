#!/bin/bash
# Runs inside the debootstrap chroot (which reaches the package index) once per input
# hash: the guest's system, gpio-sim for Debian's kernel, the rig's own services, and
# warm caches (pip, apt) so the per-run hark install is quick.  Not hark itself.
set -euxo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
IN=/in
echo hark-guest > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 hark-guest\n' > /etc/hosts
passwd -d root
cat > /etc/fstab <<'FST'
/dev/vda / ext4 rw,relatime 0 1
share /share 9p trans=virtio,version=9p2000.L,msize=262144,nofail,x-systemd.device-timeout=20s 0 0
FST
mkdir -p /share
# Nothing in the guest talks to the outside; quiet the timers and consoles.
systemctl mask getty@tty1.service serial-getty@ttyS0.service systemd-timesyncd.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer 2>/dev/null || true

# ------------------------------------------------------------------ gpio-sim, out of tree
apt-get update -q
KVER=$(ls /lib/modules | sort -V | tail -1)
KPKG=$(dpkg-query -S "/lib/modules/$KVER/kernel" | cut -d: -f1)
KDEB=$(dpkg-query -W -f='${Version}' "$KPKG")
apt-get install -y -q --no-install-recommends "linux-headers-$KVER" make gcc xz-utils
mkdir -p /tmp/ksrc && cd /tmp/ksrc
apt-get download "linux-source-6.1=$KDEB"
dpkg-deb --fsys-tarfile linux-source-6.1_*_all.deb | tar -x ./usr/src/linux-source-6.1.tar.xz
tar -xJf usr/src/linux-source-6.1.tar.xz linux-source-6.1/drivers/gpio/gpio-sim.c \
  linux-source-6.1/drivers/gpio/gpiolib.h linux-source-6.1/kernel/irq/irq_sim.c
B=/tmp/gpio-sim-build; rm -rf $B; cp -r $IN/image/gpio-sim $B
cp linux-source-6.1/drivers/gpio/gpio-sim.c $B/gpio-sim-main.c
cp linux-source-6.1/drivers/gpio/gpiolib.h linux-source-6.1/kernel/irq/irq_sim.c $B/
# The one change: irq_to_desc() is not exported to modules.
grep -q 'handle_simple_irq(irq_to_desc(irqnum));' $B/irq_sim.c
sed -i 's/handle_simple_irq(irq_to_desc(irqnum));/generic_handle_irq(irqnum);/' $B/irq_sim.c
make -C $B KVER="$KVER"
install -D -m 644 $B/gpio-sim.ko "/lib/modules/$KVER/updates/gpio-sim.ko"
depmod -a "$KVER"
echo "$KVER $KDEB" > /etc/hark-rig-kernel
cd /; rm -rf /tmp/ksrc $B
apt-get purge -y -q "linux-headers-$KVER" 'linux-headers-*-common' 'linux-kbuild-*' || true
apt-get autoremove -y -q --purge

# ------------------------------------------------------------------ the board's GPIO driver
# Pi OS ships python3-lgpio (gpiozero's pin driver); Debian has none: PyPI's x86_64 wheel
# goes where a Debian package would be seen from hark's venv, the system site-packages.
python3 -m venv /tmp/pipvenv
/tmp/pipvenv/bin/pip install -q --disable-pip-version-check --no-deps --only-binary :all: \
  --target /usr/local/lib/python3.11/dist-packages 'lgpio==0.2.2.0'
rm -rf /tmp/pipvenv
python3 -c 'import lgpio'

# ------------------------------------------------------------------ warm caches
# hark-backend and hark-sim's dependencies in the rig's venv (hark-voice itself goes in
# per run, from that run's wheel), and a warm pip cache for the device install.
python3 -m venv /opt/hark-rig/venv
/opt/hark-rig/venv/bin/pip install -q --disable-pip-version-check "$IN/dist/$(ls $IN/dist)[backend,sim]"
python3 -m venv --system-site-packages /tmp/warm
/tmp/warm/bin/pip install -q --disable-pip-version-check "$IN/dist/$(ls $IN/dist)[device]"
rm -rf /tmp/warm
# debootstrap's packages out of apt's cache; then what install-device once asked apt for
# (compilers, headers, ALSA's plugins), downloaded, not installed, so a run of such a version installs
# them without the network.
apt-get clean
apt-get install -y -q --no-install-recommends --download-only \
  python3-dev gcc pkg-config portaudio19-dev libsystemd-dev libasound2-plugins || true

# A smaller image is a quicker mke2fs per run: kernel modules no guest here loads.
M=/lib/modules/$KVER/kernel
rm -rf $M/drivers/gpu $M/drivers/media $M/drivers/net/wireless $M/drivers/infiniband \
  $M/drivers/staging $M/drivers/bluetooth $M/net/wireless $M/net/mac80211 $M/net/bluetooth
depmod -a "$KVER"

# ------------------------------------------------------------------ boot
echo virtio_blk >> /etc/initramfs-tools/modules
update-initramfs -u -k all
