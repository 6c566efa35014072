package diskbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/units"
)

// Config is one run of the bench.
type Config struct {
	// Handoff is the handoff binary whose 'migrate' moves the guest.
	Handoff string
	// Links are the link rates to run at, in order ("100mbit", "1gbit").
	Links []string
	// WorkDir holds the run's chunk caches and the raw copies of the image
	// the references are made from: room for about three times what the
	// guest's disk holds.
	WorkDir string
	// Moves, if not 0, ends each link's turn after that many moves (a
	// test's short run); the turn is six: first grab, hand back, second
	// grab, hand back, virsh's copy, hand back.
	Moves int
	// Tries is how many times a link's turn runs, each on a fresh guest,
	// until one goes through (default 2): on TCG, QEMU now and then loses
	// a migrating guest's pages (see the README), which ends a turn.
	Tries int
}

// DefaultLinks are the issue's.
var DefaultLinks = []string{"100mbit", "1gbit"}

// LabConfig is the lab the bench runs on: the Debian desktop guest,
// dirtying dirtyMBps of its memory (the desktop tests dirty 0.5).
func LabConfig(dir, handoff string, dirtyMBps float64, progress io.Writer) lab.Config {
	return lab.Config{Dir: dir, Handoff: handoff, Progress: progress, GuestKind: lab.Desktop,
		Guest: lab.GuestConfig{MemMB: lab.DesktopMemMB, DirtyMBps: dirtyMBps, WSSMB: 32}}
}

// Move is one of the moves a run makes at each link rate.
type Move string

const (
	FirstGrab  Move = "first grab (cold)"
	HandBack   Move = "hand back"
	SecondGrab Move = "second grab"
	VirshCopy  Move = "virsh --copy-storage-all"
)

// Row is one measured move.
type Row struct {
	Link string // the link's rate, as "100mbit"
	Try  int    // which try of the link's turn, from 1
	Move Move
	Tool string // "handoff" or "virsh"
	// Running is from the command's start until the VM ran on the
	// destination.
	Running time.Duration
	// DiskBytes is handoff's own count of the disk's transfer (migrate's
	// disk_bytes); -1 for virsh, which counts none.
	DiskBytes int64
	// Split is what crossed the link during the move, by stream;
	// LinkBytes the link's own count, both ways, frames whole.
	Split     Split
	LinkBytes int64
	// Reference is the yardstick for Split.Disk(); zero when the move has
	// none (a hand back).
	Reference Reference
	Guest     string // the guest's verdict afterwards: "ok", or what is wrong
	Note      string
}

// Ratio is the disk's bytes on the link over the reference; 0 without one.
func (r Row) Ratio() float64 {
	if r.Reference.Zstd == 0 {
		return 0
	}
	return float64(r.Split.Disk()) / float64(r.Reference.Zstd)
}

// TargetRatio is the bound for a grab's disk bytes over its
// reference.
const TargetRatio = 1.3

// Judged says whether r is a row the issue sets a target for.
func (r Row) Judged() bool { return r.Move == FirstGrab || r.Move == SecondGrab }

// Met says whether a judged row meets its target.
func (r Row) Met() bool {
	return r.Guest == "ok" && r.Reference.Zstd > 0 && r.Ratio() <= TargetRatio
}

// Run makes the moves at each link rate in turn on l, whose guest must run
// on the server, and returns a row for each. A move that fails, or leaves
// the guest broken, ends its link's try: the guest starts afresh on the
// server, and the turn begins again, up to Config.Tries times.
func Run(ctx context.Context, l *lab.Lab, cfg Config, progress io.Writer) ([]Row, error) {
	say := func(format string, a ...any) { fmt.Fprintf(progress, format+"\n", a...) }
	if cfg.Tries == 0 {
		cfg.Tries = 2
	}
	login, err := l.ServeLogin()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(login.URL)
	if err != nil {
		return nil, fmt.Errorf("the lab's serve URL %q: %w", login.URL, err)
	}
	storePort, err := strconv.Atoi(u.Port())
	if err != nil {
		return nil, fmt.Errorf("the lab's serve URL %q names no port", login.URL)
	}
	cnt, err := startCounters(ctx, l.Workstation.Netns, l.Workstation.Dev, storePort)
	if err != nil {
		return nil, err
	}
	defer cnt.stop(context.WithoutCancel(ctx))
	var rows []Row
	var errs []error
	for _, rate := range cfg.Links {
		for try := 1; try <= cfg.Tries; try++ {
			r := &run{l: l, cfg: cfg, cnt: cnt, rate: rate, try: try, say: say}
			err := r.all(ctx)
			rows = append(rows, r.rows...)
			if err == nil {
				break
			}
			say("%s, try %d: %v", rate, try, err)
			if ctx.Err() != nil {
				return rows, errors.Join(append(errs, err)...)
			}
			if try == cfg.Tries {
				errs = append(errs, fmt.Errorf("at %s, %d tries: %w", rate, try, err))
			}
			say("starting the guest afresh on the server")
			if err := l.RestartGuest(ctx, l.Guest, progress); err != nil {
				return rows, errors.Join(append(errs, err)...)
			}
		}
	}
	return rows, errors.Join(errs...)
}

// run is one link rate's turn.
type run struct {
	l    *lab.Lab
	cfg  Config
	cnt  *counters
	rate string
	try  int
	say  func(string, ...any)
	rows []Row
}

