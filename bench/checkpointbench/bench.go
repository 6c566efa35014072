package checkpointbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/bench/diskbench"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/syncengine"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/units"
)

// Config is one run of the bench.
type Config struct {
	// Handoff is the handoff binary whose 'migrate' and 'checkpoint' the
	// bench runs.
	Handoff string
	// Links are the link rates to run at, in order ("20mbit", "1gbit").
	Links []string
	// Count is how many checkpoints each link's turn takes, Interval how
	// far apart they start (a checkpoint that takes longer is followed at
	// once by the next).
	Count    int
	Interval time.Duration
	// WorkDir holds each turn's chunk cache (the XDG_CACHE_HOME of the
	// commands it runs), removed after the turn.
	WorkDir string
	// Tries is how many times a link's turn runs, each on a fresh guest,
	// until one goes through (default 2).
	Tries int
}

// The run.
var (
	DefaultLinks    = []string{"20mbit", "1gbit"}
	DefaultCount    = 10
	DefaultInterval = 20 * time.Second
)

// TargetPause is the bound on every checkpoint's pause.
const TargetPause = 300 * time.Millisecond

// TargetBytesRatio is the bound on a checkpoint's bytes over zstd
// of the pages and blocks the guest changed since the one before.
const TargetBytesRatio = 1.5

// LabConfig is the lab the bench runs on: the disk bench's, the Debian
// desktop guest with its disk and no memory dirtied beyond its own work
// (under TCG a guest dirtying memory breaks now and then in a migration,
// and a checkpoint's memory file needs the guest moved here first).
func LabConfig(dir, handoff string, progress io.Writer) lab.Config {
	return diskbench.LabConfig(dir, handoff, 0, progress)
}

// BytesMet says whether the row's later checkpoints meet the bytes
// target, in the median.
func (r Row) BytesMet() bool {
	s := r.Summary()
	return s.Judged > 0 && s.RatioMedian <= TargetBytesRatio
}

// Row is one link's turn.
type Row struct {
	Link        string // the link's rate, as "20mbit"
	Try         int    // which try of the link's turn, from 1
	Count       int    // the checkpoints asked for
	Checkpoints []Checkpoint
	Guest       string // the guest's verdict after the last checkpoint
	Note        string // what failed, if anything did
}

// Summary figures the row's checkpoints.
func (r Row) Summary() Summary { return Summarize(r.Checkpoints) }

// Met says whether the row meets the pause target: every checkpoint
// asked for taken, each pausing less than TargetPause, the guest well.
func (r Row) Met() bool {
	s := r.Summary()
	return r.Note == "" && r.Guest == "ok" && s.N == r.Count && s.N > 0 && s.PauseWorst < TargetPause
}

// Run takes the checkpoints at each link rate in turn on l, whose guest
// must run on the server, and returns a row for each turn. A turn that
// fails or leaves the guest broken starts again on a fresh guest, up to
// Config.Tries times; the guest runs on the server after each turn that
// went through.
func Run(ctx context.Context, l *lab.Lab, cfg Config, progress io.Writer) ([]Row, error) {
	say := func(format string, a ...any) { fmt.Fprintf(progress, format+"\n", a...) }
	if cfg.Tries == 0 {
		cfg.Tries = 2
	}
	if cfg.Count < 1 {
		return nil, fmt.Errorf("checkpoint bench: %d checkpoints asked for; take at least one", cfg.Count)
	}
	var rows []Row
	var errs []error
	for _, rate := range cfg.Links {
		for try := 1; try <= cfg.Tries; try++ {
			t := &turn{l: l, cfg: cfg, rate: rate, say: say}
			row := Row{Link: rate, Try: try, Count: cfg.Count}
			err := t.run(ctx, &row)
			if err != nil {
				row.Note = err.Error()
			}
			rows = append(rows, row)
			if err == nil {
				break
			}
			say("%s, try %d: %v", rate, try, err)
			if ctx.Err() != nil {
				return rows, errors.Join(append(errs, err)...)
			}
			if try == cfg.Tries {
				errs = append(errs, fmt.Errorf("at %s, %d tries, each on a fresh guest: %w; if the guest broke, see the README's first lesson (QEMU 7.2's lost TCG writes), and run that link again alone (--links %s)", rate, try, err, rate))
			}
			say("starting the guest afresh on the server")
			if err := l.RestartGuest(ctx, l.Guest, progress); err != nil {
				return rows, errors.Join(append(errs, fmt.Errorf("start the guest afresh after a failed turn: %w", err))...)
			}
		}
	}
	return rows, errors.Join(errs...)
}

