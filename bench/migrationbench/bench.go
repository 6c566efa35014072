package migrationbench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/relay"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/units"
)

// Case is one guest on one link.
type Case struct {
	Name  string
	Link  lab.Link
	Guest lab.GuestConfig
}

// Row is one measured migration.
type Row struct {
	Case        string
	Tool        string // "handoff", "handoff, no relay", "virsh" or "zstd -3 of memory"
	Mode        string // precopy, postcopy, or "did not converge"
	Downtime    time.Duration
	Total       time.Duration
	Transferred uint64 // what QEMU counted
	// OnLink is what crossed the link both ways while the move ran,
	// counted at the workstation's end of the veth.
	OnLink uint64
	// Faults is what post-copy's page requests cost the guest (handoff's
	// rows; zero without post-copy).
	Faults Faults
	Note   string
}

// tools are the ways each case is moved: handoff as it ships (memory
// through its zstd relay), handoff with QEMU's own stream, and virsh.
var tools = []string{"handoff", "handoff, no relay", "virsh"}

// DefaultCases are the issue's: the realistic guest on three links, and
// a guest that dirties faster than the slow link carries.
func DefaultCases() []Case {
	var cs []Case
	for _, bw := range []string{"20mbit", "100mbit", "1gbit"} {
		cs = append(cs, Case{Name: "realistic guest, " + bw, Link: lab.Link{Bandwidth: bw, RTT: 40 * time.Millisecond}, Guest: lab.DefaultGuest})
	}
	cs = append(cs, Case{Name: "busy guest (6 MB/s), 20mbit", Link: lab.Link{Bandwidth: "20mbit", RTT: 40 * time.Millisecond},
		Guest: lab.GuestConfig{MemMB: 256, DirtyMBps: 6, WSSMB: 64}})
	return cs
}

// Run runs each case with handoff's engine and with plain 'virsh migrate
// --live', on the same guest (restarted fresh for each) and link, and
// returns what each measured. A run that does not finish within twice
// memory/bandwidth is aborted and reported as not converging.
func Run(ctx context.Context, l *lab.Lab, cases []Case, progress io.Writer) ([]Row, error) {
	var rows []Row
	say := func(format string, a ...any) { fmt.Fprintf(progress, format+"\n", a...) }
	for _, c := range cases {
		bits, err := units.BitsPerSecond(c.Link.Bandwidth)
		if err != nil {
			return rows, err
		}
		bound := 2 * time.Duration(float64(c.Guest.MemMB<<20)/(bits/8)*float64(time.Second))
		ref, err := reference(ctx, l, c, bits/8)
		if err != nil {
			return rows, fmt.Errorf("%s: the zstd reference: %w", c.Name, err)
		}
		say("%s: zstd -3 of its memory (%s): %s, %.1f s at the link's rate", c.Name, units.Bytes(ref.Transferred), units.Bytes(ref.OnLink), ref.Total.Seconds())
		rows = append(rows, ref)
		for _, tool := range tools {
			say("%s: %s", c.Name, tool)
			warning, err := l.Shape(ctx, c.Link)
			if err != nil {
				return rows, err
			}
			if warning != "" {
				say("  warning: %s", warning)
			}
			if err := l.RestartGuest(ctx, c.Guest, nil); err != nil {
				return rows, err
			}
			// Let the guest fill its working set, as a desktop would have.
			if err := l.WaitTick(ctx, 5, time.Minute); err != nil {
				return rows, err
			}
			before, err := l.LinkCounts()
			if err != nil {
				return rows, err
			}
			var row Row
			switch tool {
			case "virsh":
				row, err = runVirsh(ctx, l, bound)
			default:
				row, err = runHandoff(ctx, l, bits/8, bound, tool == "handoff")
			}
			if err != nil {
				return rows, fmt.Errorf("%s with %s: %w", c.Name, tool, err)
			}
			after, err := l.LinkCounts()
			if err != nil {
				return rows, err
			}
			row.OnLink = uint64(after.Received + after.Sent - before.Received - before.Sent)
			row.Case, row.Tool = c.Name, tool
			if st, err := l.GuestSerial(); err == nil && st.Integrity != "ok" {
				row.Note += " integrity " + st.Integrity
			}
			say("  %s: %s, downtime %v, total %v, %s on the link", tool, row.Mode, row.Downtime, row.Total.Round(time.Millisecond), units.Bytes(row.OnLink))
			rows = append(rows, row)
		}
	}
	return rows, nil
}

func runHandoff(ctx context.Context, l *lab.Lab, linkRate float64, bound time.Duration, relayed bool) (Row, error) {
	src, dst, err := l.Conns(ctx)
	if err != nil {
		return Row{}, err
	}
	defer src.Close()
	defer dst.Close()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	o := libvirt.Options{LinkRate: linkRate, MigrateURI: l.MigrateURI(l.Workstation.Name)}
	stats := &relay.Stats{}
	if relayed {
		if o.Stream, err = l.StreamRelay(false, stats); err != nil {
			return Row{}, err
		}
	}
	m, err := libvirt.Start(ctx, src, dst, lab.GuestName, o)
	if err != nil {
		return Row{}, err
	}
	stopFaults := watchFaults(ctx, l)
	res, err := libvirt.Run(m, func(libvirt.Progress) {})
	row := Row{Mode: res.Mode, Downtime: res.Downtime, Total: res.Total, Transferred: res.Transferred, Faults: stopFaults(), Note: m.Plan().Reason}
	if relayed {
		// The server's end compresses; the workstation's counts both sides.
		row.Note = fmt.Sprintf("relay: %.0f%% of the stream on the link", 100*stats.Ratio())
	}
	if err != nil {
		row.Mode, row.Total = "did not converge", bound
		row.Note = err.Error()
	}
	return row, nil
}

