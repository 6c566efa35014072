package tui

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/teatest"

	"github.com/handoff-dev/handoff/switchover"
	"github.com/handoff-dev/handoff/vnc"
)

var rewriteGolden = flag.Bool("golden", false, "rewrite the golden files")

// fakes record what the model asked for.
type fakeVM struct {
	mu       sync.Mutex
	keys     []vmKey
	pointers []string // "buttons@x,y"
	calls    []string
}

func (f *fakeVM) Pointer(buttons uint8, x, y int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pointers = append(f.pointers, fmt.Sprintf("%d@%d,%d", buttons, x, y))
	return nil
}

func (f *fakeVM) Tap(sym uint32, mods vnc.Modifiers) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = append(f.keys, vmKey{sym, mods})
	return nil
}

func (f *fakeVM) record(c string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	if c == "switch" {
		return errors.New("no migration under way to switch")
	}
	return nil
}
func (f *fakeVM) SwitchNow() error { return f.record("switch") }
func (f *fakeVM) HandBack() error  { return f.record("handback") }
func (f *fakeVM) Abort() error     { return f.record("abort") }

func (f *fakeVM) snapshot() ([]vmKey, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]vmKey(nil), f.keys...), append([]string(nil), f.calls...)
}

func (f *fakeVM) waitCalls(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, calls := f.snapshot()
		if strings.Join(calls, ",") == strings.Join(want, ",") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller calls %v, want %v", calls, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var fixedNow = time.Date(2026, 11, 23, 3, 0, 0, 0, time.UTC)

func newTestModel(t *testing.T, vm *fakeVM, w, h int) *teatest.TestModel {
	m := NewModel(Options{Domain: "desktop", Keys: vm, Control: vm, Now: func() time.Time { return fixedNow }})
	return teatest.NewTestModel(t, m, teatest.WithInitialTermSize(w, h))
}

// waitScreen waits until the output since the last wait shows every want:
// the renderer repaints only changed lines, so what one update drew is
// checked in one wait.
func waitScreen(t *testing.T, tm *teatest.TestModel, want ...string) {
	t.Helper()
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		for _, w := range want {
			if !bytes.Contains(b, []byte(w)) {
				return false
			}
		}
		return true
	}, teatest.WithDuration(5*time.Second))
}

func TestKeysGoToTheVMAndThePrefixToHandoff(t *testing.T) {
	vm := &fakeVM{}
	tm := newTestModel(t, vm, 120, 40)
	tm.Send(PhaseMsg{Phase: PhaseLocal, Host: "workstation"})
	tm.Type("ls")
	tm.Send(tea.KeyMsg{Type: tea.KeyEnter})
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC}) // the VM's, not ours
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	waitScreen(t, tm, "h hand back")
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("h")})
	vm.waitCalls(t, "handback")
	// Ctrl-] Ctrl-] types a literal Ctrl-].
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	// A failing command shows its error instead of being lost.
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("s")})
	waitScreen(t, tm, "no migration under way")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")})
	tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))

	keys, calls := vm.snapshot()
	want := []vmKey{{'l', 0}, {'s', 0}, {vnc.KeyReturn, 0}, {'c', vnc.ModCtrl}, {']', vnc.ModCtrl}}
	if len(keys) != len(want) {
		t.Fatalf("VM got keys %v, want %v", keys, want)
	}
	for i := range want {
		if keys[i] != want[i] {
			t.Fatalf("VM got keys %v, want %v", keys, want)
		}
	}
	if strings.Join(calls, ",") != "handback,switch" {
		t.Errorf("controller calls %v; quitting while the VM runs here must not abort anything", calls)
	}
}

func TestQuitWhileMigratingAsksAndAborts(t *testing.T) {
	vm := &fakeVM{}
	tm := newTestModel(t, vm, 120, 40)
	tm.Send(PhaseMsg{Phase: PhaseCopying, Host: "server", From: "server", To: "workstation"})
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")})
	waitScreen(t, tm, "Quit and abort it?")
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("n")}) // changed my mind
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")})
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("y")})
	tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
	vm.waitCalls(t, "abort")
	if keys, _ := vm.snapshot(); len(keys) != 0 {
		t.Errorf("answers to handoff reached the VM: %v", keys)
	}
}

