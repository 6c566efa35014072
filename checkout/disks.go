package checkout

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/syncengine"
)

// ServerImages is what the server's `handoff serve` does with images on
// its own disk, on the workstation's word.
type ServerImages interface {
	// Index stores the image at path (and its backing chain) in the
	// server's chunk store; its Root names it.
	Index(ctx context.Context, path string) (syncengine.IndexResult, error)
	// Checkout writes the image root names from the server's store to
	// path, replacing what is there once it is whole.
	Checkout(ctx context.Context, root syncengine.Hash, path string) (syncengine.CheckoutResult, error)
	// Assemble writes to path the file that recipe, in the server's
	// store, makes of base (a checkpoint's memory of its page image).
	Assemble(ctx context.Context, recipe, base syncengine.Hash, path string) (syncengine.AssembleResult, error)
}

// Chunks moves images between this workstation and the server's store,
// sending only what the other side lacks.
type Chunks interface {
	PullChain(ctx context.Context, root syncengine.Hash, path string) ([]syncengine.ChainMember, syncengine.Stats, error)
	PushChain(ctx context.Context, path string) (syncengine.Hash, []syncengine.ChainMember, syncengine.Stats, error)
	// Push sends one plain file (a checkpoint's memory, say).
	Push(ctx context.Context, path string) (syncengine.Hash, syncengine.Stats, error)
}

// StoreDisks moves a domain's disks through the chunk store ahead of its
// memory. Each host keeps a disk as one image file between moves. A move
// freezes the source's file under a fresh overlay, carries the frozen file
// to the destination through the store (only the chunks the destination
// lacks cross the link), starts an empty overlay on it there, and lets the
// migration mirror only the overlay, which holds what the guest wrote since
// the freeze. Once the VM runs on the destination the overlay is committed
// down, so chains never grow.
type StoreDisks struct {
	Images ServerImages
	Chunks Chunks
	// WorkstationDir is where the workstation keeps VM images (its
	// libvirt pool); created by its daemon's pool when missing.
	WorkstationDir string
	// Server and Workstation are the two hosts' daemons.
	Server, Workstation *libvirt.Conn

	mu     sync.Mutex
	report func(event.DiskProgress) // the move under way's
	step   string
	moved  time.Time // when the chunk client last said bytes moved
}

// DiskMove is a disk move under way: its migration options, and how to
// finish or undo it. It is the Prepared of StoreDisks.
type DiskMove struct {
	// Copy goes into the migration's options; nil when the domain has no
	// disks to move.
	Copy *libvirt.DiskCopy
	// Moved is what the chunk store did: its WireBytes crossed the link.
	Moved syncengine.Stats

	finish, undo []func(context.Context) error
}

// Finish tidies up once the VM runs on the destination: overlays are
// committed down, and stale files on the source removed.
func (m *DiskMove) Finish(ctx context.Context) error { return runAll(ctx, m.finish) }

// Undo puts things back after a failed or aborted migration: the source
// runs on its original chain again and the destination keeps nothing.
func (m *DiskMove) Undo(ctx context.Context) error { return runAll(ctx, m.undo) }

// undoIfFailed undoes the move when *err says its preparation failed.
func (m *DiskMove) undoIfFailed(ctx context.Context, err *error) {
	if *err == nil {
		return
	}
	if uerr := m.Undo(context.WithoutCancel(ctx)); uerr != nil {
		*err = fmt.Errorf("%w; putting the disks back also failed: %v", *err, uerr)
	}
}

// overlayOn starts an empty overlay called name in pool on base, a file
// of the pool's host, of base's virtual size; it returns its path.
func overlayOn(host *libvirt.Conn, pool *libvirt.Pool, name string, base libvirt.Layer) (string, error) {
	if err := pool.Refresh(); err != nil {
		return "", err
	}
	size, err := host.VirtualSize(base.Path)
	if err != nil {
		return "", err
	}
	return pool.CreateOverlay(name, base, size)
}

// commitOn commits the top layer of the domain's disk target on host, where
// the VM now runs, down into the file below it.
func commitOn(ctx context.Context, host *libvirt.Conn, domain, target string) error {
	there, err := host.Lookup(domain)
	if err != nil {
		return err
	}
	return there.CommitTop(ctx, target)
}

