package tui

import (
	"fmt"
	"image"
	"strconv"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"

	"github.com/handoff-dev/handoff/switchover"
	"github.com/handoff-dev/handoff/tui/termgfx"
	"github.com/handoff-dev/handoff/units"
	"github.com/handoff-dev/handoff/vnc"
)

// KeySender takes the keys meant for the VM.
type KeySender interface {
	Tap(keysym uint32, mods vnc.Modifiers) error
	Pointer(buttons uint8, x, y int) error
}

// Controller carries out the user's commands; each call is made from a
// tea.Cmd, never from Update, so a slow one never freezes the screen.
type Controller interface {
	SwitchNow() error
	HandBack() error
	Abort() error
}

// Options build a Model.
type Options struct {
	Domain     string
	Keys       KeySender
	Control    Controller
	Now        func() time.Time
	PrefixName string // default "Ctrl-]"
}

// Messages that drive the model.
type (
	FrameMsg    vnc.Frame
	ProgressMsg struct {
		Sample   switchover.Sample
		Decision switchover.Decision
	}
	PhaseMsg struct {
		Phase    Phase
		Host     string // where the VM runs now
		From, To string // the move under way, if any
		Err      error  // why, for failed and aborted
	}
	// PlanMsg: a migration started on this plan (in words).
	PlanMsg     struct{ Reason string }
	SwitchedMsg struct {
		Downtime      time.Duration
		DowntimeKnown bool
		Mode          string
	}
	// DiskProgressMsg is a disk move's latest report.
	DiskProgressMsg struct {
		Step        string // "freezing", "indexing", "sending", "receiving", "preparing", "committing"
		Disk        string // the guest's name for it ("vda"), or the file
		Done, Total int64  // bytes of the step's transfer, if it has one
	}
	LeaseMsg      Lease
	CheckpointMsg Checkpoint
	ErrMsg        struct{ Err error }
)

// Model is the terminal app: the VM's screen with a dashboard.
type Model struct {
	opts     Options
	width    int
	height   int
	frame    *image.RGBA
	dirty    image.Rectangle
	rects    []image.Rectangle // the parts of dirty that changed
	renderer Renderer
	vp       Viewport
	dash     dashState
	showDash bool
	prefix   bool
	confirm  bool // asking whether to quit mid-migration
	help     bool
	quitting bool
	// Keys and pointer events wait here while earlier ones are sent:
	// commands run concurrently, and input must arrive in order.
	pending []vmInput
	sending bool

	term       *termOut    // the terminal's writer, once NewProgram made it
	gfx        *picture    // nil: half blocks in the view's text
	cell       image.Point // a cell in pixels, for the picture
	at         placement   // where the picture is
	postedAt   placement   // the placement of the last job given to the picture
	noMouse    bool        // the mouse is released to the terminal
	pixelMouse bool        // mouse reports are in pixels (SGR-pixel), not cells
	buttons    uint8       // held mouse buttons, as VNC masks them
	showErr    bool        // the whole of the last error, over the screen
}

// vmInput is one thing for the VM: a key, or (pointer) the mouse.
type vmInput struct {
	key     vmKey
	pointer bool
	buttons uint8
	at      image.Point
}

// keysSentMsg says a batch of keys went out; the next may follow.
type keysSentMsg struct{}

// NewModel returns the app in its connecting phase.
func NewModel(o Options) *Model {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PrefixName == "" {
		o.PrefixName = "Ctrl-]"
	}
	return &Model{opts: o, showDash: true,
		dash: dashState{Domain: o.Domain, Phase: PhaseConnecting, Prefix: o.PrefixName}}
}

func (m *Model) Init() tea.Cmd { return nil }

// Update routes one message. In an image mode a message that moves the
// picture (a resize, zoom, the dashboard) also clears the screen: the
// old picture's cells would keep their pixels.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	cmd := m.update(msg)
	if m.gfx != nil {
		if at := m.placeNow(); at != m.at {
			m.at = at
			cmd = tea.Batch(cmd, tea.ClearScreen)
		}
	}
	return m, cmd
}

