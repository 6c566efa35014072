package tui

import (
	"image"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/handoff-dev/handoff/libvirt/switchover"
	"github.com/handoff-dev/handoff/vnc"
)

// KeySender takes the keys meant for the VM.
type KeySender interface {
	Tap(keysym uint32, mods vnc.Modifiers) error
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
	SwitchedMsg struct {
		Downtime time.Duration
		Mode     string
	}
	LeaseMsg Lease
	ErrMsg   struct{ Err error }
)

// Model is the terminal app: the VM's screen with a dashboard.
type Model struct {
	opts     Options
	width    int
	height   int
	frame    *image.RGBA
	dirty    image.Rectangle
	renderer Renderer
	vp       Viewport
	dash     dashState
	showDash bool
	prefix   bool
	confirm  bool // asking whether to quit mid-migration
	help     bool
	quitting bool
	// Keys wait here while earlier ones are sent: commands run
	// concurrently, and typed text must arrive in order.
	pending []vmKey
	sending bool
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

// Update routes one message.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case FrameMsg:
		if m.frame != nil && m.frame.Rect == msg.Image.Rect {
			m.dirty = m.dirty.Union(msg.Dirty)
		} else {
			m.dirty = msg.Image.Rect
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
	case SwitchedMsg:
		m.dash.Switched, m.dash.Downtime, m.dash.Mode = true, msg.Downtime, msg.Mode
	case LeaseMsg:
		m.dash.Lease = Lease(msg)
	case ErrMsg:
		if msg.Err != nil {
			m.dash.Err = msg.Err.Error()
		}
	case keysSentMsg:
		m.sending = false
		return m, m.flushKeys()
	case tea.KeyMsg:
		return m, m.key(msg)
	}
	return m, nil
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
	if m.help {
		m.help = false
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
	m.pending = append(m.pending, keys...)
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
		for _, key := range keys {
			if err := sender.Tap(key.sym, key.mods); err != nil {
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

// View draws the screen beside (wide terminals) or above (narrow ones)
// the dashboard.
func (m *Model) View() string {
	if m.width == 0 || m.height == 0 {
		return ""
	}
	m.dash.Now = m.opts.Now()
	if m.confirm {
		return lipgloss.Place(m.width, m.height, lipgloss.Center, lipgloss.Center,
			"A migration is under way. Quit and abort it? The VM keeps running on the "+m.dash.From+". [y/N]")
	}
	if m.help {
		return lipgloss.Place(m.width, m.height, lipgloss.Center, lipgloss.Center, helpText(m.opts.PrefixName))
	}
	side := m.showDash && m.width >= 100
	var dash []string
	cols, rows := m.width, m.height
	switch {
	case side:
		cols = m.width - dashWidth - 1
		dash = dashboardLines(m.dash, dashWidth, false)
	case m.showDash:
		dash = dashboardLines(m.dash, m.width, true)
		rows = max(1, m.height-len(dash))
	}
	m.vp.Cols, m.vp.Rows = cols, rows
	screen := m.renderer.Render(m.frame, m.dirty, m.vp)
	m.dirty = image.Rectangle{}
	if m.frame == nil {
		screen = []string{"waiting for the VM's screen…"}
	}
	var out []string
	if side {
		pad := lipgloss.NewStyle().Width(cols + 1)
		for i := range m.height {
			var l, d string
			if i < len(screen) {
				l = screen[i]
			}
			if i < len(dash) {
				d = dash[i]
			}
			out = append(out, pad.Render(l)+d)
		}
	} else {
		out = append(out, screen...)
		for len(out) < rows {
			out = append(out, "")
		}
		out = append(out, dash...)
	}
	if len(out) > m.height {
		out = out[:m.height]
	}
	return strings.Join(out, "\n")
}

func helpText(prefix string) string {
	return strings.Join([]string{
		"Everything you type goes to the VM. " + prefix + " first reaches handoff:",
		"",
		"  " + prefix + " h       hand the VM back to the server",
		"  " + prefix + " s       switch now (post-copy: the rest of memory follows on demand)",
		"  " + prefix + " z       zoom: fit the window / one pixel per half cell",
		"  " + prefix + " arrows  pan when zoomed",
		"  " + prefix + " d       show or hide the dashboard",
		"  " + prefix + " q       quit (asks first while a migration runs)",
		"  " + prefix + " " + prefix + "  send " + prefix + " to the VM",
		"",
		"any key closes this help",
	}, "\n")
}
