package checkout

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/handoff-dev/handoff/checkout/event"
)

// Host is one machine the VM can run on.
type Host interface {
	URI() string
	// Runs reports whether domain runs (or is paused) on this host.
	Runs(ctx context.Context, domain string) (bool, error)
	// Screen finds domain's screen on this host.
	Screen(ctx context.Context, domain string) (event.Dial, error)
	// MigrateTo starts moving domain from this host to the other one,
	// with the disks as prepared.
	MigrateTo(ctx context.Context, to Host, domain string, disks Prepared) (Migration, error)
}

// Migration is one running job.
type Migration interface {
	// Run reports progress until the job ends; its error wraps ErrAborted
	// when the job stopped before the switch.
	Run(progress func(event.Progress)) (Result, error)
	// Plan says how the job means to go, in words.
	Plan() string
	PostCopy() error
	Abort() error
}

// Keeper holds the image's lease on the home server.
type Keeper interface {
	// Acquire takes the lease; refused while another device holds it.
	Acquire(ctx context.Context) (Lease, error)
	// Renew keeps l alive until ctx ends, calling renewed for each renewal;
	// it returns ctx's error, or why the lease was lost.
	Renew(ctx context.Context, l Lease, renewed func(Lease)) error
	Release(ctx context.Context, l Lease) error
}

// DiskMover moves a domain's disks around each migration: before it, the
// top layer is frozen and the frozen chain synced, and the destination's
// overlay made; after the switch, layers are committed back down; on an
// abort or a failure, everything Prepare did is undone.
type DiskMover interface {
	// Prepare readies the disks for move, calling report as bytes move.
	// On an error it leaves nothing behind.
	Prepare(ctx context.Context, move Move, report func(DiskProgress)) (Prepared, error)
}

// DiskProgress is a disk move's report, as the UI hears it.
type DiskProgress = event.DiskProgress

// Checkpointer commits the VM running here back to the server: its
// memory and disks at one instant, under the lease (fenced by its epoch),
// or, with no lease held, as a branch.
type Checkpointer interface {
	// Checkpoint's error wraps ErrQueued when the checkpoint was taken and
	// kept for later; its event then says since when.
	Checkpoint(ctx context.Context, domain string, held Lease) (event.Checkpoint, error)
	// Settle drops a checkpoint still queued, before the VM leaves.
	Settle(ctx context.Context) error
}

// Prepared is a disk move ready for its migration. An implementation may
// also shape the migration itself (which disks it copies, and how): the
// Host's MigrateTo is handed it and looks for what it knows.
type Prepared interface {
	// Finish settles the disks once the VM runs on the destination.
	Finish(ctx context.Context) error
	// Undo restores the disks as they were before Prepare.
	Undo(ctx context.Context) error
}

// NoDisks is the DiskMover for domains without disks to move.
type NoDisks struct{}

func (NoDisks) Prepare(context.Context, Move, func(DiskProgress)) (Prepared, error) {
	return NoDisks{}, nil
}
func (NoDisks) Finish(context.Context) error { return nil }
func (NoDisks) Undo(context.Context) error   { return nil }

// Config sets up a checkout.
type Config struct {
	Domain              string
	Server, Workstation Host
	// Lease, when set, is taken before the VM moves here, renewed while it
	// runs here, and released once it is handed back. Nil: a read-only
	// checkout.
	Lease Keeper
	Disks DiskMover // nil: the domain has no disks to move (NoDisks)
	// Checkpoints, when set, commits the VM back to the server every
	// CheckpointEvery while it runs here under the lease.
	Checkpoints     Checkpointer
	CheckpointEvery time.Duration
	Now             func() time.Time
	// Grace bounds the unwinding (abort, undo, release) after Run's
	// context ends; then its I/O is cancelled. Default 30 s.
	Grace time.Duration
}

// Checkout is one VM's trip to this machine and back. Run drives it; the
// UI reads Events and sends the user's commands.
type Checkout struct {
	cfg    Config
	state  State
	cmds   chan command
	events chan event.Event
	done   chan struct{}
	ran    atomic.Bool
}

type command struct {
	in    Input
	reply chan error
}

// New makes a checkout of cfg.Domain from cfg.Server to cfg.Workstation.
func New(cfg Config) *Checkout {
	st := NewState(cfg.Domain, cfg.Lease != nil, cfg.Disks != nil)
	if cfg.Checkpoints != nil {
		st.CheckpointEvery = cfg.CheckpointEvery
	}
	return newCheckout(cfg, st)
}

// View makes a checkout that only shows domain's screen on host.
func View(host Host, domain string) *Checkout {
	return newCheckout(Config{Domain: domain, Server: host}, NewViewState(domain, host.URI()))
}

