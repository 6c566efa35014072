package checkout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/syncengine"
)

// Saved names what one checkpoint holds in the server's store: the
// domain's memory at one instant and each disk as it was then. A commit
// carries it as its manifest.
type Saved struct {
	Domain string
	Memory syncengine.Hash
	Disks  map[string]SavedDisk // by the guest's name for the disk ("vda")
	// What the checkpoint cost: the bytes it put on the link, and the
	// size of the memory it saved.
	SentBytes, MemoryBytes int64
}

// SavedDisk is one disk of a checkpoint: the chain root, and the name of
// its top file, which the server writes beside the disk's own.
type SavedDisk struct {
	Root syncengine.Hash
	File string
}

// Manifest keys: a commit's manifest is plain strings (leasectl knows no
// chunks), one key per disk.
const (
	metaDomain   = "domain"
	metaMemory   = "memory"
	metaDisk     = "disk "
	metaDiskFile = "disk-file "
	metaSent     = "sent-bytes"
	metaMemSize  = "memory-bytes"
)

// Meta is s as a commit's manifest metadata.
func (s Saved) Meta() map[string]string {
	m := map[string]string{metaDomain: s.Domain, metaMemory: s.Memory.String(),
		metaSent: strconv.FormatInt(s.SentBytes, 10), metaMemSize: strconv.FormatInt(s.MemoryBytes, 10)}
	for target, d := range s.Disks {
		m[metaDisk+target] = d.Root.String()
		m[metaDiskFile+target] = d.File
	}
	return m
}

// SavedFromMeta reads a checkpoint back from a commit's manifest; a commit
// made by other means than a checkpoint is refused.
func SavedFromMeta(m map[string]string) (Saved, error) {
	s := Saved{Domain: m[metaDomain], Disks: map[string]SavedDisk{}}
	s.SentBytes, _ = strconv.ParseInt(m[metaSent], 10, 64)
	s.MemoryBytes, _ = strconv.ParseInt(m[metaMemSize], 10, 64)
	var err error
	if s.Memory, err = syncengine.ParseHash(m[metaMemory]); err != nil || s.Domain == "" {
		return Saved{}, errors.New("the commit is no checkpoint of a running VM (its manifest names no memory): restore needs one that handoff grab made")
	}
	for k, v := range m {
		target, ok := strings.CutPrefix(k, metaDisk)
		if !ok {
			continue
		}
		root, err := syncengine.ParseHash(v)
		file := m[metaDiskFile+target]
		if err != nil || file == "" || filepath.Base(file) != file {
			return Saved{}, fmt.Errorf("the checkpoint's disk %s is named badly (root %q, file %q)", target, v, file)
		}
		s.Disks[target] = SavedDisk{Root: root, File: file}
	}
	return s, nil
}

// targets are s's disks in a stable order.
func (s Saved) targets() []string {
	var t []string
	for target := range s.Disks {
		t = append(t, target)
	}
	sort.Strings(t)
	return t
}

// CommitLog is the server's history of the VM's image.
type CommitLog interface {
	// Head is the newest commit's ID; "" before the first.
	Head(ctx context.Context) (string, error)
	// Commit appends a commit on parent under held, fenced by its epoch;
	// it wraps ErrRefused when the lease no longer allows it.
	Commit(ctx context.Context, held Lease, parent string, s Saved) (id string, err error)
	// Branch keeps s as a new image that starts at parent.
	Branch(ctx context.Context, parent string, s Saved) (image, id string, err error)
}

// ErrRefused: the server refused a commit because the lease it was made
// under was stolen or has expired.
var ErrRefused = errors.New("the server refused the commit: the lease it was made under is no longer held")

// StoreCheckpoints takes checkpoints of the VM running on the workstation
// and commits them to the server through the chunk store. A checkpoint is
// a live external snapshot: memory to a file, and a new overlay on every
// disk at that instant, so that the layer below holds the disk as it was
// when the memory was taken. Both travel while the VM runs on (only the
// chunks the server lacks), then the commit names them, and the overlay
// is merged back down: the chain stays one file.
type StoreCheckpoints struct {
	Disks *StoreDisks // its Chunks, Workstation and WorkstationDir
	Log   CommitLog

	parent string // the newest commit made here, once there is one
}

// Checkpoint takes, sends and commits one checkpoint of domain.
func (c *StoreCheckpoints) Checkpoint(ctx context.Context, domain string, held Lease) (_ event.Checkpoint, err error) {
	ws := c.Disks.Workstation
	dom, err := ws.Lookup(domain)
	if err != nil {
		return event.Checkpoint{}, err
	}
	pool, err := ws.EnsurePool(c.Disks.WorkstationDir)
	if err != nil {
		return event.Checkpoint{}, err
	}
	tag := tag()
	// One name for every checkpoint's memory: the chunk client keeps the
	// last one sent under it, and sends the next one against it.
	memory := filepath.Join(pool.Dir, domain+".checkpoint.memory")
	removeFile(memory) // left by a checkpoint that was killed
	at := time.Now()
	disks, pause, err := dom.Checkpoint(tag, memory)
	if err != nil {
		return event.Checkpoint{}, err
	}
	if pause == 0 {
		pause = time.Since(at) // QEMU did not say: the whole snapshot bounds it
	}
	// Whatever happens next, the overlays go back down and the memory
	// file goes: a checkpoint that did not reach the server is dropped,
	// and the next one starts from the VM as it is then.
	defer func() {
		var errs []error
		for _, d := range disks {
			errs = append(errs, commitOn(context.WithoutCancel(ctx), ws, domain, d.Target))
		}
		errs = append(errs, removeFile(memory))
		if e := errors.Join(errs...); e != nil {
			err = errors.Join(err, fmt.Errorf("merge the checkpoint's overlays of %s back down: %w", domain, e))
		}
	}()
	saved := Saved{Domain: domain, Disks: map[string]SavedDisk{}}
	var sent int64
	for _, d := range disks {
		below := d.Chain[1] // the disk as it was at the snapshot
		root, _, st, err := c.Disks.Chunks.PushChain(ctx, below.Path)
		if err != nil {
			return event.Checkpoint{}, fmt.Errorf("send disk %s of %s to the server: %w", d.Target, domain, err)
		}
		sent += st.WireBytes
		saved.Disks[d.Target] = SavedDisk{Root: root, File: filepath.Base(below.Path)}
	}
	root, st, err := c.Disks.Chunks.Push(ctx, memory)
	if err != nil {
		return event.Checkpoint{}, fmt.Errorf("send the memory of %s to the server: %w", domain, err)
	}
	sent += st.WireBytes
	saved.Memory, saved.SentBytes, saved.MemoryBytes = root, sent, st.ImageBytes
	if c.parent == "" {
		if c.parent, err = c.Log.Head(ctx); err != nil {
			return event.Checkpoint{}, err
		}
	}
	cp := event.Checkpoint{Last: at, Bytes: sent, Pause: pause}
	if held.ID != "" {
		cp.ID, err = c.Log.Commit(ctx, held, c.parent, saved)
		if err == nil {
			c.parent = cp.ID
			return cp, nil
		}
		if !errors.Is(err, ErrRefused) {
			return event.Checkpoint{}, err
		}
	}
	// No lease covers this work any more: keep it, as a branch of its own.
	cp.Branch, cp.ID, err = c.Log.Branch(ctx, c.parent, saved)
	if err != nil {
		return event.Checkpoint{}, fmt.Errorf("the lease is gone and keeping the checkpoint as a branch failed: %w", err)
	}
	return cp, nil
}

var _ Checkpointer = (*StoreCheckpoints)(nil)
