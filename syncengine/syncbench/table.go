package syncbench

import (
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/handoff-dev/handoff/libvirt/switchover"
)

// The targets.
const (
	targetUpdateRatio = 1.1 // update bytes over the reference
	targetIndexRate   = 1e9 // bytes per second
	// targetLinkRate is the link a cold pull should fill: 1 Gbit/s, the
	// lab's default, in bytes per second.
	targetLinkRate = 125e6
)

// WriteMarkdown prints the table, then how the targets fared.
func (t Table) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Image: %s ext4, %.0f%% used, %d real files (%s); the update changed %d of its 4 KiB blocks (%s), uniformly at random.\n",
		formatBytes(t.Image.Size), 100*t.Image.Used, t.Image.Files, formatBytes(t.Image.FileBytes), t.ChangedBlocks, formatBytes(t.ChangedBytes))
	fmt.Fprintln(w, "Bytes are counted at the socket (TLS, HTTP and rsync's protocol included) by a proxy on 127.0.0.1; rates are image bytes per second.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | tool | to workstation | to server | time | rate | workstation CPU | server CPU | note |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range t.Rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Case, r.Tool,
			cellBytes(r.Down), cellBytes(r.Up), cellDuration(r.Time), cellRate(r.Rate),
			cellDuration(r.WorkstationCPU), cellDuration(r.ServerCPU), r.Note)
	}
	fmt.Fprintln(w)
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	fmt.Fprintf(w, "- update at most %.1f × the changed data compressed: %.2f × %s, %s\n",
		targetUpdateRatio, t.UpdateRatio, formatBytes(t.Reference), verdict(t.UpdateRatio > 0 && t.UpdateRatio <= targetUpdateRatio))
	fmt.Fprintf(w, "- indexing a local image at least %s/s: %s/s, %s\n",
		formatBytes(targetIndexRate), formatBytes(int64(t.IndexRate)), verdict(t.IndexRate >= targetIndexRate))
	if r, ok := t.Row(CaseCold, ToolHandoff); ok {
		whose := "the workstation's side (client and proxy)"
		if r.ServerCPU == 0 {
			whose = "the client, the proxy and the server's handlers, all in one process,"
		}
		fmt.Fprintf(w, "- a cold pull limited by a %.0f Gbit/s link, not by our CPU: %s used %.1f CPU s for %s on the wire, so one core carries %s/s (%.2f Gbit/s), %s; on loopback, both sides sharing %d cores, the pull moved %s/s on the wire (%.2f Gbit/s)\n",
			targetLinkRate*8/1e9, whose, r.WorkstationCPU.Seconds(), formatBytes(r.Down+r.Up),
			formatBytes(int64(t.ColdCoreRate)), t.ColdCoreRate*8/1e9, verdict(t.ColdCoreRate >= targetLinkRate),
			runtime.NumCPU(), formatBytes(int64(t.ColdWireRate)), t.ColdWireRate*8/1e9)
	}
	if t.Elapsed > 0 {
		fmt.Fprintf(w, "\nThe whole run took %.0f s on %d cores, making the image included.\n", t.Elapsed.Seconds(), runtime.NumCPU())
	}
}

func cellBytes(n int64) string {
	if n < 0 {
		return "–"
	}
	return formatBytes(n)
}

func cellDuration(d time.Duration) string {
	if d <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func cellRate(r float64) string {
	if r <= 0 {
		return "–"
	}
	return formatBytes(int64(r)) + "/s"
}

// formatBytes is decimal, as link speeds are: the same words as the rest
// of handoff's output.
func formatBytes(n int64) string { return switchover.FormatBytes(uint64(max(n, 0))) }