func TestPhasesShowOnTheDashboard(t *testing.T) {
	vm := &fakeVM{}
	tm := newTestModel(t, vm, 120, 40)
	tm.Send(PhaseMsg{Phase: PhaseCopying, Host: "server", From: "server", To: "workstation"})
	tm.Send(ProgressMsg{
		Sample:   switchover.Sample{Phase: switchover.PhasePrecopy, Iteration: 3, DirtyRate: 4.1e6, Bandwidth: 2.4e6, Remaining: 64e6, Transferred: 300e6, Total: 256e6},
		Decision: switchover.Decision{Action: switchover.Continue, Reason: "not converging: dirty 4.1 MB/s > link 2.4 MB/s"},
	})
	waitScreen(t, tm, "not converging", "server → workstation", "copying (pass 3)")
	tm.Send(PlanMsg{Reason: "zstd relay"})
	waitScreen(t, tm, "plan: zstd relay")
	tm.Send(SwitchedMsg{Downtime: 36 * time.Millisecond, DowntimeKnown: true, Mode: "precopy"})
	tm.Send(PhaseMsg{Phase: PhaseLocal, Host: "workstation"})
	waitScreen(t, tm, "36 ms")
	tm.Send(SwitchedMsg{Mode: "postcopy"}) // a hand back: no host reported the pause
	waitScreen(t, tm, "not reported (postcopy)")
	tm.Send(LeaseMsg{Holder: "laptop", Epoch: 7, Expires: fixedNow.Add(90 * time.Second)})
	waitScreen(t, tm, "laptop, epoch 7, 1m30s left")
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("q")})
	tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
}

func TestScreenAndDashboardLayouts(t *testing.T) {
	frame := image.NewRGBA(image.Rect(0, 0, 720, 400))
	for i := range frame.Pix {
		frame.Pix[i] = 0x40
	}
	frame.SetRGBA(0, 0, color.RGBA{255, 0, 0, 255})
	for _, size := range []struct{ w, h int }{{80, 24}, {120, 40}, {200, 60}} {
		name := filepath.Join("testdata", fmt.Sprintf("layout-%dx%d.golden", size.w, size.h))
		t.Run(name, func(t *testing.T) {
			m := NewModel(Options{Domain: "desktop", Now: func() time.Time { return fixedNow }})
			m.Update(tea.WindowSizeMsg{Width: size.w, Height: size.h})
			m.Update(FrameMsg(vnc.Frame{Image: frame, Dirty: frame.Rect, Seq: 1}))
			m.Update(PhaseMsg{Phase: PhaseCopying, Host: "server", From: "server", To: "workstation"})
			m.Update(ProgressMsg{
				Sample:   switchover.Sample{Phase: switchover.PhasePrecopy, Iteration: 2, DirtyRate: 1.5e6, Bandwidth: 11.8e6, Remaining: 40e6, Transferred: 230e6, Total: 268e6},
				Decision: switchover.Decision{Action: switchover.Continue, Converging: true, SwitchIn: 4 * time.Second},
			})
			view := m.View()
			lines := strings.Split(view, "\n")
			if len(lines) != size.h {
				t.Errorf("view is %d lines, want the terminal's %d", len(lines), size.h)
			}
			for i, l := range lines {
				if w := ansi.StringWidth(l); w > size.w {
					t.Errorf("line %d is %d cells wide, over the terminal's %d", i, w, size.w)
				}
			}
			text := ansi.Strip(view)
			for _, want := range []string{"copying (pass 2)", "server → workstation", "switch", "in ~4s", "Ctrl-] ? for help"} {
				if !strings.Contains(text, want) {
					t.Errorf("%dx%d view lacks %q", size.w, size.h, want)
				}
			}
			golden(t, name, []byte(text))
		})
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *rewriteGolden {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./tui -golden to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n%s", path, got)
	}
}

func TestErrorsWrapWholeAndAKeyShowsThem(t *testing.T) {
	long := "migrate handoff-guest from qemu+unix:///session?socket=/run/handoff/srv/libvirt-sock to qemu+unix:///session?socket=/run/handoff/ws/libvirt-sock: unable to connect: No such file or directory"
	for _, size := range []struct{ w, h int }{{120, 40}, {80, 24}} {
		m := NewModel(Options{Domain: "desktop", Now: func() time.Time { return fixedNow }})
		m.Update(tea.WindowSizeMsg{Width: size.w, Height: size.h})
		m.Update(PhaseMsg{Phase: PhaseFailed, Host: "server", Err: errors.New(long)})
		text := ansi.Strip(m.View())
		// Every word of the error is on the screen, in order.
		flat := strings.Join(strings.Fields(text), " ")
		if !strings.Contains(flat, "No such file or directory") || !strings.Contains(flat, "unable to connect:") {
			t.Errorf("%dx%d: the error was cut:\n%s", size.w, size.h, text)
		}
		m.Update(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
		m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("e")})
		full := strings.Join(strings.Fields(ansi.Strip(m.View())), "")
		if !strings.Contains(full, strings.Join(strings.Fields(long), "")) {
			t.Errorf("%dx%d: Ctrl-] e does not show the whole error", size.w, size.h)
		}
		m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("x")})
		if strings.Contains(ansi.Strip(m.View()), "in full") {
			t.Error("any key does not close the error")
		}
	}
}

