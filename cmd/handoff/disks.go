package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/syncengine"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/units"
)

// defaultImagesDir is where a workstation's libvirt keeps images.
const defaultImagesDir = "/var/lib/libvirt/images"

func imagesFlag(fs *flag.FlagSet) *string {
	return fs.String("images", "", "where this workstation keeps VM images (a libvirt pool is made there if it has none; default "+defaultImagesDir+", or the lab's)")
}

// storeDisks moves a VM's disks through the home server's chunk store (the
// lab's serve when the lab stands in for the hosts): only what the other
// side lacks crosses the link. close releases the chunk cache.
func storeDisks(l *lab.Lab, srv, ws *libvirt.Conn, imagesDir string) (_ *checkout.StoreDisks, close func(), err error) {
	var chunks, images syncengine.HTTPStore
	if l != nil {
		in, err := l.ServeLogin()
		if err != nil {
			return nil, nil, err
		}
		// Both APIs over one client that dials from the lab workstation's
		// side of the link, so the disk's bytes cross it as memory does.
		client := syncengine.NewHTTPClientVia(leasectl.PinnedTLS(in.Fingerprint), l.WorkstationDial)
		chunks = syncengine.HTTPStore{Base: in.URL + "/v1/chunks", Token: in.Token, Client: client}
		images = syncengine.HTTPStore{Base: in.URL + "/v1/disks", Token: in.Token, Client: client}
		if imagesDir == "" {
			imagesDir = l.WorkstationImages
		}
	} else {
		const otherwise = "log in to your home server with handoff lease login: disks move through its chunk store"
		if chunks, err = serverAPI("/v1/chunks", otherwise); err != nil {
			return nil, nil, err
		}
		if images, err = serverAPI("/v1/disks", otherwise); err != nil {
			return nil, nil, err
		}
	}
	if imagesDir == "" {
		imagesDir = defaultImagesDir
	}
	sd := &checkout.StoreDisks{
		Images:         syncengine.ImagesClient{Base: images.Base, Token: images.Token, Client: images.Client},
		WorkstationDir: imagesDir,
		Server:         srv, Workstation: ws,
	}
	client := &syncengine.Client{Remote: chunks, Cache: syncengine.DirStore{Dir: defaultCacheDir()}, Codec: syncengine.NewCodec(), Progress: sd.BytesMoved}
	sd.Chunks = client
	return sd, func() { client.Close() }, nil
}

// domainHasDisks reports whether the domain keeps writable disks in files.
func domainHasDisks(c *libvirt.Conn, name string) (bool, error) {
	d, err := c.Lookup(name)
	if err != nil {
		return false, err
	}
	disks, err := d.Disks()
	if err != nil {
		return false, fmt.Errorf("%w (the VM stays where it is)", err)
	}
	return len(disks) > 0, nil
}

// moveDisks readies the domain's disks for a migration from src to dst
// through the chunk store; the move it returns carries nothing when the
// domain has no disks, or they are shared.
func moveDisks(ctx context.Context, labDir, mode, images string, src, dst *libvirt.Conn, name string, jsonOut bool, stdout io.Writer) (*checkout.DiskMove, func(), error) {
	none := func() {}
	if mode == "shared" {
		return &checkout.DiskMove{}, none, nil
	}
	has, err := domainHasDisks(src, name)
	if err != nil || !has {
		return &checkout.DiskMove{}, none, err
	}
	// The chunk store is the server's: a grab takes the disks from it, a
	// hand back brings them to it.
	l, labErr := lab.Load(labDir)
	grab := true
	switch {
	case labErr == nil && src.URI() == l.Server.URI && dst.URI() == l.Workstation.URI:
	case labErr == nil && src.URI() == l.Workstation.URI && dst.URI() == l.Server.URI:
		grab = false
	default:
		l = nil
		srcLocal, dstLocal := isLocalURI(src.URI()), isLocalURI(dst.URI())
		if srcLocal == dstLocal {
			return nil, nil, fmt.Errorf("%s has disks, which move through the home server's chunk store between the server and this machine: make one of --from and --to this machine's libvirt (qemu:///system), or give --disks shared if both hosts see the same files", name)
		}
		grab = dstLocal
	}
	srv, ws := src, dst
	if !grab {
		srv, ws = dst, src
	}
	sd, closeDisks, err := storeDisks(l, srv, ws, images)
	if err != nil {
		return nil, nil, fmt.Errorf("%s has disks to move with it: %w", name, err)
	}
	var last time.Time
	report := func(p event.DiskProgress) {
		// A step's bytes arrive chunk by chunk: a few lines a second are
		// enough to follow.
		if p.Total > 0 && p.Done < p.Total && time.Since(last) < 250*time.Millisecond {
			return
		}
		last = time.Now()
		if jsonOut {
			json.NewEncoder(stdout).Encode(map[string]any{"phase": "disks", "step": p.Step, "disk": p.Disk, "done_bytes": p.Done, "total_bytes": p.Total})
			return
		}
		if p.Total == 0 {
			fmt.Fprintf(stdout, "disks: %s %s\n", p.Step, p.Disk)
		}
	}
	var move *checkout.DiskMove
	if grab {
		move, err = sd.Grab(ctx, name, report)
	} else {
		move, err = sd.HandBack(ctx, name, report)
	}
	if err != nil {
		closeDisks()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("stopped before the VM moved (%w): %s keeps running on %s on its disk as it was, and %s keeps nothing of this move", err, name, src.URI(), dst.URI())
		}
		return nil, nil, err
	}
	if !jsonOut {
		m := move.Moved
		fmt.Fprintf(stdout, "disks: ready, %s crossed the link: %d of %d chunks sent (%d as their changes), %d found here\n",
			units.Bytes(uint64(m.WireBytes)), m.Sent, m.Chunks, m.Patched, m.InPlace+m.FromCache)
	}
	return move, closeDisks, nil
}

// isLocalURI reports whether a libvirt URI names a daemon on this machine.
func isLocalURI(uri string) bool {
	u, err := libvirt.ParseURI(uri)
	return err == nil && !libvirt.IsRemote(u)
}