// turn is one link rate's try.
type turn struct {
	l    *lab.Lab
	cfg  Config
	rate string
	say  func(string, ...any)
	// cache and config are XDG_CACHE_HOME and XDG_CONFIG_HOME of every
	// command of the turn.
	cache, config string
}

func (t *turn) run(ctx context.Context, row *Row) error {
	l := t.l
	if _, err := l.Shape(ctx, lab.Link{Bandwidth: t.rate}); err != nil {
		return fmt.Errorf("shape the lab link to %s: %w", t.rate, err)
	}
	if g := t.guest(ctx, l.Server.Name); g != "ok" {
		return fmt.Errorf("before the move to the workstation the guest's state is %s", g)
	}
	work, err := os.MkdirTemp(t.cfg.WorkDir, "handoff-checkpointbench-")
	if err != nil {
		return fmt.Errorf("make the turn's work directory in %s: %w", t.cfg.WorkDir, err)
	}
	defer os.RemoveAll(work)
	t.cache, t.config = filepath.Join(work, "cache"), filepath.Join(work, "config")

	t.say("%s: moving the guest to the workstation", t.rate)
	if err := t.migrate(ctx, l.Workstation); err != nil {
		return err
	}
	if g := t.guest(ctx, l.Workstation.Name); g != "ok" {
		return fmt.Errorf("after the move to the workstation the guest's state is %s", g)
	}
	leases, err := l.LeaseClient()
	if err != nil {
		return fmt.Errorf("reach the lab's lease server: %w", err)
	}
	start := time.Now()
	for i := 1; i <= t.cfg.Count; i++ {
		if err := sleepUntil(ctx, start.Add(time.Duration(i-1)*t.cfg.Interval)); err != nil {
			return fmt.Errorf("waiting for checkpoint %d of %d: %w", i, t.cfg.Count, err)
		}
		cp, err := t.checkpoint(ctx, leases)
		if err != nil {
			return fmt.Errorf("checkpoint %d of %d at %s: %w", i, t.cfg.Count, t.rate, err)
		}
		row.Checkpoints = append(row.Checkpoints, cp)
		memory := "unknown"
		if cp.MemoryBytes >= 0 {
			memory = units.Bytes(uint64(cp.MemoryBytes))
		}
		t.say("%s: checkpoint %d of %d: paused %d ms, sent %s, link %s, memory file %s, %.1f s to commit",
			t.rate, i, t.cfg.Count, cp.Pause.Milliseconds(), units.Bytes(uint64(cp.Sent)), units.Bytes(uint64(cp.LinkBytes)), memory, cp.Took.Seconds())
		// A guest that died is told early, so that its turn starts again
		// without waiting out the rest; the full verdict comes last.
		if serial, err := l.GuestSerial(); err == nil && serial.Panic != "" {
			return fmt.Errorf("after checkpoint %d of %d the guest's kernel died: %s (serial log %s)", i, t.cfg.Count, serial.Panic, l.SerialLog)
		}
	}
	t.say("%s: comparing each checkpoint with the one before, in the server's store", t.rate)
	if err := References(ctx, syncengine.DirStore{Dir: l.ServerChunks()}, row.Checkpoints); err != nil {
		t.say("%s: the references could not be made: %v", t.rate, err)
	}
	for i, cp := range row.Checkpoints {
		if r := cp.Reference; r.Zstd >= 0 {
			t.say("%s: checkpoint %d changed %d pages and %d disk blocks since the one before, %s by zstd -3; the link carried %.2fx that",
				t.rate, i+1, r.Pages, r.Blocks, units.Bytes(uint64(r.Zstd)), float64(cp.LinkBytes)/float64(max(r.Zstd, 1)))
		}
	}
	row.Guest = t.guest(ctx, l.Workstation.Name)
	if row.Guest != "ok" {
		return fmt.Errorf("after %d checkpoints the guest's state is %s", t.cfg.Count, row.Guest)
	}

	t.say("%s: moving the guest home", t.rate)
	if err := t.migrate(ctx, l.Server); err != nil {
		return fmt.Errorf("the checkpoints are measured, but %w", err)
	}
	if g := t.guest(ctx, l.Server.Name); g != "ok" {
		return fmt.Errorf("the checkpoints are measured, but after the move home the guest's state is %s", g)
	}
	return nil
}

