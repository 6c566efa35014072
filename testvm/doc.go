// Package testvm builds the test guests. The tiny one, which most lab and
// end-to-end tests run, is Debian's kernel (one exact linux-image package,
// fetched with apt-get download), busybox-static, and a small static Go
// agent (./guestagent) in an initramfs written by this package. Build caches the
// result under the user's cache directory, keyed by its inputs, so only a
// new kernel package, busybox, agent or init script rebuilds it.
//
// The guest talks on its serial console, one line per event, each line
// prefixed so kernel messages never confuse a reader:
//
//	handoff-guest tick=17 uptime=17.02 dirtied_mb=34 integrity ok
//	handoff-guest tick=18 uptime=18.02 dirtied_mb=36 integrity FAIL page 1234 has generation 3, want 4
//	handoff-guest key="a"
//
// A tick comes every second. "integrity ok" means the region the agent
// wrote once still has its checksum and every page of the working set it
// dirties still holds the last generation written to it: after a migration
// this proves that no page, early or late, was lost. A key line carries the
// bytes read from the guest's VGA console (/dev/tty1), Go-quoted, so tests
// of keyboard forwarding can read what arrived. The screen shows the tick
// as a counter several lines tall, so a VNC view visibly lives.
//
// The kernel command line (Params.KernelArgs) sets how much memory the
// agent dirties: handoff.dirty=MB/s over handoff.wss=MB, with content like
// a desktop's: mostly code and text (copies of its own binaries), some zero
// pages, some random bytes. Typing "#corrupt" on the console damages the
// once-written region on purpose, so tests can prove FAIL is reachable.
//
// BuildDebian makes the other guest, a Debian 12 desktop: debootstrap's
// minbase with systemd, udev and Debian's kernel, trimmed (no docs,
// translations, apt lists or modules a virtio guest never loads), on an
// ext4 in a qcow2 v3 disk of 3 GiB, booted directly with its own kernel
// and initramfs (Params.DebianKernelArgs). The same agent runs there as a
// systemd unit with -records: besides the memory check above it writes a
// few scattered 4 KiB records a tick into a preallocated 64 MiB file,
// fsyncs, commits them in the file's first block and fsyncs again, and
// before each tick reads back, with O_DIRECT, the commit block, the blocks
// of the last and next eight ticks and a sweep of the whole file. Its lines
// go through /dev/kmsg (the kernel's log reaches the serial port whole):
//
//	handoff-guest disk start records=212 fsynced=848 last=850 repaired=1 integrity ok
//	handoff-guest tick=9 uptime=41.20 dirtied_mb=18 disk_seq=884 integrity ok
//	handoff-guest tick=10 uptime=42.21 dirtied_mb=20 disk_seq=888 integrity FAIL disk: the commit block says records through 912 are on disk, memory wrote through 884: the disk is from a later instant than memory
//
// The start line is the check after a boot (a power cut included): every
// record at or below the last commit must be in its block, or a newer one
// that was in flight; blocks torn by writes in flight are cleared. A disk
// behind memory (a lost write) and a disk ahead of memory (memory paired
// with a disk from a later instant) are both FAIL.
//
// ParseSerialLog reads such a log back into a Status.
package testvm
