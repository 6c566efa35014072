package tui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/vnc"
)

// Checkout is what the app drives: a checkout's events, drawn as they
// come, and the user's commands (checkout.Checkout is one).
type Checkout interface {
	Controller
	// Run drives the checkout until it is quit or ctx ends.
	Run(ctx context.Context) error
	// Events delivers what happens; closed when Run returns.
	Events() <-chan event.Event
	// Quit ends the checkout, aborting (or, past the switch, finishing) a
	// move under way.
	Quit() error
}

// GrabOptions configure Grab and View.
type GrabOptions struct {
	Domain string
	In     io.Reader
	Out    io.Writer
	// Graphics is how the screen is drawn: auto, kitty, sixel, iterm, blocks.
	Graphics string
}

// Grab runs the terminal app on a checkout: the VM's screen shows at once,
// the checkout moves the VM here under it, the view follows it, and the
// user's commands go to the checkout. It returns when the user quits and
// the checkout has ended.
func Grab(ctx context.Context, co Checkout, o GrabOptions) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sc := &screen{domain: o.Domain}
	model := NewModel(Options{Domain: o.Domain, Keys: sc, Control: co})
	prog, err := NewProgram(ctx, model, Terminal{In: o.In, Out: o.Out, Graphics: o.Graphics})
	if err != nil {
		return err
	}
	sc.prog = prog
	ran := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(ran)
		if err := co.Run(ctx); err != nil {
			prog.Send(ErrMsg{err})
		}
	})
	wg.Go(func() { sc.follow(ctx, co.Events()) })
	_, err = prog.Run()
	// The user quit (after confirming an abort): the checkout unwinds
	// what is under way before the app's goroutines stop.
	_ = co.Quit()
	select {
	case <-ran:
	case <-time.After(time.Second):
		// Past the switch a move can only finish; say why the terminal waits.
		fmt.Fprintf(o.Out, "handoff: waiting for the move of %s under way to end (past its switch it cannot go back)\n", o.Domain)
		<-ran
	}
	cancel()
	wg.Wait()
	sc.close()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		err = nil
	}
	return err
}

// View runs the app on a checkout that only shows a screen
// (checkout.View): keys go to the VM, nothing moves.
func View(ctx context.Context, co Checkout, o GrabOptions) error { return Grab(ctx, co, o) }

// message is the model's message for a checkout's event; nil for the
// screen, which the app connects itself.
func message(ev event.Event) tea.Msg {
	switch ev := ev.(type) {
	case event.PhaseChanged:
		return PhaseMsg{Phase: Phase(ev.Phase), Host: ev.Host, From: ev.From, To: ev.To, Err: ev.Err}
	case event.Progress:
		return ProgressMsg{Sample: ev.Sample, Decision: ev.Decision}
	case event.DiskProgress:
		return DiskProgressMsg(ev)
	case event.Planned:
		return PlanMsg{Reason: ev.Reason}
	case event.Switched:
		return SwitchedMsg{Downtime: ev.Downtime, DowntimeKnown: ev.DowntimeKnown, Mode: ev.Mode}
	case event.LeaseChanged:
		return LeaseMsg{Holder: ev.Holder, Epoch: ev.Epoch, Expires: ev.Expires}
	case event.Checkpoint:
		return CheckpointMsg(ev)
	case event.Notice:
		return ErrMsg{ev.Err}
	}
	return nil
}

// screen is the VM's screen as the app sees it: a VNC view that follows
// the checkout's Screen events, and the keys and pointer sent to it.
type screen struct {
	domain string
	prog   interface{ Send(tea.Msg) } // the program; a recorder in tests

	mu   sync.Mutex
	view *vnc.Client
	stop context.CancelFunc
	done chan struct{} // closed when the view's frames stop coming
}

// follow is the one bridge from the checkout to the program: it passes
// every event on, and moves the view where a Screen event says, until the
// events end or ctx does.
func (s *screen) follow(ctx context.Context, events <-chan event.Event) {
	for {
		var ev event.Event
		select {
		case e, ok := <-events:
			if !ok {
				return
			}
			ev = e
		case <-ctx.Done():
			return
		}
		if sc, ok := ev.(event.Screen); ok {
			if err := s.show(ctx, sc); err != nil {
				s.prog.Send(ErrMsg{err})
			}
			continue
		}
		if msg := message(ev); msg != nil {
			s.prog.Send(msg)
		}
	}
}

// show replaces the view with the one sc reaches.
func (s *screen) show(ctx context.Context, sc event.Screen) error {
	s.close()
	vctx, stop := context.WithCancel(ctx)
	v, err := vnc.Connect(vctx, vnc.Options{Dial: vnc.Dialer(sc.Dial)})
	if err != nil {
		stop()
		return fmt.Errorf("show the screen of %s on %s: %w", s.domain, sc.URI, err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.view, s.stop, s.done = v, stop, done
	s.mu.Unlock()
	go func() {
		defer close(done)
		for f := range v.Frames() {
			s.prog.Send(FrameMsg(f))
		}
	}()
	return nil
}

func (s *screen) close() {
	s.mu.Lock()
	v, stop, done := s.view, s.stop, s.done
	s.view, s.stop, s.done = nil, nil, nil
	s.mu.Unlock()
	if v == nil {
		return
	}
	stop()
	v.Close()
	<-done
}

func (s *screen) current() *vnc.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.view
}

// Tap sends a key to the VM's current screen.
func (s *screen) Tap(keysym uint32, mods vnc.Modifiers) error {
	v := s.current()
	if v == nil {
		return errors.New("no screen to type into yet")
	}
	return v.Tap(keysym, mods)
}

// Pointer sends a mouse state to the VM's current screen.
func (s *screen) Pointer(buttons uint8, x, y int) error {
	v := s.current()
	if v == nil {
		return errors.New("no screen to point at yet")
	}
	return v.Pointer(buttons, x, y)
}
