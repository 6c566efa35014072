package tui

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/handoff-dev/handoff/checkout/event"
	"github.com/handoff-dev/handoff/internal/syncbuf"
	"github.com/handoff-dev/handoff/switchover"
)

// fakeCheckout runs until quit, after sending its events.
type fakeCheckout struct {
	fakeVM
	events chan event.Event
	send   []event.Event
	quit   chan struct{}
	once   sync.Once
	linger time.Duration // how long Run takes to end once quit

	mu            sync.Mutex
	quitBeforeEnd bool // Quit came while Run's context was still alive
	ran           bool
}

func (f *fakeCheckout) Events() <-chan event.Event { return f.events }

func (f *fakeCheckout) Run(ctx context.Context) error {
	defer close(f.events)
	for _, e := range f.send {
		select {
		case f.events <- e:
		case <-ctx.Done():
			return nil
		}
	}
	select {
	case <-f.quit:
		f.mu.Lock()
		f.quitBeforeEnd = ctx.Err() == nil
		f.mu.Unlock()
		time.Sleep(f.linger)
	case <-ctx.Done():
	}
	f.mu.Lock()
	f.ran = true
	f.mu.Unlock()
	return nil
}

func (f *fakeCheckout) Quit() error {
	f.record("quit")
	f.once.Do(func() { close(f.quit) })
	return nil
}

// recorder stands in for the program.
type recorder struct {
	mu   sync.Mutex
	msgs []tea.Msg
}

func (r *recorder) Send(m tea.Msg) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
}

func TestEventsBecomeMessages(t *testing.T) {
	boom := errors.New("boom")
	expires := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	events := make(chan event.Event, 10)
	for _, e := range []event.Event{
		event.PhaseChanged{Phase: event.Copying, Host: "server", From: "server", To: "workstation"},
		event.Progress{Sample: switchover.Sample{Phase: switchover.PhasePrecopy, Total: 10}},
		event.DiskProgress{Step: "receiving", Disk: "vda", Done: 1, Total: 2},
		event.Switched{Downtime: 40 * time.Millisecond, DowntimeKnown: true, Mode: "precopy"},
		event.LeaseChanged{Holder: "laptop", Epoch: 1, Expires: expires},
		event.Screen{Host: "workstation", URI: "test:///ws", Dial: func(context.Context) (net.Conn, error) { return nil, boom }},
		event.Notice{Err: boom},
	} {
		events <- e
	}
	close(events)
	rec := &recorder{}
	s := &screen{domain: "desktop", prog: rec}
	s.follow(context.Background(), events)
	want := []tea.Msg{
		PhaseMsg{Phase: PhaseCopying, Host: "server", From: "server", To: "workstation"},
		ProgressMsg{Sample: switchover.Sample{Phase: switchover.PhasePrecopy, Total: 10}},
		DiskProgressMsg{Step: "receiving", Disk: "vda", Done: 1, Total: 2},
		SwitchedMsg{Downtime: 40 * time.Millisecond, DowntimeKnown: true, Mode: "precopy"},
		LeaseMsg{Holder: "laptop", Epoch: 1, Expires: expires},
		nil, // the screen's failure, checked below
		ErrMsg{boom},
	}
	if len(rec.msgs) != len(want) {
		t.Fatalf("messages %#v, want %d", rec.msgs, len(want))
	}
	for i, w := range want {
		if w == nil {
			e, ok := rec.msgs[i].(ErrMsg)
			if !ok || !errors.Is(e.Err, boom) || !strings.Contains(e.Err.Error(), "show the screen of desktop on test:///ws") {
				t.Errorf("message %d: %#v, want the screen's failure with where it was", i, rec.msgs[i])
			}
			continue
		}
		if rec.msgs[i] != w {
			t.Errorf("message %d: %#v, want %#v", i, rec.msgs[i], w)
		}
	}
	if s.current() != nil {
		t.Error("a screen that failed to connect is the view")
	}
}

// Quitting the app quits the checkout first, and Grab returns only once
// the checkout's Run has.
func TestGrabQuitsTheCheckoutAndWaitsForIt(t *testing.T) {
	co := &fakeCheckout{events: make(chan event.Event), quit: make(chan struct{}),
		send: []event.Event{event.PhaseChanged{Phase: event.Here, Host: "workstation"}}}
	in, typed := io.Pipe()
	t.Cleanup(func() { typed.Close() })
	done := make(chan error, 1)
	go func() {
		done <- Grab(context.Background(), co, GrabOptions{Domain: "desktop", In: in, Out: io.Discard, Graphics: "blocks"})
	}()
	if _, err := typed.Write([]byte("\x1dq")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Grab: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Grab did not return after Ctrl-] q")
	}
	co.mu.Lock()
	defer co.mu.Unlock()
	if !co.ran || !co.quitBeforeEnd {
		t.Errorf("checkout ran to its end %v, was quit before its context ended %v; want both", co.ran, co.quitBeforeEnd)
	}
	if _, calls := co.snapshot(); strings.Join(calls, ",") != "quit" {
		t.Errorf("calls %v, want one quit", calls)
	}
}

func TestDiskStepsShowOnceWithTheirBytes(t *testing.T) {
	m := NewModel(Options{Domain: "desktop", Now: func() time.Time { return fixedNow }})
	for _, d := range []DiskProgressMsg{
		{Step: "freezing", Disk: "vda"},
		{Step: "receiving", Disk: "vda"},
		{Step: "receiving", Disk: "vda", Done: 1 << 20, Total: 4 << 20},
		{Step: "receiving", Disk: "vda", Done: 3 << 20, Total: 4 << 20},
		{Step: "committing", Disk: "vda"},
	} {
		m.Update(d)
	}
	got := strings.Join(m.dash.Events, "\n")
	want := "03:00:00 disks: freezing vda\n03:00:00 disks: receiving vda 3.1 MB of 4.2 MB\n03:00:00 disks: committing vda"
	if got != want {
		t.Errorf("recent events:\n%s\nwant:\n%s", got, want)
	}
}

// A checkout that takes long to end (a VM past its switch) is waited for,
// and the terminal says so.
func TestGrabSaysWhyItWaitsForTheCheckout(t *testing.T) {
	co := &fakeCheckout{events: make(chan event.Event), quit: make(chan struct{}), linger: 1500 * time.Millisecond}
	in, typed := io.Pipe()
	t.Cleanup(func() { typed.Close() })
	out := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- Grab(context.Background(), co, GrabOptions{Domain: "desktop", In: in, Out: out, Graphics: "blocks"})
	}()
	typed.Write([]byte("\x1dq"))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Grab did not return")
	}
	if !strings.Contains(out.String(), "waiting for the move of desktop under way to end") {
		t.Errorf("the terminal was not told why it waits: %q", out.String())
	}
	co.mu.Lock()
	defer co.mu.Unlock()
	if !co.ran {
		t.Error("Grab returned before the checkout had ended")
	}
}
