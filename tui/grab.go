package tui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/libvirt/switchover"
	"github.com/handoff-dev/handoff/vnc"
)

// Host is one end of a grab: a libvirt connection and how to migrate to it.
type Host struct {
	Name string        // "server" or "workstation", as the dashboard says
	Conn *libvirt.Conn // the caller's; Grab does not close it
	// Migrate are the options for a migration *to* this host.
	Migrate libvirt.Options
}

// GrabOptions configure Grab.
type GrabOptions struct {
	Server, Workstation Host
	Domain              string
	In                  io.Reader
	Out                 io.Writer
	// Lease, when set, is taken before the VM moves here, renewed while it
	// runs here, and released when it is handed back.
	Lease *leasectl.Keeper
}

// Grab runs the terminal app: it shows the VM's screen at once, moves the
// VM from the server to the workstation under it, follows it there, and
// hands it back on the user's word. It returns when the user quits.
func Grab(ctx context.Context, o GrabOptions) error {
	s := &grabSession{o: o, handBack: make(chan struct{}, 1)}
	return s.run(ctx, s, s.drive)
}

// run shows the app on the terminal while work runs beside it, and stops
// work when the user quits.
func (s *grabSession) run(ctx context.Context, control Controller, work func(context.Context)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	model := NewModel(Options{Domain: s.o.Domain, Keys: s, Control: control})
	s.prog = tea.NewProgram(model, tea.WithAltScreen(), tea.WithContext(ctx), tea.WithInput(s.o.In), tea.WithOutput(s.o.Out))
	var wg sync.WaitGroup
	wg.Go(func() { work(ctx) })
	_, err := s.prog.Run()
	cancel()
	wg.Wait()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		err = nil
	}
	return err
}

// grabSession is the app's link to libvirt and VNC: it owns the current
// view and migration, and carries out the model's commands.
type grabSession struct {
	o        GrabOptions
	prog     *tea.Program
	handBack chan struct{}

	lease     leasectl.Lease
	stopLease context.CancelFunc
	leaseDone chan struct{}

	mu        sync.Mutex
	view      *vnc.Client
	stopView  context.CancelFunc
	viewDone  chan struct{}
	migration *libvirt.Migration
	here      bool // the VM runs on the workstation
}

// Tap sends a key to the VM's current screen.
func (s *grabSession) Tap(keysym uint32, mods vnc.Modifiers) error {
	s.mu.Lock()
	v := s.view
	s.mu.Unlock()
	if v == nil {
		return errors.New("no screen to type into yet")
	}
	return v.Tap(keysym, mods)
}

// SwitchNow switches the running migration by post-copy.
func (s *grabSession) SwitchNow() error {
	s.mu.Lock()
	m := s.migration
	s.mu.Unlock()
	if m == nil {
		return errors.New("no migration under way to switch")
	}
	return m.PostCopy()
}

// HandBack asks for the VM to move back to the server.
func (s *grabSession) HandBack() error {
	s.mu.Lock()
	here, busy := s.here, s.migration != nil
	s.mu.Unlock()
	if !here || busy {
		return errors.New("the VM is not running here: nothing to hand back")
	}
	select {
	case s.handBack <- struct{}{}:
	default:
	}
	return nil
}

// Abort stops the migration under way; the VM keeps running where it was.
func (s *grabSession) Abort() error {
	s.mu.Lock()
	m := s.migration
	s.mu.Unlock()
	if m == nil {
		return nil
	}
	if err := m.Abort(); err != nil {
		return err
	}
	<-m.Done()
	return nil
}

func (s *grabSession) fail(err error) {
	s.prog.Send(PhaseMsg{Phase: PhaseFailed, Err: err})
}

// drive is the grab itself, from connecting to the hand back.
func (s *grabSession) drive(ctx context.Context) {
	defer s.closeView()
	defer s.stopRenewing()
	srv, ws := s.o.Server, s.o.Workstation
	here, err := runsOn(ws.Conn, s.o.Domain)
	if err != nil {
		s.fail(err)
		return
	}
	if !here {
		if there, err := runsOn(srv.Conn, s.o.Domain); err != nil || !there {
			s.fail(fmt.Errorf("%s runs on neither host: start it on the server (virsh -c '%s' start %s)", s.o.Domain, srv.Conn.URI(), s.o.Domain))
			return
		}
		if err := s.showView(ctx, srv.Conn); err != nil {
			s.fail(err)
			return
		}
		if err := s.takeLease(ctx); err != nil {
			s.fail(err)
			return
		}
		if !s.move(ctx, srv, ws, PhaseCopying) {
			s.releaseLease(ctx)
			return
		}
	} else if err := s.takeLease(ctx); err != nil {
		s.prog.Send(ErrMsg{err})
	}
	s.arrived(ctx, ws, true)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.handBack:
		}
		if s.move(ctx, ws, srv, PhaseHandingBack) {
			s.releaseLease(ctx)
			s.arrived(ctx, srv, false)
		}
	}
}

// takeLease acquires the image's lease (when the server keeps leases) and
// keeps renewing it in a goroutine the session owns.
func (s *grabSession) takeLease(ctx context.Context) error {
	k := s.o.Lease
	if k == nil {
		return nil
	}
	l, err := k.Acquire(ctx)
	if err != nil {
		return err
	}
	s.lease = l
	s.prog.Send(LeaseMsg{Holder: l.Holder, Epoch: l.Epoch, Expires: l.Expires})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	s.stopLease, s.leaseDone = stop, done
	updates := make(chan leasectl.Lease, 1)
	go func() {
		defer close(done)
		errs := make(chan error, 1)
		go func() { errs <- k.Renew(rctx, l, updates) }()
		for {
			select {
			case l := <-updates:
				s.prog.Send(LeaseMsg{Holder: l.Holder, Epoch: l.Epoch, Expires: l.Expires})
			case err := <-errs:
				if rctx.Err() == nil {
					s.prog.Send(ErrMsg{err})
					s.prog.Send(LeaseMsg{})
				}
				return
			}
		}
	}()
	return nil
}

