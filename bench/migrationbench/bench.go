package lab

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/units"
)

// BenchCase is one guest on one link.
type BenchCase struct {
	Name  string
	Link  Link
	Guest GuestConfig
}

// BenchRow is one measured migration.
type BenchRow struct {
	Case        string
	Tool        string // "handoff" or "virsh"
	Mode        string // precopy, postcopy, or "did not converge"
	Downtime    time.Duration
	Total       time.Duration
	Transferred uint64
	Note        string
}

// DefaultBenchCases are the issue's: the realistic guest on three links, and
// a guest that dirties faster than the slow link carries.
func DefaultBenchCases() []BenchCase {
	var cs []BenchCase
	for _, bw := range []string{"20mbit", "100mbit", "1gbit"} {
		cs = append(cs, BenchCase{Name: "realistic guest, " + bw, Link: Link{Bandwidth: bw, RTT: 40 * time.Millisecond}, Guest: DefaultGuest})
	}
	cs = append(cs, BenchCase{Name: "busy guest (6 MB/s), 20mbit", Link: Link{Bandwidth: "20mbit", RTT: 40 * time.Millisecond},
		Guest: GuestConfig{MemMB: 256, DirtyMBps: 6, WSSMB: 64}})
	return cs
}

// Bench runs each case with handoff's engine and with plain 'virsh migrate
// --live', on the same guest (restarted fresh for each) and link, and
// returns what each measured. A run that does not finish within twice
// memory/bandwidth is aborted and reported as not converging.
func (l *Lab) Bench(ctx context.Context, cases []BenchCase, progress io.Writer) ([]BenchRow, error) {
	var rows []BenchRow
	say := func(format string, a ...any) { fmt.Fprintf(progress, format+"\n", a...) }
	for _, c := range cases {
		bits, err := units.BitsPerSecond(c.Link.Bandwidth)
		if err != nil {
			return rows, err
		}
		bound := 2 * time.Duration(float64(c.Guest.MemMB<<20)/(bits/8)*float64(time.Second))
		for _, tool := range []string{"handoff", "virsh"} {
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
			var row BenchRow
			if tool == "handoff" {
				row, err = l.benchHandoff(ctx, bits/8, bound)
			} else {
				row, err = l.benchVirsh(ctx, bound)
			}
			if err != nil {
				return rows, fmt.Errorf("%s with %s: %w", c.Name, tool, err)
			}
			row.Case = c.Name
			if st, err := l.GuestSerial(); err == nil && st.Integrity != "ok" {
				row.Note += " integrity " + st.Integrity
			}
			say("  %s: %s, downtime %v, total %v, %s", tool, row.Mode, row.Downtime, row.Total.Round(time.Millisecond), units.Bytes(row.Transferred))
			rows = append(rows, row)
		}
	}
	return rows, nil
}

func (l *Lab) benchHandoff(ctx context.Context, linkRate float64, bound time.Duration) (BenchRow, error) {
	src, dst, err := l.Conns(ctx)
	if err != nil {
		return BenchRow{}, err
	}
	defer src.Close()
	defer dst.Close()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	m, err := libvirt.Start(ctx, src, dst, GuestName, libvirt.Options{LinkRate: linkRate, MigrateURI: l.MigrateURI(l.Workstation.Name)})
	if err != nil {
		return BenchRow{}, err
	}
	res, err := libvirt.Run(m, func(libvirt.Progress) {})
	row := BenchRow{Tool: "handoff", Mode: res.Mode, Downtime: res.Downtime, Total: res.Total, Transferred: res.Transferred, Note: m.Plan().Reason}
	if err != nil {
		row.Mode, row.Total = "did not converge", bound
		row.Note = err.Error()
	}
	return row, nil
}

func (l *Lab) benchVirsh(ctx context.Context, bound time.Duration) (BenchRow, error) {
	row := BenchRow{Tool: "virsh"}
	runCtx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	cmd := exec.CommandContext(runCtx, "virsh", "-c", l.Server.URI, "migrate", "--live", "--p2p",
		GuestName, l.Workstation.URI, "--migrateuri", l.MigrateURI(l.Workstation.Name))
	cmd.Cancel = func() error {
		// Stop the job the way a user would, so the guest stays put.
		exec.Command("virsh", "-c", l.Server.URI, "domjobabort", GuestName).Run()
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
	info, err := exec.CommandContext(ctx, "virsh", "-c", l.Server.URI, "domjobinfo", "--completed", GuestName).CombinedOutput()
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

// BenchTable writes rows as a markdown table.
func BenchTable(w io.Writer, rows []BenchRow) {
	fmt.Fprintln(w, "| case | tool | mode | downtime | total | sent | note |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %d ms | %.1f s | %s | %s |\n", r.Case, r.Tool, r.Mode,
			r.Downtime.Milliseconds(), r.Total.Seconds(), units.Bytes(r.Transferred), strings.TrimSpace(r.Note))
	}
}