func (m *Model) update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case FrameMsg:
		rects := msg.Rects
		if rects == nil {
			rects = []image.Rectangle{msg.Dirty}
		}
		if m.frame != nil && m.frame.Rect == msg.Image.Rect {
			m.dirty = m.dirty.Union(msg.Dirty)
			m.rects = vnc.MergeRects(m.rects, rects, m.dirty)
		} else {
			m.dirty, m.rects = msg.Image.Rect, nil
		}
		m.frame = msg.Image
	case ProgressMsg:
		m.dash.Progress, m.dash.Decision = msg.Sample, msg.Decision
		if msg.Sample.DirtyRate >= 0 {
			m.dash.Dirty = append(m.dash.Dirty, msg.Sample.DirtyRate)
			if len(m.dash.Dirty) > 60 {
				m.dash.Dirty = m.dash.Dirty[len(m.dash.Dirty)-60:]
			}
		}
	case PhaseMsg:
		m.dash.Phase, m.dash.Host, m.dash.From, m.dash.To = msg.Phase, msg.Host, msg.From, msg.To
		if msg.Phase == PhaseCopying || msg.Phase == PhaseHandingBack {
			m.dash.Switched, m.dash.Dirty, m.dash.Progress = false, nil, switchover.Sample{}
		}
		m.dash.Err = ""
		if msg.Err != nil {
			m.dash.Err = msg.Err.Error()
		}
		m.note(eventText(msg))
	case PlanMsg:
		m.note("plan: " + msg.Reason)
	case SwitchedMsg:
		m.dash.Switched, m.dash.Downtime, m.dash.DowntimeKnown, m.dash.Mode = true, msg.Downtime, msg.DowntimeKnown, msg.Mode
		m.note(fmt.Sprintf("switched by %s, downtime %s", msg.Mode, units.Downtime(msg.Downtime, msg.DowntimeKnown)))
	case DiskProgressMsg:
		m.noteDisk(msg)
	case LeaseMsg:
		m.dash.Lease = Lease(msg)
	case CheckpointMsg:
		prev := m.dash.Checkpoint
		m.dash.Checkpoint = Checkpoint(msg)
		if msg.ID != "" && msg.ID != prev.ID {
			m.note(checkpointNote(Checkpoint(msg)))
		}
	case ErrMsg:
		if msg.Err != nil {
			m.dash.Err = msg.Err.Error()
			m.note("error: " + m.dash.Err)
		}
	case keysSentMsg:
		m.sending = false
		return m.flushKeys()
	case tea.KeyMsg:
		return m.key(msg)
	case tea.MouseMsg:
		return m.mouse(msg)
	}
	return nil
}

// key routes a key: to handoff after the prefix, else to the VM.
func (m *Model) key(k tea.KeyMsg) tea.Cmd {
	if m.confirm {
		m.confirm = false
		if k.String() == "y" || k.String() == "Y" {
			m.quitting = true
			return tea.Sequence(m.call(m.opts.Control.Abort), tea.Quit)
		}
		return nil
	}
	if m.help || m.showErr {
		m.help, m.showErr = false, false
		return nil
	}
	if !m.prefix {
		if k.Type == tea.KeyCtrlCloseBracket {
			m.prefix, m.dash.PrefixArm = true, true
			return nil
		}
		return m.send(k)
	}
	m.prefix, m.dash.PrefixArm = false, false
	switch k.String() {
	case "ctrl+]":
		return m.send(k)
	case "h":
		return m.call(m.opts.Control.HandBack)
	case "s":
		return m.call(m.opts.Control.SwitchNow)
	case "z":
		m.vp.OneToOne = !m.vp.OneToOne
	case "d":
		m.showDash = !m.showDash
	case "?":
		m.help = true
	case "e":
		m.showErr = m.dash.Err != ""
	case "m":
		m.noMouse = !m.noMouse
		m.buttons = 0
		if m.noMouse {
			m.note("mouse released to the terminal (" + m.opts.PrefixName + " m takes it back)")
			return tea.DisableMouse
		}
		m.note("mouse goes to the VM")
		return tea.EnableMouseAllMotion
	case "q":
		if m.dash.Phase.migrating() {
			m.confirm = true
			return nil
		}
		m.quitting = true
		return tea.Quit
	case "left":
		m.vp.PanX -= 16
	case "right":
		m.vp.PanX += 16
	case "up":
		m.vp.PanY -= 16
	case "down":
		m.vp.PanY += 16
	}
	m.vp.PanX, m.vp.PanY = max(0, m.vp.PanX), max(0, m.vp.PanY)
	return nil
}