func (s *grabSession) stopRenewing() {
	if s.stopLease != nil {
		s.stopLease()
		<-s.leaseDone
		s.stopLease = nil
	}
}

// releaseLease ends the lease once the VM is back on the server.
func (s *grabSession) releaseLease(ctx context.Context) {
	if s.o.Lease == nil || s.stopLease == nil {
		return
	}
	s.stopRenewing()
	if err := s.o.Lease.Client.Release(ctx, s.o.Lease.Image, s.lease.ID); err != nil {
		s.prog.Send(ErrMsg{fmt.Errorf("release the lease: %w", err)})
	}
	s.prog.Send(LeaseMsg{})
}

// arrived shows the VM where it now runs.
func (s *grabSession) arrived(ctx context.Context, h Host, here bool) {
	s.mu.Lock()
	s.here = here
	s.mu.Unlock()
	phase := PhaseLocal
	if !here {
		phase = PhaseOnServer
	}
	s.prog.Send(PhaseMsg{Phase: phase, Host: h.Name})
	if err := s.showView(ctx, h.Conn); err != nil {
		s.prog.Send(ErrMsg{err})
	}
}

// move migrates the VM from one host to the other under the view; it
// reports whether the VM arrived.
func (s *grabSession) move(ctx context.Context, from, to Host, phase Phase) bool {
	s.prog.Send(PhaseMsg{Phase: phase, Host: from.Name, From: from.Name, To: to.Name})
	m, err := libvirt.Start(ctx, from.Conn, to.Conn, s.o.Domain, to.Migrate)
	if err != nil {
		s.prog.Send(PhaseMsg{Phase: PhaseFailed, Host: from.Name, Err: err})
		return false
	}
	s.mu.Lock()
	s.migration = m
	s.mu.Unlock()
	res, err := libvirt.Run(m, func(p libvirt.Progress) {
		s.prog.Send(ProgressMsg{Sample: p.Sample, Decision: p.Decision})
		if p.Sample.Phase == switchover.PhasePostcopy {
			s.prog.Send(PhaseMsg{Phase: PhaseSwitching, Host: to.Name, From: from.Name, To: to.Name})
		}
	})
	s.mu.Lock()
	s.migration = nil
	s.mu.Unlock()
	if err != nil {
		p := PhaseFailed
		if errors.Is(err, libvirt.ErrAborted) {
			p = PhaseAborted
		}
		s.prog.Send(PhaseMsg{Phase: p, Host: from.Name, Err: err})
		return false
	}
	s.prog.Send(SwitchedMsg{Downtime: res.Downtime, Mode: res.Mode})
	return true
}

func runsOn(c *libvirt.Conn, domain string) (bool, error) {
	d, err := c.Lookup(domain)
	if errors.Is(err, libvirt.ErrNoDomain) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	st, err := d.State()
	return st == libvirt.StateRunning || st == libvirt.StatePaused, err
}

// showView replaces the view with the domain's screen on c.
func (s *grabSession) showView(ctx context.Context, c *libvirt.Conn) error {
	s.closeView()
	d, err := c.Lookup(s.o.Domain)
	if err != nil {
		return err
	}
	addr, err := d.VNC()
	if err != nil {
		return err
	}
	vctx, stop := context.WithCancel(ctx)
	v, err := vnc.Connect(vctx, vnc.Options{Dial: func(ctx context.Context) (net.Conn, error) { return c.DialVNC(ctx, addr) }})
	if err != nil {
		stop()
		return fmt.Errorf("show the screen of %s on %s: %w", s.o.Domain, c.URI(), err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.view, s.stopView, s.viewDone = v, stop, done
	s.mu.Unlock()
	go func() {
		defer close(done)
		for f := range v.Frames() {
			s.prog.Send(FrameMsg(f))
		}
	}()
	return nil
}

func (s *grabSession) closeView() {
	s.mu.Lock()
	v, stop, done := s.view, s.stopView, s.viewDone
	s.view, s.stopView, s.viewDone = nil, nil, nil
	s.mu.Unlock()
	if v == nil {
		return
	}
	stop()
	v.Close()
	<-done
}

// View runs the app on one domain's screen alone: no migration, keys
// forwarded. It returns when the user quits.
func View(ctx context.Context, c *libvirt.Conn, domain string, in io.Reader, out io.Writer) error {
	s := &grabSession{o: GrabOptions{Domain: domain, In: in, Out: out}}
	return s.run(ctx, viewOnly{}, func(ctx context.Context) {
		defer s.closeView()
		if err := s.showView(ctx, c); err != nil {
			s.fail(err)
		} else {
			s.prog.Send(PhaseMsg{Phase: PhaseViewing, Host: c.URI()})
		}
		<-ctx.Done()
	})
}

// viewOnly refuses the commands that move a VM.
type viewOnly struct{}

var errViewOnly = errors.New("this is a view only: use handoff grab to move the VM")

func (viewOnly) SwitchNow() error { return errViewOnly }
func (viewOnly) HandBack() error  { return errViewOnly }
func (viewOnly) Abort() error     { return nil }
