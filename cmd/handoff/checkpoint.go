package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/units"
)

func runCheckpoint(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("checkpoint", "[--server URI] [--workstation URI] [--json] [DOMAIN]", `
Commit a checkpoint of a VM that runs here to the server now: its memory and disks at
one instant (a live snapshot: the guest pauses only for its last pages), sent through
the chunk store (only what changed) and committed under the VM's lease, which this
takes for the commit and gives back. A running grab takes checkpoints by itself
(--checkpoint-every) and holds the lease, so this is refused while one runs; use it
before closing the lid of a laptop the VM runs on without a grab.

With no --server, the built-in lab stands in; DOMAIN defaults to the lab's guest.`, stdout, stderr)
	server := fs.String("server", "", "the server's libvirt URI (qemu+ssh://user@host/system, ...)")
	workstation := fs.String("workstation", "", "this machine's libvirt URI (default with --server: qemu:///system)")
	labDir := fs.String("lab", lab.DefaultDir, "the lab that stands in when no --server is given")
	leaseImage := fs.String("lease", "", "the image whose lease to commit under (default: DOMAIN)")
	holder := fs.String("holder", hostname(), "the name this device holds leases under")
	images := imagesFlag(fs)
	jsonOut := fs.Bool("json", false, "print the checkpoint as JSON")
	flushName := flushFlag(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	flush, err := checkout.ParseFlush(*flushName)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: checkpoint takes one DOMAIN, got %q", errUsage, fs.Args())
	}
	home, err := findHome(ctx, *labDir, *server, *workstation, fs.Arg(0), *leaseImage, "checkpoint")
	if err != nil {
		return err
	}
	labMode, name, c := home.lab, home.domain, home.leases
	*server, *workstation, *leaseImage = home.server, home.workstation, home.image
	srv, ws, closeHosts, err := connectPair(ctx, *server, *workstation)
	if err != nil {
		return err
	}
	defer closeHosts()
	if here, err := (checkout.LibvirtHost{Conn: ws}).Runs(ctx, name); err != nil {
		return err
	} else if !here {
		return fmt.Errorf("%s does not run here (%s): a checkpoint is of a VM this machine runs; grab it first", name, *workstation)
	}
	sd, closeDisks, err := storeDisks(labMode, srv, ws, *images)
	if err != nil {
		return fmt.Errorf("a checkpoint travels through the server's chunk store: %w", err)
	}
	defer closeDisks()
	keeper := &leasectl.Keeper{Client: c, Image: *leaseImage, Holder: *holder}
	held, err := keeper.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("take the lease of %s for the commit: %w", *leaseImage, err)
	}
	defer c.Release(context.WithoutCancel(ctx), *leaseImage, held.ID)
	start := time.Now()
	cp, err := (&checkout.StoreCheckpoints{Disks: sd, Log: checkout.LeaseLog(keeper), Flush: flush}).Checkpoint(ctx, name, checkout.Lease(held))
	if err != nil {
		return err
	}
	took := time.Since(start)
	if *jsonOut {
		return json.NewEncoder(stdout).Encode(map[string]any{
			"commit": cp.ID, "branch": cp.Branch, "at": cp.Last, "pause_ms": cp.Pause.Milliseconds(),
			"sent_bytes": cp.Bytes, "seconds": took.Seconds(), "epoch": held.Epoch, "memory_whole": cp.MemoryWhole,
			"flush_ms": cp.Flushed.Milliseconds(), "no_flush": cp.NoFlush,
			"memory_sent_bytes": cp.MemoryBytes, "recipe_sent_bytes": cp.RecipeBytes,
		})
	}
	if cp.NoFlush != "" && flush != checkout.FlushNone {
		fmt.Fprintf(stderr, "the guest did not flush first, so the disk alone is as after a power cut (the memory and disk together are whole): %s\n", cp.NoFlush)
	}
	if cp.MemoryWhole != "" {
		fmt.Fprintf(stderr, "the memory went as QEMU wrote it, not lined up with the chunks (so it cost more): %s\n", cp.MemoryWhole)
	}
	fmt.Fprintf(stdout, "checkpoint of %s committed as %s (lease epoch %d): paused %d ms, %s sent, %s to commit\n",
		name, cp.ID, held.Epoch, cp.Pause.Milliseconds(), units.Bytes(uint64(cp.Bytes)), took.Round(100*time.Millisecond))
	return nil
}

// flushFlag is --flush, what the guest does before each checkpoint.
func flushFlag(fs *flag.FlagSet) *string {
	return fs.String("flush", "sync", "what the guest does just before each checkpoint, through its qemu-guest-agent: sync (write its dirty pages to its disks, so that the disk holds its writes by itself), drop (sync and drop its clean page cache) or none. Memory and disks are saved at one instant either way; a guest without the agent is checkpointed as it is")
}

// home is where a command on the home server's copy of a VM finds it: the
// server named, or the built-in lab standing in for both hosts; the
// domain, and the image whose lease and commits it has.
type home struct {
	lab                 *lab.Lab // nil when the server was named
	server, workstation string   // libvirt URIs
	domain, image       string
	leases              *leasectl.Client
}

// findHome fills in what was not given: the lab's hosts and guest when no
// server is named, this machine's system daemon, the domain's own image.
func findHome(ctx context.Context, labDir, server, workstation, domain, image, verb string) (home, error) {
	h := home{server: server, workstation: workstation, domain: domain, image: image}
	if h.server == "" {
		l, err := lab.Load(labDir)
		if err != nil {
			return home{}, fmt.Errorf("%w; or name the server with --server qemu+ssh://user@host/system", err)
		}
		h.lab, h.server, h.workstation = l, l.Server.URI, l.Workstation.URI
		if h.domain == "" {
			h.domain = l.Domain()
		}
	}
	if h.domain == "" {
		return home{}, fmt.Errorf("%w: name the DOMAIN to %s", errUsage, verb)
	}
	if h.workstation == "" {
		h.workstation = "qemu:///system"
	}
	if h.image == "" {
		h.image = h.domain
	}
	c, err := leaseClient()
	if err != nil && h.lab != nil {
		c, err = labLease(ctx, h.lab, h.image)
	}
	if err != nil {
		return home{}, fmt.Errorf("%s works with the home server's commits: %w", verb, err)
	}
	h.leases = c
	return h, nil
}

// connectPair connects to two hosts' daemons; closeBoth closes both.
func connectPair(ctx context.Context, a, b string) (_, _ *libvirt.Conn, closeBoth func(), err error) {
	ca, err := libvirt.Connect(ctx, a)
	if err != nil {
		return nil, nil, nil, err
	}
	cb, err := libvirt.Connect(ctx, b)
	if err != nil {
		ca.Close()
		return nil, nil, nil, err
	}
	return ca, cb, func() { cb.Close(); ca.Close() }, nil
}