func (m *Model) send(k tea.KeyMsg) tea.Cmd {
	keys, ok := keysFor(k)
	if !ok || m.opts.Keys == nil {
		return nil
	}
	for _, k := range keys {
		m.pending = append(m.pending, vmInput{key: k})
	}
	return m.flushKeys()
}

// flushKeys sends the waiting keys in one command, unless a send is
// already under way (its keysSentMsg will call again).
func (m *Model) flushKeys() tea.Cmd {
	if m.sending || len(m.pending) == 0 {
		return nil
	}
	keys, sender := m.pending, m.opts.Keys
	m.pending, m.sending = nil, true
	return func() tea.Msg {
		for _, in := range keys {
			var err error
			if in.pointer {
				err = sender.Pointer(in.buttons, in.at.X, in.at.Y)
			} else {
				err = sender.Tap(in.key.sym, in.key.mods)
			}
			if err != nil {
				return tea.BatchMsg{func() tea.Msg { return ErrMsg{err} }, func() tea.Msg { return keysSentMsg{} }}
			}
		}
		return keysSentMsg{}
	}
}

func (m *Model) call(f func() error) tea.Cmd {
	return func() tea.Msg {
		if err := f(); err != nil {
			return ErrMsg{err}
		}
		return nil
	}
}

// dashWidth is the side dashboard's width on wide terminals.
const dashWidth = 44

// layout is how the terminal is shared: the screen's cells beside (wide
// terminals) or above (narrow ones) the dashboard's lines.
type layout struct {
	side       bool
	cols, rows int
	dash       []string
}

func (m *Model) layout() layout {
	m.dash.Now = m.opts.Now()
	l := layout{cols: m.width, rows: m.height}
	switch {
	case m.showDash && m.width >= 100:
		l.side = true
		l.cols = m.width - dashWidth - 1
		l.dash = dashboardLines(m.dash, dashWidth, m.height, false)
	case m.showDash:
		// Below the screen, the dashboard takes at most a third.
		l.dash = dashboardLines(m.dash, m.width, max(4, m.height/3), true)
		l.rows = max(1, m.height-len(l.dash))
	}
	if m.gfx != nil {
		// An image on the last row could scroll the screen.
		l.rows = max(1, min(l.rows, m.height-1))
	}
	return l
}

// placeNow is where the picture goes now; hidden under an overlay.
func (m *Model) placeNow() placement {
	if m.frame == nil || m.width == 0 || m.height == 0 || m.overlay() != "" {
		return placement{hidden: true}
	}
	l := m.layout()
	return place(m.frame.Rect.Size(), m.cell, l.cols, l.rows, m.vp, m.gfx.proto == termgfx.Kitty && m.gfx.files.Load())
}

// useGraphics draws the screen as images through p, with cells of the
// given size in pixels.
func (m *Model) useGraphics(p *picture, cell image.Point) {
	m.gfx, m.cell = p, cell
}

// note adds a line to the dashboard's recent events.
func (m *Model) note(text string) {
	m.dash.Events = append(m.dash.Events, m.opts.Now().Format("15:04:05")+" "+text)
	if n := len(m.dash.Events); n > 50 {
		m.dash.Events = m.dash.Events[n-50:]
	}
}

func eventText(p PhaseMsg) string {
	switch {
	case p.From != "" && p.Phase.migrating():
		return fmt.Sprintf("%s: %s → %s", p.Phase, p.From, p.To)
	case p.Host != "":
		return fmt.Sprintf("%s (%s)", p.Phase, p.Host)
	}
	return string(p.Phase)
}

// overlay is the text that covers the whole screen now, if any.
func (m *Model) overlay() string {
	box := func(text string) string {
		w := 0
		for _, l := range strings.Split(text, "\n") {
			w = max(w, ansi.StringWidth(l))
		}
		w = min(w, max(10, m.width-2))
		// One block, its lines flush left, centred as a whole.
		block := lipgloss.NewStyle().Width(w).Render(text)
		return lipgloss.Place(m.width, m.height, lipgloss.Center, lipgloss.Center, block)
	}
	switch {
	case m.confirm:
		return box("A migration is under way. Quit and abort it? The VM keeps running on the " + m.dash.From + ". [y/N]")
	case m.help:
		return box(helpText(m.opts.PrefixName))
	case m.showErr:
		return box(errStyle.Render("The last error, in full:") + "\n\n" + m.dash.Err + "\n\nany key closes this")
	}
	return ""
}

