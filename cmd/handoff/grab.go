package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/tui"
)

func runGrab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("grab", "[--server URI] [--workstation URI] [flags] [DOMAIN]", `
Take a VM from the server and run it here. The VM's screen shows at once in this
terminal, keys go to it, and a live migration moves it under the view; the view
follows it here by itself. A VM's disks come along through the home server's chunk
store (only what this machine lacks), into --images. Ctrl-] h hands it back to the
server, Ctrl-] ? lists the rest.

With no --server/--workstation, the built-in lab stands in for both (started if it
is not up: see 'handoff lab up'); DOMAIN defaults to the lab's guest.`, stdout, stderr)
	server := fs.String("server", "", "the server's libvirt URI (qemu+ssh://user@host/system, ...)")
	workstation := fs.String("workstation", "", "this machine's libvirt URI (default with --server: qemu:///system)")
	labDir := fs.String("lab", lab.DefaultDir, "the lab that stands in for missing URIs")
	leaseImage := fs.String("lease", "", "the image whose lease to hold while the VM runs here (default: DOMAIN, once 'handoff lease login' was run)")
	noLease := fs.Bool("no-lease", false, "take no lease, even when logged in to a server")
	graphics := fs.String("graphics", "auto", "how to draw the VM's screen: auto (ask the terminal), kitty, sixel, iterm or blocks")
	images := imagesFlag(fs)
	every := fs.Duration("checkpoint-every", 10*time.Minute, "while the VM runs here under the lease, commit a checkpoint of its memory and disks to the server this often (only what changed travels; 0: never). A lost laptop then costs at most this much work: 'handoff restore' starts the VM on the server from the last one")
	flushName := flushFlag(fs)
	guest := fs.String("guest", string(lab.Desktop), "the guest a lab started by grab runs: debian (a desktop on a disk, moved through the chunk store) or busybox (memory only)")
	opts := migrateFlags(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: grab takes one DOMAIN, got %q", errUsage, fs.Args())
	}
	flush, err := checkout.ParseFlush(*flushName)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	name := fs.Arg(0)
	if !isTerminal(os.Stdout) || !isTerminal(os.Stdin) {
		return errors.New("grab draws the VM's screen and needs a terminal; for scripts use 'handoff migrate'")
	}
	toWS, err := opts.options()
	if err != nil {
		return err
	}
	toSrv := toWS
	var labMode *lab.Lab // the lab stands in for the hosts
	if *server == "" {
		l, err := lab.Load(*labDir)
		if err != nil {
			fmt.Fprintln(stderr, "no server given: starting the built-in lab (handoff lab up)")
			kind, err := lab.ParseGuestKind(*guest)
			if err != nil {
				return fmt.Errorf("%w: --guest: %v", errUsage, err)
			}
			if l, err = lab.Up(ctx, lab.Config{Dir: *labDir, Progress: stderr, Handoff: executable(), GuestKind: kind}); err != nil {
				return err
			}
		}
		*server = l.Server.URI
		if *workstation == "" {
			*workstation = l.Workstation.URI
		}
		if name == "" {
			name = l.Domain()
		}
		if *workstation == l.Workstation.URI {
			toWS.MigrateURI, toSrv.MigrateURI = l.MigrateURI(l.Workstation.Name), l.MigrateURI(l.Server.Name)
			labMode = l
		}
	}
	if name == "" {
		return fmt.Errorf("%w: name the DOMAIN to grab", errUsage)
	}
	if *workstation == "" {
		*workstation = "qemu:///system"
	}
	if *opts.relay && *opts.migrateURI == "" {
		toWS.Stream = streamRelay(labMode, *server, *workstation, nil)
		toSrv.Stream = streamRelay(labMode, *workstation, *server, nil)
	}
	if *opts.relay {
		toWS.DiskStream = mirrorRelay(labMode, *server, *workstation, nil)
		toSrv.DiskStream = mirrorRelay(labMode, *workstation, *server, nil)
	}
	srv, ws, closeHosts, err := connectPair(ctx, *server, *workstation)
	if err != nil {
		return err
	}
	defer closeHosts()
	var lease *leasectl.Keeper
	if !*noLease {
		c, err := leaseClient()
		if err != nil && labMode != nil {
			// Not logged in to a server of one's own: the lab's serve
			// keeps the lab guest's lease.
			c, err = labLease(ctx, labMode, name)
		}
		if err == nil {
			if *leaseImage == "" {
				*leaseImage = name
			}
			host, _ := os.Hostname()
			lease = &leasectl.Keeper{Client: c, Image: *leaseImage, Holder: host}
		} else if *leaseImage != "" {
			return err
		}
	}
	var disks checkout.DiskMover
	var checkpoints checkout.Checkpointer
	if has, err := domainHasDisks(srv, name); err != nil && !errors.Is(err, libvirt.ErrNoDomain) {
		return err
	} else if has {
		sd, closeDisks, err := storeDisks(labMode, srv, ws, *images)
		if err != nil {
			return fmt.Errorf("%s has disks to move with it: %w", name, err)
		}
		defer closeDisks()
		disks = sd
		if lease != nil && *every > 0 {
			checkpoints = &checkout.StoreCheckpoints{Disks: sd, Log: checkout.LeaseLog(lease), Flush: flush}
		}
	}
	co := checkout.New(checkout.Config{
		Domain:          name,
		Server:          checkout.LibvirtHost{Conn: srv, Migrate: toSrv},
		Workstation:     checkout.LibvirtHost{Conn: ws, Migrate: toWS},
		Lease:           checkout.Leased(lease),
		Disks:           disks,
		Checkpoints:     checkpoints,
		CheckpointEvery: *every,
	})
	return tui.Grab(ctx, co, tui.GrabOptions{Domain: name, In: os.Stdin, Out: os.Stdout, Graphics: *graphics})
}