func newCheckout(cfg Config, st State) *Checkout {
	if cfg.Disks == nil {
		cfg.Disks = NoDisks{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	return &Checkout{cfg: cfg, state: st, cmds: make(chan command), events: make(chan event.Event), done: make(chan struct{})}
}

// Events delivers what happens, in order; closed when Run returns.
func (c *Checkout) Events() <-chan event.Event { return c.events }

// SwitchNow switches the migration under way by post-copy.
func (c *Checkout) SwitchNow() error { return c.ask(SwitchNow{}) }

// HandBack moves the VM back to the server.
func (c *Checkout) HandBack() error { return c.ask(HandBack{}) }

// Abort stops the move under way; the VM keeps running where it was.
func (c *Checkout) Abort() error { return c.ask(Abort{}) }

// Quit ends the checkout: a move under way is aborted (or, past the
// switch, finished) first. Run returns once it has.
func (c *Checkout) Quit() error { return c.ask(Quit{}) }

func (c *Checkout) ask(in Input) error {
	r := command{in: in, reply: make(chan error, 1)}
	select {
	case c.cmds <- r:
		return <-r.reply
	case <-c.done:
		return errors.New("the checkout has ended")
	}
}

// Run drives the checkout until it is quit, or ctx ends (which quits it,
// then cancels what is left after Config.Grace). Every goroutine it starts
// has ended when it returns. Run runs once.
func (c *Checkout) Run(ctx context.Context) error {
	if !c.ran.CompareAndSwap(false, true) {
		return errors.New("the checkout has run already")
	}
	defer close(c.done)
	defer close(c.events)
	work, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	d := &driver{cfg: c.cfg, st: c.state, work: work, inputs: make(chan Input), timer: time.NewTimer(time.Hour)}
	d.timer.Stop()
	defer d.timer.Stop()
	d.step(Begin{}, nil)

	cmds, ended := c.cmds, ctx.Done()
	var grace <-chan time.Time
	for !d.st.Stopped() || d.tasks > 0 {
		out, head := d.out.head(c.events)
		select {
		case out <- head:
			d.out.pop()
		case in := <-d.inputs:
			if t, ok := in.(taskDone); ok {
				d.tasks--
				if in = t.in; in == nil {
					continue
				}
			}
			d.step(in, nil)
		case cmd := <-cmds:
			d.step(cmd.in, cmd.reply)
		case <-d.timer.C:
			d.step(Tick{}, nil)
		case <-ended:
			ended = nil
			d.step(Quit{}, nil)
			grace = time.After(c.cfg.Grace)
		case <-grace:
			hardStop()
		}
		if d.st.Stopped() {
			cmds = nil
		}
	}
	return nil
}

// driver carries out the core's actions; all of its fields belong to the
// Run loop, and its goroutines talk back only through inputs.
type driver struct {
	cfg    Config
	st     State
	work   context.Context // all I/O: outlives Run's context by the grace
	inputs chan Input
	tasks  int // goroutines whose last input is still due
	out    outbox
	timer  *time.Timer

	held      context.Context // work under the lease; cancelled when it is lost
	dropHeld  context.CancelFunc
	stopRenew context.CancelFunc
	renewed   chan struct{} // closed when the renewing goroutine has ended

	migration Migration
	prepared  Prepared
}

// taskDone carries a goroutine's last input (nil: none).
type taskDone struct{ in Input }

func (taskDone) input() {}

// Inputs of the driver's own, handled before the core sees them.
type (
	screenFound struct {
		on   Side
		dial event.Dial
		err  error
	}
	migrationUp struct{ m Migration }
	disksReady  struct {
		p   Prepared
		err error
	}
)

func (screenFound) input() {}
func (migrationUp) input() {}
func (disksReady) input()  {}

// spawn runs f in a goroutine whose result is its last input.
func (d *driver) spawn(f func() Input) {
	d.tasks++
	go func() { d.inputs <- taskDone{f()} }()
}

// send hands an input from a goroutine to the loop, which reads inputs as
// long as any goroutine runs.
func (d *driver) send(in Input) { d.inputs <- in }

func (d *driver) step(in Input, reply chan error) {
	switch x := in.(type) {
	case screenFound:
		if x.err == nil {
			h := d.host(x.on)
			d.out.put(event.Screen{Host: d.st.name(x.on), URI: h.URI(), Dial: x.dial})
		}
		in = ScreenShown{On: x.on, Err: x.err}
	case migrationUp:
		d.migration = x.m
		in = MigrationStarted{Plan: x.m.Plan()}
	case disksReady:
		d.prepared = x.p
		in = DisksPrepared{Err: x.err}
	case MigrationEnded:
		d.migration = nil
	}
	st, acts, err := Step(d.st, in, d.cfg.Now())
	if err != nil {
		if reply != nil {
			reply <- err
		}
		return
	}
	d.st = st
	for _, a := range acts {
		if d.do(a, reply) {
			reply = nil
		}
	}
	if reply != nil {
		reply <- nil
	}
}

func (d *driver) host(s Side) Host {
	if s == Workstation {
		return d.cfg.Workstation
	}
	return d.cfg.Server
}

// ctxFor is the context of a move's work: a move here runs under the lease.
func (d *driver) ctxFor(m Move) context.Context {
	if m.there() && d.held != nil {
		return d.held
	}
	return d.work
}

// do performs one action; it reports whether it took the reply.
func (d *driver) do(a Action, reply chan error) bool {
	domain := d.cfg.Domain
	switch a := a.(type) {
	case Emit:
		d.out.put(a.Event)
	case Locate:
		srv, ws := d.cfg.Server, d.cfg.Workstation
		d.spawn(func() Input {
			here, err := ws.Runs(d.work, domain)
			if err != nil {
				return Located{Err: err}
			}
			if here {
				return Located{Where: Workstation}
			}
			if there, err := srv.Runs(d.work, domain); err != nil || !there {
				return Located{Err: fmt.Errorf("%s runs on neither host: start it on the server (virsh -c '%s' start %s)", domain, srv.URI(), domain)}
			}
			return Located{Where: Server}
		})
	case ShowScreen:
		h := d.host(a.On)
		d.spawn(func() Input {
			dial, err := h.Screen(d.work, domain)
			return screenFound{on: a.On, dial: dial, err: err}
		})
	case AcquireLease:
		k := d.cfg.Lease
		d.spawn(func() Input {
			l, err := k.Acquire(d.work)
			if err != nil {
				return LeaseRefused{Err: err}
			}
			return LeaseTaken{Lease: l}
		})
	case RenewLease:
		d.held, d.dropHeld = context.WithCancel(d.work)
		rctx, stop := context.WithCancel(d.held)
		done := make(chan struct{})
		d.stopRenew, d.renewed = stop, done
		k := d.cfg.Lease
		d.spawn(func() Input {
			defer close(done)
			err := k.Renew(rctx, a.Lease, func(l Lease) { d.send(LeaseRenewed{Lease: l}) })
			if rctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("renewing the lease stopped")
			}
			return LeaseLost{Err: err}
		})
	case StopRenewing:
		d.endRenewing()
	case DropLease:
		d.endRenewing()
		if d.dropHeld != nil {
			d.dropHeld()
		}
	case ReleaseLease:
		renewed := d.renewed
		d.endRenewing()
		k := d.cfg.Lease
		d.spawn(func() Input {
			if renewed != nil {
				<-renewed // no renewal may race the release
			}
			return LeaseReleased{Err: k.Release(d.work, a.Lease)}
		})
		if d.dropHeld != nil {
			d.dropHeld()
			d.held, d.dropHeld = nil, nil
		}
	case ArmTimer:
		d.timer.Stop()
		d.timer.Reset(max(0, a.At.Sub(d.cfg.Now())))
	case PrepareDisks:
		ctx, mover, cp := d.ctxFor(a.Move), d.cfg.Disks, d.cfg.Checkpoints
		d.spawn(func() Input {
			if cp != nil && !a.Move.there() {
				if err := cp.Settle(ctx); err != nil {
					return disksReady{err: err}
				}
			}
			p, err := mover.Prepare(ctx, a.Move, func(p event.DiskProgress) { d.send(DisksProgressed{Progress: p}) })
			return disksReady{p: p, err: err}
		})
	case StartMigration:
		ctx, from, to, disks := d.ctxFor(a.Move), d.host(a.Move.From), d.host(a.Move.To), d.prepared
		d.spawn(func() Input {
			m, err := from.MigrateTo(ctx, to, domain, disks)
			if err != nil {
				return MigrationStarted{Err: err}
			}
			d.send(migrationUp{m})
			res, err := m.Run(func(p event.Progress) { d.send(MigrationProgressed{Progress: p}) })
			return MigrationEnded{Result: res, Err: err}
		})
	case PostCopy, AbortMigration:
		m := d.migration
		if m == nil {
			return false
		}
		d.spawn(func() Input {
			var err error
			if _, ok := a.(PostCopy); ok {
				err = m.PostCopy()
			} else {
				err = m.Abort()
			}
			if reply != nil {
				reply <- err
			}
			return nil
		})
		return true
	case FinishDisks:
		ctx, p := d.ctxFor(a.Move), d.prepared
		d.spawn(func() Input { return DisksFinished{Err: p.Finish(ctx)} })
	case TakeCheckpoint:
		// Not under the lease's context: once the lease is lost, the
		// checkpoint is still taken and kept, as a branch.
		cp := d.cfg.Checkpoints
		d.spawn(func() Input {
			c, err := cp.Checkpoint(d.work, domain, a.Lease)
			return CheckpointTaken{Checkpoint: c, Err: err}
		})
	case UndoDisks:
		p := d.prepared
		d.prepared = nil
		if p == nil { // Prepare never answered with one: nothing to undo
			d.spawn(func() Input { return DisksUndone{} })
			break
		}
		d.spawn(func() Input { return DisksUndone{Err: p.Undo(d.work)} })
	case Stop:
		d.endRenewing()
	}
	return false
}

func (d *driver) endRenewing() {
	if d.stopRenew != nil {
		d.stopRenew()
		d.stopRenew, d.renewed = nil, nil
	}
}