func runAll(ctx context.Context, steps []func(context.Context) error) error {
	var errs []error
	for _, f := range steps {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

var _ DiskMover = (*StoreDisks)(nil)

// say reports a step of the disk move; the bytes of a transfer come
// through BytesMoved.
func (s *StoreDisks) say(report func(event.DiskProgress), step, file string) {
	s.mu.Lock()
	s.report, s.step = report, step
	s.mu.Unlock()
	if report != nil {
		// The file's name is enough on a dashboard: the folder is each
		// host's image folder.
		if file != "" {
			file = filepath.Base(file)
		}
		report(event.DiskProgress{Step: step, Disk: file})
	}
}

// BytesMoved is the chunk client's progress hook (syncengine.Client's
// Progress): it reports a transfer's bytes as the current step's.
func (s *StoreDisks) BytesMoved(step string, done, total int64) {
	s.mu.Lock()
	report, current := s.report, s.step
	s.moved = time.Now()
	s.mu.Unlock()
	if report != nil {
		report(event.DiskProgress{Step: current + ": " + step, Done: done, Total: total})
	}
}

// idleSince is when bytes last moved, or start if later.
func (s *StoreDisks) idleSince(start time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.moved.After(start) {
		return s.moved
	}
	return start
}

// Prepare readies the disks for move: see Grab and HandBack.
func (s *StoreDisks) Prepare(ctx context.Context, move Move, report func(event.DiskProgress)) (Prepared, error) {
	if move.there() {
		return s.Grab(ctx, move.Domain, report)
	}
	return s.HandBack(ctx, move.Domain, report)
}

// tag names one move's overlays, unlike any earlier move's: the time, in
// milliseconds, base 36.
func tag() string { return "h" + strconv.FormatInt(time.Now().UnixMilli(), 36) }

// Grab prepares the disks of domain for its move from the server to the
// workstation.
func (s *StoreDisks) Grab(ctx context.Context, domain string, report func(event.DiskProgress)) (_ *DiskMove, err error) {
	src, dst := s.Server, s.Workstation
	dom, disks, err := movingDisks(src, domain)
	if err != nil || len(disks) == 0 {
		return &DiskMove{}, err
	}
	pool, err := dst.EnsurePool(s.WorkstationDir)
	if err != nil {
		return nil, err
	}
	if err := checkFree(dst, pool, disks); err != nil {
		return nil, err
	}
	move := &DiskMove{}
	defer move.undoIfFailed(ctx, &err)
	frozen, _, err := s.freeze(dom, move, report)
	if err != nil {
		return nil, err
	}
	paths := map[string]string{}
	under := map[string]libvirt.BelowOverlay{} // what each mirror writes over, on both hosts
	var targets []string
	for _, d := range frozen {
		below := d.Chain[1] // the file the freeze stopped
		s.say(report, "indexing on the server", below.Path)
		indexed, err := s.Images.Index(ctx, below.Path)
		root := indexed.Root
		if err != nil {
			return nil, fmt.Errorf("index %s (disk %s of %s) on the server: %w", below.Path, d.Target, domain, err)
		}
		local := filepath.Join(pool.Dir, filepath.Base(below.Path))
		s.say(report, "receiving", local)
		members, st, err := s.Chunks.PullChain(ctx, root, local)
		if err != nil {
			return nil, fmt.Errorf("receive disk %s of %s: %w", d.Target, domain, err)
		}
		// The mirror writes only the top layer: everything below must be
		// the server's, file for file, or it would be written onto a base
		// that differs.
		if err := sameChain(indexed.Members, members); err != nil {
			return nil, fmt.Errorf("disk %s of %s: %w: refused, nothing was mirrored", d.Target, domain, err)
		}
		move.Moved.Add(st)
		for _, m := range members {
			if err := chownLike(m.Path, pool.Dir); err != nil {
				return nil, err
			}
			path := m.Path
			move.undo = append(move.undo, func(context.Context) error { return removeFile(path) })
		}
		s.say(report, "making the overlay", local)
		overlay, err := overlayOn(dst, pool, filepath.Base(d.Top().Path), libvirt.Layer{Path: local, Format: below.Format})
		if err != nil {
			return nil, err
		}
		move.undo = append(move.undo, func(context.Context) error { return dst.DeleteVolume(overlay) })
		paths[d.Target] = overlay
		under[d.NBDExport()] = libvirt.BelowOverlay{Source: below.Path, Destination: local}
		targets = append(targets, d.Target)
		target := d.Target
		move.finish = append(move.finish, func(ctx context.Context) error {
			s.say(report, "committing the overlay down", target)
			return commitOn(ctx, dst, domain, target)
		})
	}
	x, err := dom.MigratableXML()
	if err != nil {
		return nil, err
	}
	destXML, err := withDiskSources(x, paths)
	if err != nil {
		return nil, err
	}
	move.Copy = &libvirt.DiskCopy{Targets: targets, TopOnly: true, DestinationXML: destXML, Below: under}
	return move, nil
}

// movingDisks finds the domain on the host it leaves, and its disks.
func movingDisks(from *libvirt.Conn, domain string) (*libvirt.Domain, []libvirt.Disk, error) {
	dom, err := from.Lookup(domain)
	if err != nil {
		return nil, nil, err
	}
	disks, err := dom.Disks()
	return dom, disks, err
}

// freeze starts this move's overlays on the source's disks and returns
// them, and the move's tag. Until the VM has moved, those overlays hold
// its newest writes: undo merges them back, so the source runs on its
// original chain.
func (s *StoreDisks) freeze(dom *libvirt.Domain, move *DiskMove, report func(event.DiskProgress)) ([]libvirt.Disk, string, error) {
	moveTag := tag()
	s.say(report, "freezing the disks", "")
	frozen, err := dom.Freeze(moveTag)
	if err != nil {
		return nil, "", err
	}
	for _, d := range frozen {
		target := d.Target
		move.undo = append(move.undo, func(ctx context.Context) error { return dom.CommitTop(ctx, target) })
	}
	return frozen, moveTag, nil
}

// sameChain checks that the chain pulled here holds, file for file, what
// the server indexed.
func sameChain(server, here []syncengine.ChainMember) error {
	if len(server) != len(here) {
		return fmt.Errorf("the server's chain has %d files, the copy here %d", len(server), len(here))
	}
	for i := range server {
		if server[i].Root != here[i].Root {
			return fmt.Errorf("%s here is not the server's %s (roots %s and %s)", here[i].Path, server[i].Name, here[i].Root, server[i].Root)
		}
	}
	return nil
}

// checkFree refuses a move the destination has no room for, or whose
// files there are another running domain's.
func checkFree(dst *libvirt.Conn, pool *libvirt.Pool, disks []libvirt.Disk) error {
	var need uint64
	inUse, err := dst.DisksInUse()
	if err != nil {
		return err
	}
	for _, d := range disks {
		for _, l := range d.Chain {
			local := filepath.Join(pool.Dir, filepath.Base(l.Path))
			if dom, ok := inUse[local]; ok {
				return fmt.Errorf("disk %s would go to %s on %s, which the running domain %s uses: stop it, or move its image", d.Target, local, dst.URI(), dom)
			}
		}
		size, err := fileSize(d.Chain)
		if err != nil {
			return err
		}
		need += size
	}
	// The pull writes here, from this process: its free space is what
	// this process sees (the daemon may live in another mount namespace).
	var fs syscall.Statfs_t
	if err := syscall.Statfs(pool.Dir, &fs); err != nil {
		return fmt.Errorf("free space in %s: %w", pool.Dir, err)
	}
	avail := fs.Bavail * uint64(fs.Bsize)
	if need > avail {
		return fmt.Errorf("the disks need up to %d MB in %s on %s, which has %d MB free: free some room, or give another folder (--images)", need>>20, pool.Dir, dst.URI(), avail>>20)
	}
	return nil
}

// fileSize bounds what a chain takes on the destination by what its files
// take on the source, as far as this host can see them; a remote server's
// files it cannot see count as nothing, and the pull's own check of room
// is then the last word.
func fileSize(chain []libvirt.Layer) (uint64, error) {
	var n uint64
	for _, l := range chain {
		fi, err := os.Stat(l.Path)
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += uint64(st.Blocks) * 512
		}
	}
	return n, nil
}

// chownLike gives path the owner of dir, where the destination's daemon
// keeps its images: that daemon must be able to open it.
func chownLike(path, dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("give %s to the owner of %s: %w", path, dir, err)
	}
	return nil
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// withDiskSources returns the domain XML with the named disks' sources
// set to new files and their backing chains left out: the destination's
// daemon reads them from the files' own headers. Everything else stays as
// it was, byte for byte.
func withDiskSources(domainXML string, sources map[string]string) (string, error) {
	var out strings.Builder
	rest := domainXML
	for {
		i := diskOpen.FindStringIndex(rest)
		if i == nil {
			out.WriteString(rest)
			break
		}
		end := strings.Index(rest[i[0]:], "</disk>")
		if end < 0 {
			return "", errors.New("domain XML has a <disk> that never ends")
		}
		end += i[0] + len("</disk>")
		out.WriteString(rest[:i[0]])
		out.WriteString(rewriteDisk(rest[i[0]:end], sources))
		rest = rest[end:]
	}
	return out.String(), nil
}

var (
	diskOpen   = regexp.MustCompile(`<disk[\s>]`)
	diskTarget = regexp.MustCompile(`<target\s[^>]*dev=['"]([^'"]+)['"]`)
	diskSource = regexp.MustCompile(`<source\s[^>]*/>`)
	fileAttr   = regexp.MustCompile(`file=['"][^'"]*['"]`)
	indexAttr  = regexp.MustCompile(`\s+index=['"][^'"]*['"]`)
)

// rewriteDisk rewrites one <disk> element when its target is in sources.
func rewriteDisk(disk string, sources map[string]string) string {
	m := diskTarget.FindStringSubmatch(disk)
	if m == nil {
		return disk
	}
	file, ok := sources[m[1]]
	if !ok {
		return disk
	}
	// The backing chain, nested or empty, is one run from the first
	// <backingStore to the last </backingStore> (or its own />).
	if b := strings.Index(disk, "<backingStore"); b >= 0 {
		e := strings.LastIndex(disk, "</backingStore>")
		if e >= 0 {
			e += len("</backingStore>")
		} else {
			e = b + strings.Index(disk[b:], ">") + 1
		}
		disk = disk[:b] + disk[e:]
	}
	done := false
	return diskSource.ReplaceAllStringFunc(disk, func(src string) string {
		if done {
			return src
		}
		done = true
		src = indexAttr.ReplaceAllString(src, "")
		return fileAttr.ReplaceAllString(src, "file='"+xmlAttr(file)+"'")
	})
}

func xmlAttr(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", "'", "&apos;", `"`, "&quot;").Replace(s)
}

// HandBack prepares the disks of domain for its move from the workstation
// back to the server: the workstation's frozen file goes to the server's
// store (only what changed since the grab) and over the file the server
// kept, which the grab's overlay there sat on.
func (s *StoreDisks) HandBack(ctx context.Context, domain string, report func(event.DiskProgress)) (_ *DiskMove, err error) {
	src, dst := s.Workstation, s.Server
	dom, disks, err := movingDisks(src, domain)
	if err != nil || len(disks) == 0 {
		return &DiskMove{}, err
	}
	home, err := dst.Lookup(domain)
	if err != nil {
		return nil, fmt.Errorf("hand back %s: the server keeps no definition of it to come home to: %w", domain, err)
	}
	kept, err := home.DefinedDisks()
	if err != nil {
		return nil, err
	}
	move := &DiskMove{}
	defer move.undoIfFailed(ctx, &err)
	frozen, moveTag, err := s.freeze(dom, move, report)
	if err != nil {
		return nil, err
	}
	for _, d := range frozen {
		overlay := d.Top().Path
		// Once the VM is home, the workstation's overlay holds nothing the
		// server lacks; the file below stays, as the next grab's base.
		move.finish = append(move.finish, func(context.Context) error { return src.DeleteVolume(overlay) })
	}
	paths := map[string]string{}
	under := map[string]libvirt.BelowOverlay{} // what each mirror writes over, on both hosts
	var targets []string
	for _, d := range frozen {
		below := d.Chain[1]
		old, ok := kept[d.Target]
		if !ok {
			return nil, fmt.Errorf("hand back %s: the server's definition has no disk %s", domain, d.Target)
		}
		serverFile := filepath.Join(filepath.Dir(old), filepath.Base(below.Path))
		s.say(report, "sending", below.Path)
		root, _, st, err := s.Chunks.PushChain(ctx, below.Path)
		if err != nil {
			return nil, fmt.Errorf("send disk %s of %s to the server: %w", d.Target, domain, err)
		}
		move.Moved.Add(st)
		s.say(report, "writing on the server", serverFile)
		if _, err := s.Images.Checkout(ctx, root, serverFile); err != nil {
			return nil, fmt.Errorf("write disk %s of %s to %s on the server: %w", d.Target, domain, serverFile, err)
		}
		pool, err := dst.EnsurePool(filepath.Dir(serverFile))
		if err != nil {
			return nil, err
		}
		s.say(report, "making the overlay", serverFile)
		overlay, err := overlayOn(dst, pool, filepath.Base(libvirt.OverlayPath(serverFile, moveTag)), libvirt.Layer{Path: serverFile, Format: below.Format})
		if err != nil {
			return nil, err
		}
		move.undo = append(move.undo, func(context.Context) error { return dst.DeleteVolume(overlay) })
		paths[d.Target] = overlay
		under[d.NBDExport()] = libvirt.BelowOverlay{Source: below.Path, Destination: serverFile}
		targets = append(targets, d.Target)
		target := d.Target
		move.finish = append(move.finish, func(ctx context.Context) error {
			s.say(report, "committing the overlay down", target)
			if err := commitOn(ctx, dst, domain, target); err != nil {
				return err
			}
			if old != serverFile {
				return dst.DeleteVolume(old) // the grab's overlay, stale now
			}
			return nil
		})
	}
	x, err := dom.MigratableXML()
	if err != nil {
		return nil, err
	}
	destXML, err := withDiskSources(x, paths)
	if err != nil {
		return nil, err
	}
	// The server's definition must follow: it still names the grab's
	// overlay, which is deleted once the VM is home.
	move.Copy = &libvirt.DiskCopy{Targets: targets, TopOnly: true, DestinationXML: destXML, PersistentXML: destXML, Below: under}
	return move, nil
}