func (r *run) all(ctx context.Context) error {
	l := r.l
	if _, err := l.Shape(ctx, lab.Link{Bandwidth: r.rate}); err != nil {
		return err
	}
	if g := guestAfter(ctx, l, l.Server.Name); g != "ok" {
		return fmt.Errorf("before the first grab the guest %s", g)
	}
	work, err := os.MkdirTemp(r.cfg.WorkDir, "handoff-diskbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	cache := filepath.Join(work, "cache")
	first, second, copied := filepath.Join(work, "first.raw"), filepath.Join(work, "second.raw"), filepath.Join(work, "virsh.raw")
	// What the workstation had to receive is the disk as it was at the
	// switch: the server keeps it as the file a grab froze under the
	// overlay the grab left there (the writes during the move, which the
	// mirror carried), or as virsh left it.
	took := func(raw string) error { return RawImage(ctx, atSwitch(l.GuestDisk), raw) }
	home := func() error { return r.handoff(ctx, HandBack, cache, l.Server, nil) }
	steps := []func() error{
		func() error {
			// Cold: a new cache, and nothing on the workstation to start from.
			if err := r.clearWorkstation(); err != nil {
				return err
			}
			return r.handoff(ctx, FirstGrab, cache, l.Workstation, func() (Reference, error) {
				if err := took(first); err != nil {
					return Reference{}, err
				}
				return Changed(ctx, "", first)
			})
		},
		home,
		func() error {
			return r.handoff(ctx, SecondGrab, cache, l.Workstation, func() (Reference, error) {
				if err := took(second); err != nil {
					return Reference{}, err
				}
				return Changed(ctx, first, second)
			})
		},
		home,
		func() error {
			os.Remove(first)
			os.Remove(second)
			if err := r.clearWorkstation(); err != nil {
				return err
			}
			return r.virsh(ctx, work, func() (Reference, error) {
				if err := took(copied); err != nil {
					return Reference{}, err
				}
				defer os.Remove(copied)
				return Changed(ctx, "", copied)
			})
		},
		home,
	}
	if r.cfg.Moves > 0 && r.cfg.Moves < len(steps) {
		steps = steps[:r.cfg.Moves]
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// atSwitch is the server's view of its disk as a grab left it: the
// overlay beside image (its backing chain the rest), or image alone.
func atSwitch(image string) string {
	overlays, _ := filepath.Glob(strings.TrimSuffix(image, filepath.Ext(image)) + ".h*.qcow2")
	newest, when := image, time.Time{}
	for _, o := range overlays {
		if fi, err := os.Stat(o); err == nil && fi.ModTime().After(when) {
			newest, when = o, fi.ModTime()
		}
	}
	return newest
}

// clearWorkstation removes the images the workstation holds.
func (r *run) clearWorkstation() error {
	names, err := filepath.Glob(filepath.Join(r.l.WorkstationImages, "*"))
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := os.Remove(n); err != nil {
			return fmt.Errorf("clear the workstation's images: %w", err)
		}
	}
	return nil
}

// measure counts the link around move, checks the guest on host after it,
// and keeps the row; reference, if any, is made after the move.
func (r *run) measure(ctx context.Context, row Row, host string, move func(*Row) error, reference func() (Reference, error)) error {
	r.say("%s: %s", r.rate, row.Move)
	split0, err := r.cnt.read(ctx)
	if err != nil {
		return err
	}
	link0, err := r.l.LinkCounts()
	if err != nil {
		return err
	}
	moveErr := move(&row)
	split1, err := r.cnt.read(ctx)
	if err != nil {
		return err
	}
	link1, err := r.l.LinkCounts()
	if err != nil {
		return err
	}
	row.Link, row.Try = r.rate, r.try
	row.Split = split1.Sub(split0)
	row.LinkBytes = link1.Received + link1.Sent - link0.Received - link0.Sent
	if moveErr != nil {
		row.Note = moveErr.Error()
		r.rows = append(r.rows, row)
		return fmt.Errorf("%s: %w", row.Move, moveErr)
	}
	row.Guest = guestAfter(ctx, r.l, host)
	if reference != nil {
		if row.Reference, err = reference(); err != nil {
			r.rows = append(r.rows, row)
			return err
		}
	}
	r.say("  running there after %.1f s; disk %s on the link (%s of it NBD; handoff's count %s), memory %s, link %s; reference %s; guest %s",
		row.Running.Seconds(), units.Bytes(uint64(row.Split.Disk())), units.Bytes(uint64(row.Split.NBD)), units.Bytes(uint64(max(row.DiskBytes, 0))),
		units.Bytes(uint64(row.Split.Memory)), units.Bytes(uint64(row.LinkBytes)), units.Bytes(uint64(row.Reference.Zstd)), row.Guest)
	r.rows = append(r.rows, row)
	if row.Guest != "ok" {
		return fmt.Errorf("after the %s the guest's state is %s", row.Move, row.Guest)
	}
	return nil
}

func (r *run) handoff(ctx context.Context, m Move, cache string, to lab.Host, reference func() (Reference, error)) error {
	return r.measure(ctx, Row{Move: m, Tool: "handoff"}, to.Name, func(row *Row) error {
		running, res, err := handoffMove(ctx, r.l, r.cfg.Handoff, cache, to)
		row.Running, row.DiskBytes = running, res.DiskBytes
		return err
	}, reference)
}

func (r *run) virsh(ctx context.Context, work string, reference func() (Reference, error)) error {
	return r.measure(ctx, Row{Move: VirshCopy, Tool: "virsh", DiskBytes: -1}, r.l.Workstation.Name, func(row *Row) error {
		running, err := virshMove(ctx, r.l, work)
		row.Running = running
		return err
	}, reference)
}
