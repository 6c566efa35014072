package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/handoff-dev/handoff/switchover"
	"github.com/handoff-dev/handoff/units"
)

// Phase is where the grab stands, as the user sees it.
type Phase string

const (
	PhaseConnecting  Phase = "connecting"
	PhaseCopying     Phase = "copying"
	PhaseSwitching   Phase = "switching"
	PhaseLocal       Phase = "running here"
	PhaseHandingBack Phase = "handing back"
	PhaseOnServer    Phase = "on the server"
	PhaseViewing     Phase = "viewing"
	PhaseAborted     Phase = "aborted"
	PhaseFailed      Phase = "failed"
)

// migrating reports whether quitting now would interrupt a migration.
func (p Phase) migrating() bool {
	return p == PhaseCopying || p == PhaseSwitching || p == PhaseHandingBack
}

// Lease is what the server says about the VM's lease; empty when the
// server keeps no leases.
type Lease struct {
	Holder  string
	Epoch   uint64
	Expires time.Time
}

// Checkpoint is where the checkpoints of the VM running here stand.
type Checkpoint struct {
	Underway bool      // one is being taken and sent
	Last     time.Time // the instant the newest one saved; zero: none yet
	ID       string    // its commit
	Branch   string    // set: kept as this new image, the lease being lost
	Bytes    int64     // what it put on the link
	// Of Bytes, the memory's, and of those its recipe's.
	MemoryBytes, RecipeBytes int64
	Pause                    time.Duration
	Next                     time.Time // zero: none planned
	Queued                   time.Time // a checkpoint taken then, not yet on the server
	// MemoryWhole: why the memory went whole, not as its pages lined up.
	MemoryWhole string
	// Flushed: the guest's flush before the snapshot; NoFlush: why none.
	Flushed time.Duration
	NoFlush string
}

// dashState is what the dashboard shows; kept apart from the model so the
// dashboard is a plain function of it.
type dashState struct {
	Domain   string
	Phase    Phase
	Host     string // where the VM runs now
	From, To string
	Progress switchover.Sample
	Decision switchover.Decision
	Dirty    []float64 // dirty rate samples of the last minute, B/s
	Downtime time.Duration
	// DowntimeKnown: a host reported Downtime.
	DowntimeKnown bool
	Mode          string // precopy or postcopy, once switched
	Switched      bool
	Lease         Lease
	Checkpoint    Checkpoint
	Now           time.Time
	Err           string
	Prefix        string   // how the prefix key is written, e.g. "Ctrl-]"
	PrefixArm     bool     // the prefix was typed; the next key is a command
	Events        []string // what happened, oldest first, each with its time
}

var (
	labelStyle = lipgloss.NewStyle().Foreground(lipgloss.Color("8"))
	titleStyle = lipgloss.NewStyle().Bold(true)
	errStyle   = lipgloss.NewStyle().Foreground(lipgloss.Color("9"))
	hintStyle  = lipgloss.NewStyle().Reverse(true)
)

