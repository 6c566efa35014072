package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab"
)

func runLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, `Usage: handoff lab up|down|status|shape [flags]

The built-in lab: two hosts on this machine, "server" and "workstation", each a network
namespace with its own libvirt daemon, joined by a link shaped with tc, and a test guest
running on the server: the tiny busybox one (memory only), or with --guest debian a Debian 12
desktop on a disk the server keeps to itself. Needs root.

  up       start the lab (or keep the one that runs)
  down     remove every process, namespace, user and file the lab made
  status   where the guest runs, its last tick and integrity (--json for scripts)
  shape    change the link's bandwidth and round trip

Run 'handoff lab COMMAND --help' for flags.
`)
		if len(args) == 0 {
			return fmt.Errorf("%w: name a lab command", errUsage)
		}
		return nil
	}
	switch args[0] {
	case "up":
		return labUp(ctx, args[1:], stdout, stderr)
	case "down":
		fs := newFlagSet("lab down", "[--dir DIR]", "Remove the lab: processes, namespaces, users and files.", stdout, stderr)
		dir := fs.String("dir", lab.DefaultDir, "the lab's state directory")
		if err := parseFlags(fs, args[1:], stdout); err != nil {
			return err
		}
		if err := lab.Down(ctx, *dir); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "lab down")
		return nil
	case "status":
		return labStatus(ctx, args[1:], stdout, stderr)
	case "shape":
		fs := newFlagSet("lab shape", "--bandwidth RATE --rtt DURATION", "Change the lab link's bandwidth and round-trip time.", stdout, stderr)
		dir := fs.String("dir", lab.DefaultDir, "the lab's state directory")
		link := linkFlags(fs)
		if err := parseFlags(fs, args[1:], stdout); err != nil {
			return err
		}
		l, err := lab.Load(*dir)
		if err != nil {
			return err
		}
		warning, err := l.Shape(ctx, link())
		if warning != "" {
			fmt.Fprintln(stderr, "warning:", warning)
		}
		return err
	}
	return fmt.Errorf("%w: unknown lab command %q (up, down, status, shape)", errUsage, args[0])
}

func linkFlags(fs interface {
	String(string, string, string) *string
	Duration(string, time.Duration, string) *time.Duration
}) func() lab.Link {
	bw := fs.String("bandwidth", lab.DefaultLink.Bandwidth, "link bandwidth, as 20mbit, 100mbit or 1gbit")
	rtt := fs.Duration("rtt", lab.DefaultLink.RTT, "link round-trip time, as 40ms")
	return func() lab.Link { return lab.Link{Bandwidth: *bw, RTT: *rtt} }
}

func labUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lab up", "[flags]", `
Start the two-host lab and its test guest on the server. Builds the guest from Debian's
packages on first use (cached). Prints the hosts' libvirt URIs when ready.`, stdout, stderr)
	dir := fs.String("dir", lab.DefaultDir, "the lab's state directory")
	link := linkFlags(fs)
	mem := fs.Int("mem", lab.DefaultGuest.MemMB, "guest memory, MiB (with --guest debian: 512 unless given)")
	dirty := fs.Float64("dirty", lab.DefaultGuest.DirtyMBps, "MB/s of memory the guest dirties (with --guest debian: 0 unless given)")
	wss := fs.Int("wss", lab.DefaultGuest.WSSMB, "working set the guest dirties, MB")
	guest := fs.String("guest", string(lab.Busybox), "the guest to run: busybox (tiny, memory only) or debian (a Debian 12 desktop on a qcow2 disk; 512 MiB)")
	nat := fs.Bool("nat", false, "put the workstation behind NAT: it accepts no connections and reaches the server over SSH (run handoff inside its namespace: see 'lab status')")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	kind, err := lab.ParseGuestKind(*guest)
	if err != nil {
		return fmt.Errorf("%w: --guest: %v", errUsage, err)
	}
	if kind == lab.Desktop {
		if !flagSet(fs, "mem") {
			*mem = lab.DefaultDesktop.MemMB
		}
		if !flagSet(fs, "dirty") {
			*dirty = lab.DefaultDesktop.DirtyMBps
		}
		if !flagSet(fs, "wss") {
			*wss = lab.DefaultDesktop.WSSMB
		}
	}
	if *mem < 64 || *wss < 1 || *wss > *mem/2 || *dirty < 0 {
		return fmt.Errorf("%w: need --mem of at least 64, --wss between 1 and half of --mem, --dirty not negative", errUsage)
	}
	l, err := lab.Up(ctx, lab.Config{Dir: *dir, Link: link(), Progress: stderr, NAT: *nat, Handoff: executable(),
		Guest: lab.GuestConfig{MemMB: *mem, DirtyMBps: *dirty, WSSMB: *wss}, GuestKind: kind})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "server:      %s\nworkstation: %s\nguest:       %s (serial log %s)\n", l.Server.URI, l.Workstation.URI, l.Domain(), l.SerialLog)
	if l.GuestDisk != "" {
		fmt.Fprintf(stdout, "disk:        %s (the server's alone; the workstation's images go to %s)\n", l.GuestDisk, l.WorkstationImages)
	}
	if l.NAT {
		fmt.Fprintf(stdout, "behind NAT:  ip netns exec %s handoff migrate --from '%s' --to '%s' %s\n", l.Workstation.Netns, l.ServerSSHURI, l.Workstation.URI, l.Domain())
	}
	return nil
}

func labStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lab status", "[--json]", "Where the lab's guest runs, its last tick and its integrity.", stdout, stderr)
	dir := fs.String("dir", lab.DefaultDir, "the lab's state directory")
	jsonOut := fs.Bool("json", false, "print one JSON object")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	l, err := lab.Load(*dir)
	if err != nil {
		return err
	}
	st, err := l.Status(ctx)
	if err != nil {
		return err
	}
	if *jsonOut {
		return json.NewEncoder(stdout).Encode(st)
	}
	fmt.Fprintf(stdout, "server:      %s\nworkstation: %s\nlink:        %s, %.1f ms round trip\nguest:       %s runs on the %s; tick %d, uptime %.0fs, integrity %s\n",
		st.ServerURI, st.WorkstationURI, st.Bandwidth, st.RTTMillis, st.Domain, st.GuestHost, st.GuestTick, st.GuestUptime, st.GuestIntegrity)
	if since, err := time.Parse(time.RFC3339, st.MigratingSince); err == nil {
		fmt.Fprintf(stdout, "             a migration away from the %s is under way since %s: follow or take it over with 'handoff migrate'\n", st.MigratingFrom, since.Format(time.TimeOnly))
	}
	serve := "answers the workstation"
	if !st.Serve.Answers {
		serve = "does not answer: " + st.Serve.Error
	}
	fmt.Fprintf(stdout, "serve:       %s, %s\n", cmp.Or(st.Serve.URL, "none"), serve)
	if st.GuestDiskIntegrity != "" {
		fmt.Fprintf(stdout, "disk:        integrity %s, record %d fsynced\n", st.GuestDiskIntegrity, st.GuestDiskSeq)
	}
	if st.GuestProblem != "" {
		fmt.Fprintf(stdout, "             what broke: %s\n", st.GuestProblem)
	}
	if st.GuestPanic != "" {
		fmt.Fprintf(stdout, "             the guest's kernel died: %s (restart it with: handoff lab down && handoff lab up)\n", st.GuestPanic)
	}
	return nil
}

// flagSet tells whether the command line set the flag, not its default.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