// View draws the screen beside or above the dashboard. In an image mode
// the screen's cells hold no text: its lines only move the cursor past
// them, so bubbletea never writes over the picture, which goes to the
// terminal by its own writer.
func (m *Model) View() string {
	if m.width == 0 || m.height == 0 {
		return ""
	}
	if o := m.overlay(); o != "" {
		if m.gfx != nil {
			m.gfx.post(picJob{at: m.at})
		}
		return o
	}
	l := m.layout()
	var screen []string
	skip := 0 // cells at the start of each screen line that the picture owns
	switch {
	case m.frame == nil:
		screen = []string{"waiting for the VM's screen…"}
	case m.gfx != nil:
		if !m.dirty.Empty() || m.at != m.postedAt {
			m.gfx.post(picJob{frame: m.frame, dirty: m.dirty, rects: m.rects, at: m.at})
			m.postedAt = m.at
		}
		skip = m.at.cells.X
		for range m.at.cells.Y {
			screen = append(screen, cuf(skip))
		}
	default:
		m.vp.Cols, m.vp.Rows = l.cols, l.rows
		screen = m.renderer.Render(m.frame, m.dirty, m.vp)
	}
	m.dirty, m.rects = image.Rectangle{}, nil
	var out []string
	if l.side {
		pad := lipgloss.NewStyle().Width(l.cols + 1)
		for i := range m.height {
			var s, d string
			if i < len(screen) {
				s = screen[i]
			}
			if i < len(l.dash) {
				d = l.dash[i]
			}
			if skip > 0 && i < len(screen) {
				out = append(out, cuf(l.cols+1)+d)
			} else {
				out = append(out, pad.Render(s)+d)
			}
		}
	} else {
		out = append(out, screen...)
		for len(out) < l.rows {
			out = append(out, "")
		}
		out = append(out, l.dash...)
	}
	if len(out) > m.height {
		out = out[:m.height]
	}
	return strings.Join(out, "\n")
}

// cuf moves the cursor n cells right without writing.
func cuf(n int) string { return "\x1b[" + strconv.Itoa(n) + "C" }

func helpText(prefix string) string {
	return strings.Join([]string{
		"Everything you type goes to the VM, and the mouse too. " + prefix + " first reaches handoff:",
		"",
		"  " + prefix + " h       hand the VM back to the server",
		"  " + prefix + " s       switch now (post-copy: the rest of memory follows on demand)",
		"  " + prefix + " z       zoom: fit the window / one screen pixel per pixel (or half cell)",
		"  " + prefix + " arrows  pan when zoomed",
		"  " + prefix + " d       show or hide the dashboard",
		"  " + prefix + " m       release the mouse to the terminal (to select text), or take it back",
		"  " + prefix + " e       show the last error in full",
		"  " + prefix + " q       quit (asks first while a migration runs)",
		"  " + prefix + " " + prefix + "  send " + prefix + " to the VM",
		"",
		"any key closes this help",
	}, "\n")
}

// checkpointNote is the event line of a checkpoint just committed: where
// it went, what it sent, and what it lacked (the guest's flush, the
// memory lined up with the chunks), so that a checkpoint worse than the
// user expects says so where the user looks.
func checkpointNote(c Checkpoint) string {
	what := fmt.Sprintf("checkpoint committed (%s sent", units.Bytes(uint64(c.Bytes)))
	if c.Branch != "" {
		what = fmt.Sprintf("checkpoint kept as branch %s, the lease being no longer this device's (%s sent", c.Branch, units.Bytes(uint64(c.Bytes)))
	}
	switch {
	case c.NoFlush != "":
		what += "; no flush first: " + c.NoFlush
	case c.Flushed > 0:
		what += fmt.Sprintf("; the guest flushed in %d ms", c.Flushed.Milliseconds())
	}
	if c.MemoryWhole != "" {
		what += "; the memory went whole: " + c.MemoryWhole
	}
	return what + ")"
}