// checkpoint runs one 'handoff checkpoint', counting the link around it,
// and reads its commit's manifest back from the server.
func (t *turn) checkpoint(ctx context.Context, leases *leasectl.Client) (Checkpoint, error) {
	before, err := t.l.LinkCounts()
	if err != nil {
		return Checkpoint{}, err
	}
	out, err := t.handoff(ctx, "checkpoint", "--lab", t.l.Dir, "--json")
	if err != nil {
		return Checkpoint{}, err
	}
	after, err := t.l.LinkCounts()
	if err != nil {
		return Checkpoint{}, err
	}
	cp, err := ParseCheckpoint(out)
	if err != nil {
		return Checkpoint{}, err
	}
	cp.LinkBytes = after.Received + after.Sent - before.Received - before.Sent
	if cp.Branch != "" {
		return cp, fmt.Errorf("the server kept it as branch %s, not as a commit: the lease was lost (is another device or a grab holding it?)", cp.Branch)
	}
	// Asked after the link was counted: this call crosses it too.
	st, err := leases.Status(ctx, t.l.Domain())
	if err != nil {
		t.say("  the commit's manifest could not be read: %v", err)
		return cp, nil
	}
	if err := FromManifest(&cp, st); err != nil {
		t.say("  the commit's manifest: %v", err)
	} else if cp.ManifestSent != cp.Sent {
		t.say("  the commit's manifest says %d bytes sent, the command %d", cp.ManifestSent, cp.Sent)
	}
	return cp, nil
}

// migrate moves the guest to host with 'handoff migrate'.
func (t *turn) migrate(ctx context.Context, to lab.Host) error {
	out, err := t.handoff(ctx, "migrate", "--lab", t.l.Dir, "--json")
	if err == nil {
		err = ParseMigrate(out)
	}
	if err != nil {
		return fmt.Errorf("the move to the %s: %w", to.Name, err)
	}
	if where, err := t.l.GuestHost(ctx); err != nil {
		return fmt.Errorf("after the move to the %s: %w", to.Name, err)
	} else if where != to.Name {
		return fmt.Errorf("handoff migrate completed, yet the guest runs on %s, not the %s", where, to.Name)
	}
	return nil
}

// handoff runs the handoff binary with args and the turn's cache, and
// returns its standard output.
func (t *turn) handoff(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, t.cfg.Handoff, args...)
	// A config folder of the turn's own holds no login to a home server,
	// so the lab's server is the one the commands use.
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.cache, "XDG_CONFIG_HOME="+t.config)
	// Ctrl-C reaches the command as it reaches a user's: a migration
	// aborts with the VM left where it was, a checkpoint is not committed.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", t.cfg.Handoff, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// guest waits for the guest to tick a few more times and returns its own
// verdict on its memory and disk on host: "ok", or what is wrong.
func (t *turn) guest(ctx context.Context, host string) string {
	st, err := t.l.Status(ctx)
	if err != nil {
		return "unknown: " + err.Error()
	}
	if v := Verdict(st, host); v != "ok" {
		return v
	}
	if err := t.l.WaitTick(ctx, st.GuestTick+3, 2*time.Minute); err != nil {
		return "stopped ticking: " + err.Error()
	}
	if st, err = t.l.Status(ctx); err != nil {
		return "unknown: " + err.Error()
	}
	return Verdict(st, host)
}

// sleepUntil waits until when, or until ctx ends.
func sleepUntil(ctx context.Context, when time.Time) error {
	d := time.Until(when)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
