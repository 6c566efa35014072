package checkout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/internal/stalldial"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/syncengine"
)

// Saved names what one checkpoint holds in the server's store: the
// domain's memory at one instant and each disk as it was then. A commit
// carries it as its manifest.
type Saved struct {
	Domain string
	// Memory is the memory file; or, where MemoryRecipe is set, its pages
	// lined up at their guest addresses (package saveimage), which the
	// recipe makes the file of again (syncengine.Assemble).
	Memory, MemoryRecipe syncengine.Hash
	Disks                map[string]SavedDisk // by the guest's name for the disk ("vda")
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
	metaRecipe   = "memory-recipe"
	metaDisk     = "disk "
	metaDiskFile = "disk-file "
	metaSent     = "sent-bytes"
	metaMemSize  = "memory-bytes"
)

// Meta is s as a commit's manifest metadata.
func (s Saved) Meta() map[string]string {
	m := map[string]string{metaDomain: s.Domain, metaMemory: s.Memory.String(),
		metaSent: strconv.FormatInt(s.SentBytes, 10), metaMemSize: strconv.FormatInt(s.MemoryBytes, 10)}
	if !s.MemoryRecipe.IsZero() {
		m[metaRecipe] = s.MemoryRecipe.String()
	}
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
	if r, ok := m[metaRecipe]; ok {
		if s.MemoryRecipe, err = syncengine.ParseHash(r); err != nil {
			return Saved{}, fmt.Errorf("the checkpoint's memory recipe is named badly (%q)", r)
		}
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
//
// A checkpoint that cannot reach the server stays queued: its memory file
// and its frozen layer are kept, no newer one is taken, and each later
// call sends it again, until it lands or Settle drops it. The queue holds
// one checkpoint, so a long time without a link costs the work since that
// one, and the chain never grows past one overlay.
type StoreCheckpoints struct {
	Disks *StoreDisks // its Chunks, Workstation and WorkstationDir
	Log   CommitLog
	// Flush is what the guest is asked to do first, through its agent.
	Flush Flush

	parent string   // the newest commit made here, once there is one
	queued *pending // taken, not yet on the server
}

// Flush is what a checkpoint has the guest do just before its snapshot,
// where the guest runs qemu-guest-agent. Memory and disks are saved at one
// instant, so a restore is whole either way; a flush makes the disk hold
// the guest's writes by itself (a boot from the disk alone finds them),
// for the time the guest takes to write them out.
type Flush int

const (
	FlushSync Flush = iota // write the guest's dirty pages to its disks
	FlushDrop              // and drop its clean page cache
	FlushNone              // nothing: crash-consistent disks
)

// flushLimit bounds the guest's flush before a checkpoint: on the lab it
// took 86-616 ms.
const flushLimit = 20 * time.Second

// ParseFlush reads a Flush as the command line names it.
func ParseFlush(s string) (Flush, error) {
	switch s {
	case "sync":
		return FlushSync, nil
	case "drop":
		return FlushDrop, nil
	case "none":
		return FlushNone, nil
	}
	return 0, fmt.Errorf("flush %q: say sync (write the guest's dirty pages out first), drop (and drop its clean caches) or none", s)
}

// pending is a checkpoint taken and not yet committed.
type pending struct {
	domain string
	disks  []libvirt.Disk // as the snapshot left them: its overlays on top
	memory memoryFiles
	at     time.Time
	pause  time.Duration
	// flushed: how long the guest's flush took; noFlush why there was none.
	flushed time.Duration
	noFlush string
}

// ErrQueued: the checkpoint was taken but could not be sent; it is kept
// and sent again with the next one.
var ErrQueued = errors.New("the checkpoint is kept here until the server can be reached")

// Checkpoint takes one checkpoint of domain (or takes up the one queued),
// sends it and commits it.
func (c *StoreCheckpoints) Checkpoint(ctx context.Context, domain string, held Lease) (event.Checkpoint, error) {
	if c.queued == nil {
		p, err := c.take(ctx, domain)
		if err != nil {
			return event.Checkpoint{}, err
		}
		c.queued = p
	}
	p := c.queued
	cp, err := c.send(ctx, p, held)
	if err != nil {
		return event.Checkpoint{Queued: p.at}, fmt.Errorf("%w: %w", ErrQueued, err)
	}
	return cp, c.Settle(ctx)
}

// Settle drops the checkpoint queued, if any: its overlays are merged back
// down and its memory file removed. A hand back settles first: it carries
// everything to the server anyway.
func (c *StoreCheckpoints) Settle(ctx context.Context) error {
	p := c.queued
	if p == nil {
		return nil
	}
	var errs []error
	for _, d := range p.disks {
		errs = append(errs, commitOn(context.WithoutCancel(ctx), c.Disks.Workstation, p.domain, d.Target))
	}
	errs = append(errs, p.memory.remove())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("merge the checkpoint's overlays of %s back down: %w", p.domain, err)
	}
	c.queued = nil
	return nil
}

// take snapshots domain's memory and disks at one instant.
func (c *StoreCheckpoints) take(ctx context.Context, domain string) (*pending, error) {
	ws := c.Disks.Workstation
	dom, err := ws.Lookup(domain)
	if err != nil {
		return nil, err
	}
	pool, err := ws.EnsurePool(c.Disks.WorkstationDir)
	if err != nil {
		return nil, err
	}
	// One name for every checkpoint's memory: the chunk client keeps the
	// last one sent under it, and sends the next one against it.
	p := &pending{domain: domain, memory: memoryFiles{file: filepath.Join(pool.Dir, domain+".checkpoint.memory")}, at: time.Now()}
	p.memory.remove() // left by a checkpoint that was killed
	if c.Flush == FlushNone {
		p.noFlush = "not asked for"
	} else {
		// A guest whose disk stalls must not hold the checkpoint: past the
		// limit it goes on without the flush.
		fctx, cancel := context.WithTimeout(ctx, flushLimit)
		p.flushed, err = dom.FlushGuest(fctx, c.Flush == FlushDrop)
		cancel()
		if err != nil {
			// The checkpoint goes on: memory and disks at one instant still.
			p.noFlush = err.Error()
		}
	}
	p.at = time.Now()
	if p.disks, p.pause, err = dom.Checkpoint(tag(), p.memory.file); err != nil {
		return nil, err
	}
	if p.pause == 0 {
		p.pause = time.Since(p.at) // QEMU did not say: the whole snapshot bounds it
	}
	p.memory.split()
	return p, nil
}

// stallLimit: a checkpoint's transfer that moved nothing for this long
// is given up, and the checkpoint kept: the server is out of reach, and
// TCP by itself would wait out the link for many minutes.
// It is the connections' own limit on unacknowledged data: this one also
// covers a request whose answer never comes.
const stallLimit = stalldial.Limit

// send pushes p's disks and memory to the server and commits them under
// held, or as a branch when no lease covers them any more.
func (c *StoreCheckpoints) send(ctx context.Context, p *pending, held Lease) (_ event.Checkpoint, err error) {
	ctx, stop := c.watchStall(ctx)
	defer func() {
		stop()
		if cause := context.Cause(ctx); err != nil && cause != nil && cause != ctx.Err() {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
	}()
	saved := Saved{Domain: p.domain, Disks: map[string]SavedDisk{}}
	var sent int64
	for _, d := range p.disks {
		below := d.Chain[1] // the disk as it was at the snapshot
		root, _, st, err := c.Disks.Chunks.PushChain(ctx, below.Path)
		if err != nil {
			return event.Checkpoint{}, fmt.Errorf("send disk %s of %s to the server: %w", d.Target, p.domain, err)
		}
		sent += st.WireBytes
		saved.Disks[d.Target] = SavedDisk{Root: root, File: filepath.Base(below.Path)}
	}
	mem, err := p.memory.push(ctx, c.Disks.Chunks)
	if err != nil {
		return event.Checkpoint{}, fmt.Errorf("send the memory of %s to the server: %w", p.domain, err)
	}
	sent += mem.sent
	saved.Memory, saved.MemoryRecipe, saved.SentBytes, saved.MemoryBytes = mem.root, mem.recipe, sent, mem.size
	if c.parent == "" {
		if c.parent, err = c.Log.Head(ctx); err != nil {
			return event.Checkpoint{}, err
		}
	}
	cp := event.Checkpoint{Last: p.at, Bytes: sent, Pause: p.pause, MemoryWhole: p.memory.whole, Flushed: p.flushed, NoFlush: p.noFlush,
		MemoryBytes: mem.sent, RecipeBytes: mem.recipeSent}
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

// watchStall is ctx, cancelled once no byte has moved for stallLimit;
// stop ends the watch.
func (c *StoreCheckpoints) watchStall(ctx context.Context) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	start, done := time.Now(), make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case now := <-tick.C:
				if idle := now.Sub(c.Disks.idleSince(start)); idle > stallLimit {
					cancel(fmt.Errorf("nothing moved to the server for %v: it is out of reach", idle.Round(time.Second)))
					return
				}
			}
		}
	})
	return ctx, func() { close(done); wg.Wait(); cancel(nil) }
}

var _ Checkpointer = (*StoreCheckpoints)(nil)
