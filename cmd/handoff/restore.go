package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/testvm/lab"
)

func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("restore", "[--server URI] [--commit ID] [DOMAIN]", `
Start a VM on the server from a checkpoint its grab committed there: for a laptop
that was lost or broke while the VM ran on it. The disks and the memory are written
on the server from its chunk store, and the VM runs on from that instant, with a new
VM generation ID (it is a clone: a guest that reads the ID reseeds its randomness).

While the lost device's lease holds, the VM may still run there: take the lease
first (handoff lease steal DOMAIN --reason 'laptop lost'); that device's later
checkpoints are then refused and kept as a branch. With no --server, the built-in
lab stands in; DOMAIN defaults to the lab's guest.`, stdout, stderr)
	server := fs.String("server", "", "the server's libvirt URI (qemu+ssh://user@host/system, ...)")
	labDir := fs.String("lab", lab.DefaultDir, "the lab that stands in when no --server is given")
	commit := fs.String("commit", "", "the commit to restore (see handoff lease status DOMAIN); default: the newest")
	leaseImage := fs.String("lease", "", "the image whose commits to restore from (default: DOMAIN)")
	holder := fs.String("holder", hostname(), "the name this device holds leases under (a lease it stole is released once the VM runs)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("%w: restore takes one DOMAIN, got %q", errUsage, fs.Args())
	}
	home, err := findHome(ctx, *labDir, *server, "", fs.Arg(0), *leaseImage, "restore")
	if err != nil {
		return err
	}
	labMode, name, c := home.lab, home.domain, home.leases
	*server, *leaseImage = home.server, home.image
	st, err := c.Status(ctx, *leaseImage)
	if err != nil {
		return fmt.Errorf("read the commits of %s: %w", *leaseImage, err)
	}
	cm, err := pickCommit(st, *commit)
	if err != nil {
		return err
	}
	saved, err := checkout.SavedFromMeta(cm.Manifest.Meta)
	if err != nil {
		return fmt.Errorf("commit %s of %s: %w", cm.ID, *leaseImage, err)
	}
	var ours *leasectl.Lease
	if l := st.Lease; l != nil && time.Now().Before(l.Expires) {
		if l.Holder != *holder {
			return fmt.Errorf("%s is leased to %s until %s, so it may still run there: if that device is lost, take the lease first (handoff lease steal %s --reason 'lost'), then restore",
				*leaseImage, l.Holder, l.Expires.Local().Format(time.TimeOnly), *leaseImage)
		}
		ours = l
	}
	srv, err := libvirt.Connect(ctx, *server)
	if err != nil {
		return err
	}
	defer srv.Close()
	sd, closeDisks, err := storeDisks(labMode, srv, nil, "")
	if err != nil {
		return fmt.Errorf("restore reads the checkpoint from the server's chunk store: %w", err)
	}
	defer closeDisks()
	fmt.Fprintf(stdout, "restoring %s on the server from commit %s (taken %s by %s, lease epoch %d)\n",
		name, cm.ID, cm.Time.Local().Format(time.DateTime), cm.Holder, cm.Epoch)
	done, err := sd.Restore(ctx, saved, func(p event.DiskProgress) {
		if p.Total == 0 {
			fmt.Fprintf(stdout, "  %s %s\n", p.Step, p.Disk)
		}
	})
	if err != nil {
		return err
	}
	if done.GenID != "" {
		fmt.Fprintf(stdout, "%s runs on the server; its VM generation ID is now %s\n", name, done.GenID)
	} else {
		fmt.Fprintf(stdout, "%s runs on the server; it has no VM generation ID device, so the guest cannot tell it is a clone (add <genid/> to its definition)\n", name)
	}
	if ours != nil {
		// The VM is home: no device holds it any more.
		if err := c.Release(ctx, *leaseImage, ours.ID); err != nil {
			fmt.Fprintf(stderr, "handoff: the lease %s of %s stays held until it expires: %v\n", ours.ID, *leaseImage, err)
		}
	}
	return nil
}

// pickCommit finds id among the image's commits; "" is the newest.
func pickCommit(st *leasectl.State, id string) (leasectl.Commit, error) {
	if id == "" {
		id = st.Head
	}
	if id == "" {
		return leasectl.Commit{}, fmt.Errorf("%s has no commits yet: a grab commits a checkpoint every --checkpoint-every while the VM runs there", st.Image)
	}
	for _, c := range st.Commits {
		if c.ID == id {
			return c, nil
		}
	}
	return leasectl.Commit{}, fmt.Errorf("%s has no commit %q (handoff lease status %s lists them)", st.Image, id, st.Image)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "workstation"
	}
	return h
}
