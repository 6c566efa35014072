package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/handoff-dev/handoff/bench/checkpointbench"
	"github.com/handoff-dev/handoff/bench/diskbench"
	"github.com/handoff-dev/handoff/bench/migrationbench"
	"github.com/handoff-dev/handoff/bench/syncbench"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/units"
)

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "sync" {
		return runBenchSync(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "disks" {
		return runBenchDisks(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "checkpoints" {
		return runBenchCheckpoints(ctx, args[1:], stdout, stderr)
	}
	fs := newFlagSet("bench", "[--dir DIR] [--keep] | bench disks [--links 100mbit,1gbit] | bench checkpoints [--count 10] | bench sync [--size 2G]", `
Measure handoff's migration engine against plain 'virsh migrate --live' on the built-in
lab: the same guest, restarted fresh for each run, on 20 Mbit/s, 100 Mbit/s and 1 Gbit/s
links (40 ms round trip), and a guest that dirties memory faster than the slow link
carries. handoff runs twice: as it ships (memory through its zstd relay) and with QEMU's
own stream. Each case also gets a reference row: its guest's memory as zstd -3 makes it
(QEMU's save stream of the fresh guest) and the time the link takes to carry that.
Prints downtime, total time, bytes on the link (counted at the veth), bytes QEMU sent and,
for a post-copy, the pages the guest asked for and their mean wait (QEMU's
postcopy-blocktime over postcopy-requests), as a markdown table.
Takes several minutes; needs root.

'handoff bench disks' measures moves of a VM with its disk, 'handoff bench checkpoints'
the checkpoints of a VM running here, and 'handoff bench sync' the image sync engine;
see their --help.`, stdout, stderr)
	dir := fs.String("dir", "/run/handoff-lab-bench", "the bench's own lab directory (not the everyday lab's)")
	keep := fs.Bool("keep", false, "leave the bench lab up afterwards")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	l, err := lab.Up(ctx, lab.Config{Dir: *dir, Progress: stderr, Handoff: executable()})
	if err != nil {
		return err
	}
	if !*keep {
		defer lab.Down(context.WithoutCancel(ctx), *dir)
	}
	rows, err := migrationbench.Run(ctx, l, migrationbench.DefaultCases(), stderr)
	migrationbench.WriteMarkdown(stdout, rows)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func runBenchDisks(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench disks", "[--links 100mbit,1gbit] [--dirty 0] [--dir DIR] [--work DIR] [--keep]", `
Measure moves of a VM with its disk: the lab's Debian desktop guest (512 MiB, a 2 GiB
qcow2 disk that only the server's libvirt user reads), on a lab of the bench's own. At
each link rate it makes, with 'handoff migrate' and the lab's chunk store:

  - a first grab, cold: a fresh chunk cache, and no image on the workstation;
  - a hand back, then a second grab (cache and the workstation's file kept), a hand back;
  - virsh's way: an empty qcow2 made on the workstation, then 'virsh migrate --live
    --p2p --copy-storage-all', and a hand back with handoff.

Each row says when the VM ran on the other host (from the command's start), the disk's
bytes on the link (all but the memory stream: counters at the workstation's end tell
the memory stream, the chunk store's and the rest, NBD's, apart by their ports; IP
headers included), handoff's own count of them, the memory stream's, the link's whole
count both ways, and the guest's own verdict on its memory and disk afterwards. The references are zstd -3 of the image's nonzero 4 KiB blocks, as
the first grab (and virsh) took it, and of the blocks that changed between the first
grab and the second; the targets: a grab's disk bytes at most 1.3 times its reference.
A move that fails or breaks the guest starts its link's turn again on a fresh guest
(twice at most). Takes 10 to 15 minutes; needs root, and room for three raw copies of
the image under --work.`, stdout, stderr)
	links := fs.String("links", strings.Join(diskbench.DefaultLinks, ","), "the link rates to run at, in order")
	dir := fs.String("dir", "/run/handoff-lab-disks", "the bench's own lab directory (not the everyday lab's)")
	work := fs.String("work", os.TempDir(), "where the chunk caches and raw copies of the image go")
	// Still memory by default: under TCG, QEMU now and then breaks a guest
	// that dirties memory during a 100 Mbit/s migration (see the README),
	// which ends a turn; the disk is what this bench measures.
	dirty := fs.Float64("dirty", 0, "MB/s of memory the guest dirties besides its own work (the desktop tests dirty 0.5)")
	keep := fs.Bool("keep", false, "leave the bench lab up afterwards")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: bench disks takes no arguments, got %q", errUsage, fs.Args())
	}
	cfg := diskbench.Config{Handoff: executable(), Links: strings.Split(*links, ","), WorkDir: *work}
	for _, rate := range cfg.Links {
		if _, err := units.BitsPerSecond(rate); err != nil {
			return fmt.Errorf("%w: --links: %v", errUsage, err)
		}
	}
	l, err := lab.Up(ctx, diskbench.LabConfig(*dir, cfg.Handoff, *dirty, stderr))
	if err != nil {
		return err
	}
	if !*keep {
		defer lab.Down(context.WithoutCancel(ctx), *dir)
	}
	rows, err := diskbench.Run(ctx, l, cfg, stderr)
	diskbench.WriteMarkdown(stdout, rows)
	if err != nil {
		return fmt.Errorf("bench disks: %w", err)
	}
	return nil
}

func runBenchCheckpoints(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench checkpoints", "[--links 20mbit,1gbit] [--count 10] [--interval 20s] [--dir DIR] [--keep]", `
Measure checkpoints: what it costs to commit a VM that runs here back to the server
while it runs. On a lab of the bench's own, with the Debian desktop guest (512 MiB,
memory kept still, its disk records written every tick), at each link rate it:

  - moves the guest to the workstation with 'handoff migrate';
  - takes --count checkpoints, one every --interval, each with 'handoff checkpoint'
    (a live snapshot of memory and disk, sent through the lab's chunk store and
    committed under the lease), all with one chunk cache, as a grab's are;
  - asks the guest for its own verdict on its memory and disk, and moves it home.

Each row gives the guest's pause (median and worst), the bytes each checkpoint sent
(the first, which carries the whole memory file, apart from the median of the rest),
the lab link's count of them both ways (IP headers and TLS included), the memory
file's size from the commit's manifest, what the guest changed since the checkpoint
before (its memory pages and disk blocks of 4 KiB that differ, read from the lab
server's store, compressed by zstd -3) and the link's bytes over that, the time from
the snapshot to the commit, and the guest's verdict. The targets: every pause under
300 ms; the link's bytes of a checkpoint after the first at most 1.5 times what
changed, in the median. A turn that fails or
breaks the guest starts again on a fresh guest (twice at most). At the defaults it
takes 10 to 15 minutes; needs root.`, stdout, stderr)
	links := fs.String("links", strings.Join(checkpointbench.DefaultLinks, ","), "the link rates to run at, in order")
	count := fs.Int("count", checkpointbench.DefaultCount, "checkpoints to take at each link rate")
	interval := fs.Duration("interval", checkpointbench.DefaultInterval, "how far apart the checkpoints start")
	dir := fs.String("dir", "/run/handoff-lab-ckpt", "the bench's own lab directory (not the everyday lab's)")
	keep := fs.Bool("keep", false, "leave the bench lab up afterwards")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: bench checkpoints takes no arguments, got %q", errUsage, fs.Args())
	}
	if *count < 1 {
		return fmt.Errorf("%w: --count %d: take at least one checkpoint", errUsage, *count)
	}
	if *interval < 0 {
		return fmt.Errorf("%w: --interval %v: give a duration of 0 or more (20s)", errUsage, *interval)
	}
	cfg := checkpointbench.Config{Handoff: executable(), Links: strings.Split(*links, ","), Count: *count, Interval: *interval, WorkDir: os.TempDir()}
	for _, rate := range cfg.Links {
		if _, err := units.BitsPerSecond(rate); err != nil {
			return fmt.Errorf("%w: --links: %v", errUsage, err)
		}
	}
	l, err := lab.Up(ctx, checkpointbench.LabConfig(*dir, cfg.Handoff, stderr))
	if err != nil {
		return err
	}
	if !*keep {
		defer lab.Down(context.WithoutCancel(ctx), *dir)
	}
	rows, err := checkpointbench.Run(ctx, l, cfg, stderr)
	checkpointbench.WriteMarkdown(stdout, rows)
	if err != nil {
		return fmt.Errorf("bench checkpoints: %w", err)
	}
	return nil
}

func runBenchSync(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench sync", "[--size 2G] [--dir DIR] [--keep]", `
Measure the image sync engine against rsync and a full zstd copy, in one run on this
machine. It makes an ext4 image of real files from /usr (filled to ~85%), pushes it
into the chunk store of a 'handoff serve' of its own, which runs (as root) in a
network namespace behind a veth link, and measures with 'handoff sync pull':

  - a cold pull of the image: bytes, time, and the CPU each side took;
  - a second cold pull with the link shaped to 1 Gbit/s by tc, against one plain
    TCP stream over the same link (the pull should move at least 90% of it);
  - indexing the local image (the target is at least 1 GB/s);
  - the update after 1% of the image's 4 KiB blocks changed on the server (new
    contents from real files): handoff's pull, rsync with and without -z against an
    rsync daemon (the workstation holding the old image), and a full zstd -3 copy;
    handoff's update should send at most 1.1 times the changed blocks compressed
    by zstd -3.

Every transfer goes through a proxy that counts the bytes at the socket, both ways
(the shaped pull's are counted at the link), and every pulled image is compared
with the server's byte for byte. Prints a markdown
table; progress goes to stderr. At 2G it takes two to three minutes on two cores and
needs about 10 GB free under --dir; everything it starts and writes is removed
afterwards, on Ctrl-C too. Needs mkfs.ext4, rsync, zstd and iproute2 ('make deps').`, stdout, stderr)
	sizeFlag := fs.String("size", "2G", "the image's size (binary units: 64M, 2G)")
	dir := fs.String("dir", os.TempDir(), "where to make the bench's working directory")
	keep := fs.Bool("keep", false, "keep the working directory (images, stores, caches) afterwards")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: bench sync takes no arguments, got %q", errUsage, fs.Args())
	}
	size, err := syncbench.ParseSize(*sizeFlag)
	if err != nil {
		return fmt.Errorf("%w: --size: %v", errUsage, err)
	}
	// This binary is the server, so that the server's CPU time is its own.
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench sync: find this program to run it as the server: %w", err)
	}
	t, err := syncbench.Run(ctx, syncbench.Config{Dir: *dir, Size: size, Keep: *keep, Server: self}, stderr)
	if len(t.Rows) > 0 {
		t.WriteMarkdown(stdout)
	}
	if err != nil {
		return fmt.Errorf("bench sync: %w", err)
	}
	return nil
}

// executable is this program, which a lab's server runs as 'handoff
// serve'; "" if it cannot be found, which lab.Up reports.
func executable() string {
	self, _ := os.Executable()
	return self
}