func TestHelpIsOneAlignedBlock(t *testing.T) {
	m := NewModel(Options{Domain: "desktop", Now: func() time.Time { return fixedNow }})
	m.Update(tea.WindowSizeMsg{Width: 120, Height: 40})
	m.Update(tea.KeyMsg{Type: tea.KeyCtrlCloseBracket})
	m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("?")})
	text := ansi.Strip(m.View())
	cols := map[int]bool{}
	for _, l := range strings.Split(text, "\n") {
		if i := strings.Index(l, "Ctrl-] "); i >= 0 && strings.HasPrefix(strings.TrimSpace(l), "Ctrl-]") {
			cols[i] = true
		}
	}
	if len(cols) != 1 {
		t.Errorf("the help's key lines start in %d different columns:\n%s", len(cols), text)
	}
	golden(t, filepath.Join("testdata", "help-120x40.golden"), []byte(text))
}

func TestMouseBecomesPointerEventsInScreenPixels(t *testing.T) {
	frame := image.NewRGBA(image.Rect(0, 0, 720, 400))
	for _, tc := range []struct {
		name   string
		gfx    bool
		click  image.Point // the cell clicked
		want   image.Point // the screen pixel that means
		inside bool
	}{
		// Blocks: 720x400 into 75 cells (120-45): 9.6 px a cell across,
		// 19.2 down; a click means the cell's centre.
		{"blocks, top left", false, image.Pt(0, 0), image.Pt(4, 9), true},
		{"blocks, middle", false, image.Pt(37, 10), image.Pt(359, 201), true},
		// Images: cells of 8x16 px, 75x39 of them (600x624 px): the screen
		// is scaled by 600/720; cell (37,10)'s centre is (300,168) there.
		{"image, middle", true, image.Pt(37, 10), image.Pt(360, 201), true},
		// SGR-pixel reports: terminal pixel (300,168) is screen (360,201).
		{"image, pixel reports", true, image.Pt(300, 168), image.Pt(360, 201), true},
		{"dashboard", false, image.Pt(110, 5), image.Point{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := &fakeVM{}
			m := NewModel(Options{Domain: "desktop", Keys: vm, Control: vm, Now: func() time.Time { return fixedNow }})
			if tc.gfx {
				var out bytes.Buffer
				m.useGraphics(newPicture(&termOut{w: &out}, 2, 256), image.Pt(8, 16))
				m.pixelMouse = strings.Contains(tc.name, "pixel")
			}
			m.Update(tea.WindowSizeMsg{Width: 120, Height: 40})
			m.Update(FrameMsg(vnc.Frame{Image: frame, Dirty: frame.Rect, Seq: 1}))
			m.View()
			for _, ev := range []tea.MouseEvent{
				{X: tc.click.X, Y: tc.click.Y, Button: tea.MouseButtonLeft, Action: tea.MouseActionPress},
				{X: tc.click.X, Y: tc.click.Y, Button: tea.MouseButtonLeft, Action: tea.MouseActionRelease},
				{X: tc.click.X, Y: tc.click.Y, Button: tea.MouseButtonWheelDown, Action: tea.MouseActionPress},
			} {
				_, cmd := m.Update(tea.MouseMsg(ev))
				runCmd(m, cmd)
			}
			vm.mu.Lock()
			got := strings.Join(vm.pointers, " ")
			vm.mu.Unlock()
			p := fmt.Sprintf("%d,%d", tc.want.X, tc.want.Y)
			want := "1@" + p + " 0@" + p + " 16@" + p + " 0@" + p
			if !tc.inside {
				want = ""
			}
			if got != want {
				t.Errorf("pointer events %q, want %q", got, want)
			}
		})
	}
}

