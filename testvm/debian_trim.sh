# Trims a debootstrap tree ($1) to what a virtio guest under TCG uses and
# writes the settings every copy of the Debian guest shares. Deterministic:
# its text is part of the cached tree's key.
set -eu
cd "$1"

# Documentation, manuals, translations, apt's lists and downloaded packages,
# udev's hardware database: a test guest never runs apt or looks up USB
# vendors. dpkg keeps the documentation out of later installs too.
rm -rf usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/* usr/share/lintian \
  var/cache/apt/* var/lib/apt/lists/* var/cache/debconf/*-old var/lib/dpkg/*-old var/log/* \
  usr/lib/udev/hwdb.bin usr/lib/udev/hwdb.d/*
mkdir -p etc/dpkg/dpkg.cfg.d
printf 'path-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\n' \
  > etc/dpkg/dpkg.cfg.d/handoff-nodoc

# Kernel modules such a guest never loads: keep file systems, libraries,
# crypto, virtio and input; drop sound, wireless and other NICs, GPUs (the
# VGA text console is built in and the view expects it), media, USB,
# InfiniBand, KVM and the rest.
for m in lib/modules/*/kernel; do
  find "$m" -type f -name '*.ko' | while read -r f; do
    case "${f#"$m"/}" in
      fs/ext4/*|fs/jbd2/*|fs/mbcache.ko|fs/autofs/*|fs/fuse/*) ;;
      lib/test_*) rm -f "$f" ;;
      lib/*|crypto/*|arch/x86/crypto/*|block/*|mm/*) ;;
      drivers/virtio/*|drivers/block/virtio_blk.ko|drivers/char/virtio_console.ko|drivers/char/hw_random/*) ;;
      drivers/input/*|drivers/scsi/virtio_scsi.ko|drivers/net/virtio_net.ko|drivers/net/net_failover.ko|net/core/failover.ko) ;;
      *) rm -f "$f" ;;
    esac
  done
  find "$m" -depth -type d -empty -delete
  chroot . depmod "$(basename "$(dirname "$m")")"
done

# An initramfs with just what finds the root disk: smaller and faster to
# unpack under TCG than the default "most" modules.
printf 'MODULES=list\nCOMPRESS=gzip\n' > etc/initramfs-tools/conf.d/handoff
printf 'virtio_pci\nvirtio_blk\next4\n' >> etc/initramfs-tools/modules
chroot . update-initramfs -u -k all

echo handoff-desktop > etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\thandoff-desktop\n' > etc/hosts
# No fsck pass: after a power cut ext4's journal is the recovery, and the
# agent checks its records itself.
printf '/dev/vda\t/\text4\tdefaults,noatime\t0\t0\n' > etc/fstab