// labLease is the lab server's lease client, with the image's lease made
// on first use.
func labLease(ctx context.Context, l *lab.Lab, image string) (*leasectl.Client, error) {
	c, err := l.LeaseClient()
	if err != nil {
		return nil, err
	}
	if err := c.Create(ctx, image); err != nil && !errors.Is(err, leasectl.ErrExists) {
		return nil, fmt.Errorf("make the lease of %s on the lab's server: %w", image, err)
	}
	return c, nil
}

func runView(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("view", "[--connect URI] DOMAIN", `
Show a VM's screen in this terminal, keys forwarded to it; nothing moves.
Ctrl-] q quits, Ctrl-] ? lists the rest. With no --connect, the built-in lab's
guest is shown wherever it runs.`, stdout, stderr)
	uri := fs.String("connect", "", "the libvirt URI of the VM's host")
	labDir := fs.String("lab", lab.DefaultDir, "the lab to look in when no --connect is given")
	graphics := fs.String("graphics", "auto", "how to draw the VM's screen: auto (ask the terminal), kitty, sixel, iterm or blocks")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	name := fs.Arg(0)
	if *uri == "" {
		l, err := lab.Load(*labDir)
		if err != nil {
			return fmt.Errorf("%w: give --connect URI, or start the lab with 'handoff lab up' (%v)", errUsage, err)
		}
		where, err := l.GuestHost(ctx)
		if err != nil {
			return err
		}
		*uri = l.Server.URI
		if where == l.Workstation.Name {
			*uri = l.Workstation.URI
		}
		if name == "" {
			name = lab.GuestName
		}
	}
	if name == "" {
		return fmt.Errorf("%w: name the DOMAIN to view", errUsage)
	}
	if !isTerminal(os.Stdout) || !isTerminal(os.Stdin) {
		return errors.New("view draws the VM's screen and needs a terminal")
	}
	c, err := libvirt.Connect(ctx, *uri)
	if err != nil {
		return err
	}
	defer c.Close()
	return tui.View(ctx, checkout.View(checkout.LibvirtHost{Conn: c}, name), tui.GrabOptions{Domain: name, In: os.Stdin, Out: os.Stdout, Graphics: *graphics})
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