// dashboardLines renders the dashboard in at most width columns and
// height lines: the state first, an error wrapped whole, then as many
// recent events as the height leaves, and the key hint last.
func dashboardLines(s dashState, width, height int, compact bool) []string {
	row := func(label, value string) string {
		return labelStyle.Render(fmt.Sprintf("%-9s", label)) + value
	}
	phase := string(s.Phase)
	if s.Phase == PhaseCopying && s.Progress.Iteration > 0 {
		phase += fmt.Sprintf(" (pass %d)", s.Progress.Iteration)
	}
	where := s.Host
	if s.Phase.migrating() && s.From != "" {
		where = s.From + " → " + s.To
	}
	var lines []string
	lines = append(lines, titleStyle.Render("handoff · "+s.Domain))
	lines = append(lines, row("phase", phase), row("where", where))
	if s.Progress.Total > 0 && !s.Switched {
		lines = append(lines, row("sent", progressBar(s.Progress, max(8, width-24))))
		lines = append(lines, row("dirty", fmt.Sprintf("%s vs link %s", units.Rate(s.Progress.DirtyRate), units.Rate(s.Progress.Bandwidth))))
		if !compact && len(s.Dirty) > 0 {
			lines = append(lines, row("", sparkline(s.Dirty, width-9)))
		}
		lines = append(lines, row("switch", switchText(s.Decision)))
	}
	if s.Switched {
		lines = append(lines, row("downtime", fmt.Sprintf("%s (%s)", units.Downtime(s.Downtime, s.DowntimeKnown), s.Mode)))
	}
	if !compact || s.Lease.Holder != "" {
		lines = append(lines, row("lease", leaseText(s.Lease, s.Now)))
	}
	if c := s.Checkpoint; c.Underway || !c.Last.IsZero() || !c.Next.IsZero() {
		lines = append(lines, row("saved", checkpointText(c, s.Now)))
	}
	for i, l := range lines {
		lines[i] = lipgloss.NewStyle().MaxWidth(width).Render(l)
	}
	room := height - len(lines) - 1 // the hint takes the last line
	if s.Err != "" {
		wrapped := strings.Split(lipgloss.NewStyle().Width(width).Render(s.Err), "\n")
		if len(wrapped) > max(1, room) {
			wrapped = append(wrapped[:max(0, room-1)], s.Prefix+" e shows the whole error")
		}
		for _, l := range wrapped {
			lines = append(lines, errStyle.Render(strings.TrimRight(l, " ")))
		}
		room -= len(wrapped)
	}
	if !compact && room >= 3 && len(s.Events) > 0 {
		lines = append(lines, "", labelStyle.Render("recent"))
		room -= 2
		events := s.Events[max(0, len(s.Events)-room):]
		for _, e := range events {
			lines = append(lines, lipgloss.NewStyle().MaxWidth(width).Render(e))
		}
		room -= len(events)
	}
	hint := s.Prefix + " ? for help"
	if s.PrefixArm {
		hint = s.Prefix + " … h hand back  s switch now  z zoom  d dashboard  m mouse  e error  q quit"
	}
	if !compact {
		for range max(0, room) {
			lines = append(lines, "") // the hint sits on the bottom line
		}
	}
	return append(lines, lipgloss.NewStyle().MaxWidth(width).Render(hintStyle.Render(hint)))
}

func progressBar(p switchover.Sample, width int) string {
	frac := 0.0
	if p.Total > 0 {
		frac = 1 - float64(p.Remaining)/float64(p.Total)
	}
	frac = max(0, min(1, frac))
	full := int(frac * float64(width))
	return strings.Repeat("█", full) + strings.Repeat("░", width-full) +
		fmt.Sprintf(" %3.0f%% %s", 100*frac, units.Bytes(p.Transferred))
}

func switchText(d switchover.Decision) string {
	switch {
	case d.Action == switchover.Switch:
		return "now"
	case d.Action == switchover.PostCopy:
		return "now, by post-copy"
	case !d.Converging && d.Reason != "":
		return d.Reason
	case d.SwitchIn > 0:
		return fmt.Sprintf("in ~%s", d.SwitchIn.Round(time.Second))
	}
	return d.Reason
}

func leaseText(l Lease, now time.Time) string {
	if l.Holder == "" {
		return "none"
	}
	return fmt.Sprintf("%s, epoch %d, %s left", l.Holder, l.Epoch, l.Expires.Sub(now).Round(time.Second))
}

// checkpointText says how old the newest checkpoint on the server is, and
// what comes next: what a lost laptop would cost now. The dashboard is
// narrow, so what waits comes before what it cost.
func checkpointText(c Checkpoint, now time.Time) string {
	age := "none yet"
	if !c.Last.IsZero() {
		age = now.Sub(c.Last).Round(time.Second).String() + " ago"
	}
	switch {
	case !c.Queued.IsZero():
		return age + " · one waits for the link"
	case c.Branch != "" && c.Underway:
		return fmt.Sprintf("%s, as branch %s (lease gone) · saving now", age, c.Branch)
	case c.Branch != "":
		return fmt.Sprintf("%s, as branch %s (lease gone)", age, c.Branch)
	case c.Underway:
		return age + " · saving now"
	}
	text := age
	if !c.Last.IsZero() {
		text += fmt.Sprintf(" (%s sent, pause %d ms)", units.Bytes(uint64(c.Bytes)), c.Pause.Milliseconds())
	}
	if !c.Next.IsZero() {
		text += " · next in " + max(0, c.Next.Sub(now)).Round(time.Second).String()
	}
	return text
}

// sparkline draws the last width samples as block heights.
func sparkline(samples []float64, width int) string {
	const bars = "▁▂▃▄▅▆▇█"
	if len(samples) > width {
		samples = samples[len(samples)-width:]
	}
	top := 0.0
	for _, v := range samples {
		top = max(top, v)
	}
	var b strings.Builder
	for _, v := range samples {
		i := 0
		if top > 0 {
			i = int(v / top * 7)
		}
		b.WriteRune([]rune(bars)[i])
	}
	return b.String()
}
