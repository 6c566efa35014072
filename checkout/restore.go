package checkout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/libvirt"
)

// Restored is how a restore went.
type Restored struct {
	// GenID is the VM generation ID the restored domain runs with; empty
	// when its definition has no <genid/> device.
	GenID string
}

// Restore starts the domain on the server from a checkpoint, as it was at
// that instant: each disk is written from the server's store over the
// file the server kept of it (the one its grab left), the memory likewise,
// and the domain restored from that memory, running. The restored VM is a
// clone of one that may still run elsewhere: it gets a new VM generation
// ID (libvirt makes one on every restore), so that a guest that reads it
// reseeds its randomness. The server must keep a definition of the
// domain, and not run it.
func (s *StoreDisks) Restore(ctx context.Context, saved Saved, report func(event.DiskProgress)) (Restored, error) {
	srv, domain := s.Server, saved.Domain
	home, err := srv.Lookup(domain)
	if err != nil {
		return Restored{}, fmt.Errorf("restore %s: the server keeps no definition of it: %w", domain, err)
	}
	if st, err := home.State(); err != nil {
		return Restored{}, err
	} else if st != libvirt.StateShutoff {
		return Restored{}, fmt.Errorf("restore %s: it is %s on the server; a restore starts it from a checkpoint, so stop it first (virsh -c '%s' destroy %s) or grab it", domain, st, srv.URI(), domain)
	}
	kept, err := home.DefinedDisks()
	if err != nil {
		return Restored{}, err
	}
	if len(saved.Disks) == 0 {
		return Restored{}, fmt.Errorf("restore %s: the checkpoint names no disk, and a memory file needs a disk's folder on the server", domain)
	}
	paths, stale := map[string]string{}, map[string]string{}
	var folder string
	for _, target := range saved.targets() {
		d := saved.Disks[target]
		old, ok := kept[target]
		if !ok {
			return Restored{}, fmt.Errorf("restore %s: the server's definition has no disk %s, which the checkpoint holds", domain, target)
		}
		file := filepath.Join(filepath.Dir(old), d.File)
		s.say(report, "writing on the server", file)
		if _, err := s.Images.Checkout(ctx, d.Root, file); err != nil {
			return Restored{}, fmt.Errorf("write disk %s of %s to %s on the server: %w", target, domain, file, err)
		}
		paths[target] = file
		if old != file {
			stale[target] = old
		}
		if folder == "" {
			folder = filepath.Dir(old)
		}
	}
	memory := filepath.Join(folder, domain+".restore.memory")
	s.say(report, "writing the memory on the server", memory)
	if saved.MemoryRecipe.IsZero() {
		_, err = s.Images.Checkout(ctx, saved.Memory, memory)
	} else {
		_, err = s.Images.Assemble(ctx, saved.MemoryRecipe, saved.Memory, memory)
	}
	if err != nil {
		return Restored{}, fmt.Errorf("write the memory of %s to %s on the server: %w", domain, memory, err)
	}
	pool, err := srv.EnsurePool(folder)
	if err != nil {
		return Restored{}, err
	}
	defer func() {
		if pool.Refresh() == nil {
			srv.DeleteVolume(memory)
		}
	}()
	x, err := srv.SavedXML(memory)
	if err != nil {
		return Restored{}, err
	}
	if x, err = withDiskSources(x, paths); err != nil {
		return Restored{}, err
	}
	s.say(report, "restoring", domain)
	restored, err := srv.Restore(memory, x)
	if err != nil {
		return Restored{}, err
	}
	genID, err := restored.GenID()
	if err != nil {
		return Restored{}, err
	}
	// The grab's overlays sat on the files just rewritten: stale now.
	var errs []error
	for _, old := range stale {
		errs = append(errs, srv.DeleteVolume(old))
	}
	if err := errors.Join(errs...); err != nil {
		return Restored{GenID: genID}, fmt.Errorf("%s runs on the server again, but a stale file of its grab stays: %w", domain, err)
	}
	return Restored{GenID: genID}, nil
}