func runVirsh(ctx context.Context, l *lab.Lab, bound time.Duration) (Row, error) {
	row := Row{Tool: "virsh"}
	runCtx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	cmd := exec.CommandContext(runCtx, "virsh", "-c", l.Server.URI, "migrate", "--live", "--p2p",
		lab.GuestName, l.Workstation.URI, "--migrateuri", l.MigrateURI(l.Workstation.Name))
	cmd.Cancel = func() error {
		// Stop the job the way a user would, so the guest stays put.
		exec.Command("virsh", "-c", l.Server.URI, "domjobabort", lab.GuestName).Run()
		return nil
	}
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	if runCtx.Err() != nil {
		row.Mode, row.Total, row.Note = "did not converge", bound, "aborted at the bound"
		return row, nil
	}
	if err != nil {
		return row, fmt.Errorf("virsh migrate: %w: %s", err, out)
	}
	info, err := exec.CommandContext(ctx, "virsh", "-c", l.Server.URI, "domjobinfo", "--completed", lab.GuestName).CombinedOutput()
	if err != nil {
		return row, fmt.Errorf("virsh domjobinfo: %w: %s", err, info)
	}
	row.Mode = "precopy"
	row.Total, row.Downtime, row.Transferred = parseDomjobinfo(string(info))
	return row, nil
}

var domjobinfoLine = regexp.MustCompile(`(?m)^(Time elapsed|Total downtime|Data processed):\s+([\d.]+)\s*(\S+)`)

// parseDomjobinfo reads virsh's human table of a completed job.
func parseDomjobinfo(s string) (total, downtime time.Duration, transferred uint64) {
	for _, m := range domjobinfoLine.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[1] {
		case "Time elapsed":
			total = time.Duration(v * float64(time.Millisecond))
		case "Total downtime":
			downtime = time.Duration(v * float64(time.Millisecond))
		case "Data processed":
			mult := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m[3]]
			transferred = uint64(v * mult)
		}
	}
	return total, downtime, transferred
}

// reference is the case's floor: its guest's memory as zstd -3 makes it
// (QEMU's own save stream of the fresh guest, which leaves zero pages out
// as migration does), over the link's rate.
func reference(ctx context.Context, l *lab.Lab, c Case, linkRate float64) (Row, error) {
	if err := l.RestartGuest(ctx, c.Guest, nil); err != nil {
		return Row{}, err
	}
	if err := l.WaitTick(ctx, 5, time.Minute); err != nil {
		return Row{}, err
	}
	dir, err := os.MkdirTemp("", "handoff-bench-save-")
	if err != nil {
		return Row{}, err
	}
	defer os.RemoveAll(dir)
	// The server's daemon user writes the file: let it into the folder.
	if err := os.Chmod(dir, 0o777); err != nil {
		return Row{}, err
	}
	file := filepath.Join(dir, "memory")
	if out, err := exec.CommandContext(ctx, "virsh", "-c", l.Server.URI, "save", lab.GuestName, file).CombinedOutput(); err != nil {
		return Row{}, fmt.Errorf("virsh save: %w: %s", err, out)
	}
	f, err := os.Open(file)
	if err != nil {
		return Row{}, err
	}
	defer f.Close()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return Row{}, err
	}
	var count countingWriter
	enc.Reset(&count)
	raw, err := io.Copy(enc, f)
	if err == nil {
		err = enc.Close()
	}
	if err != nil {
		return Row{}, fmt.Errorf("compress the saved memory: %w", err)
	}
	return Row{Case: c.Name, Tool: "zstd -3 of memory", Mode: "reference", Transferred: uint64(raw), OnLink: count.n,
		Total: time.Duration(float64(count.n) / linkRate * float64(time.Second)), Note: "the compressed memory over the link's rate"}, nil
}

type countingWriter struct{ n uint64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += uint64(len(p)); return len(p), nil }

// WriteMarkdown writes rows as a markdown table; "on link" is what crossed
// the veth, "QEMU sent" what QEMU counted of its stream.
func WriteMarkdown(w io.Writer, rows []Row) {
	fmt.Fprintln(w, "| case | tool | mode | downtime | total | on link | QEMU sent | page requests: mean wait | note |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---|")
	for _, r := range rows {
		faults := "–"
		if r.Faults.Requests > 0 {
			faults = fmt.Sprintf("%d: %.1f ms", r.Faults.Requests, float64(r.Faults.Mean().Microseconds())/1000)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d ms | %.1f s | %s | %s | %s | %s |\n", r.Case, r.Tool, r.Mode,
			r.Downtime.Milliseconds(), r.Total.Seconds(), units.Bytes(r.OnLink), units.Bytes(r.Transferred), faults, strings.TrimSpace(r.Note))
	}
}