// runCmd runs a command, as bubbletea would, feeding its messages back.
func runCmd(m *Model, cmd tea.Cmd) {
	if cmd == nil {
		return
	}
	switch msg := cmd().(type) {
	case tea.BatchMsg:
		for _, c := range msg {
			runCmd(m, c)
		}
	case nil:
	default:
		_, next := m.Update(msg)
		runCmd(m, next)
	}
}

func TestCheckpointText(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		c    Checkpoint
		want string
	}{
		{"none yet, one planned", Checkpoint{Next: now.Add(9*time.Minute + 30*time.Second)}, "none yet · next in 9m30s"},
		{"the first under way", Checkpoint{Underway: true}, "none yet · saving now"},
		{"committed", Checkpoint{Last: now.Add(-2 * time.Minute), ID: "c1", Bytes: 3_100_000, Pause: 212 * time.Millisecond, Next: now.Add(8 * time.Minute)},
			"2m0s ago (3.1 MB sent, pause 212 ms) · next in 8m0s"},
		{"kept as a branch", Checkpoint{Last: now.Add(-5 * time.Second), ID: "c2", Branch: "desktop-laptop-20261202T095955", Underway: true},
			"5s ago, as branch desktop-laptop-20261202T095955 (lease gone) · saving now"},
		{"one waits while the server is out of reach", Checkpoint{Last: now.Add(-3 * time.Minute), Bytes: 1000, Queued: now.Add(-time.Minute), Next: now.Add(20 * time.Second)},
			"3m0s ago · one waits for the link"},
		{"overdue: never a negative wait", Checkpoint{Last: now.Add(-time.Minute), Next: now.Add(-time.Second)}, "1m0s ago (0 B sent, pause 0 ms) · next in 0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkpointText(tc.c, now); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCheckpointNoteSaysWhatTheCheckpointLacked(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Checkpoint
		want string
	}{
		{"flushed, lined up", Checkpoint{ID: "c1", Bytes: 623_000, Flushed: 95 * time.Millisecond},
			"checkpoint committed (623 kB sent; the guest flushed in 95 ms)"},
		{"no agent", Checkpoint{ID: "c2", Bytes: 1000, NoFlush: "guest-ping of vm: the guest's agent does not answer"},
			"checkpoint committed (1 kB sent; no flush first: guest-ping of vm: the guest's agent does not answer)"},
		{"memory whole", Checkpoint{ID: "c3", Bytes: 2_000_000, NoFlush: "not asked for", MemoryWhole: "a compressed save"},
			"checkpoint committed (2.0 MB sent; no flush first: not asked for; the memory went whole: a compressed save)"},
		{"a branch", Checkpoint{ID: "c4", Branch: "desktop-laptop-1", Bytes: 5000, Flushed: time.Second},
			"checkpoint kept as branch desktop-laptop-1, the lease being no longer this device's (5 kB sent; the guest flushed in 1000 ms)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkpointNote(tc.c); got != tc.want {
				t.Fatalf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}
