package syncbench

import (
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/handoff-dev/handoff/units"
)

// The targets.
const (
	targetUpdateRatio = 1.1 // update bytes over the reference
	targetIndexRate   = 1e9 // bytes per second
	// targetLinkRate is the link a cold pull should fill: 1 Gbit/s, the
	// lab's default, in bytes per second.
	targetLinkRate = 125e6
	// targetLinkFill is the share of what a plain TCP stream moves over
	// the link that a pull must move on the wire to count as limited by it.
	targetLinkFill = 0.9
)

// WriteMarkdown prints the table, then how the targets fared.
func (t Table) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Image: %s ext4, %.0f%% used, %d real files (%s); the update changed %d of its 4 KiB blocks (%s), uniformly at random.\n",
		formatBytes(t.Image.Size), 100*t.Image.Used, t.Image.Files, formatBytes(t.Image.FileBytes), t.ChangedBlocks, formatBytes(t.ChangedBytes))
	fmt.Fprintln(w, "Bytes are counted at the socket (TLS, HTTP and rsync's protocol included) by a proxy on 127.0.0.1; rates are image bytes per second.")
	if t.NoLink == "" {
		fmt.Fprintln(w, "handoff serve runs in a network namespace of the bench's, behind a veth link: unshaped except for the 1 Gbit/s row.")
	}
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
		fmt.Fprint(w, "- a cold pull limited by the link, not by our CPU: ")
		if t.LinkWireRate > 0 {
			fill := t.LinkBusyRate / t.LinkTCPRate
			fmt.Fprintf(w, "over a link shaped to %.0f Gbit/s, while its bytes flowed, it moved %s/s, %.0f%% of the %s/s one plain TCP stream moves (both counted at the link; at least %.0f%% counts), %s; from start to a synced image %s/s (%.0f%%: the rest is the pull starting and the image's last sync, on this machine's disk); ",
				targetLinkRate*8/1e9, formatBytes(int64(t.LinkBusyRate)), 100*fill, formatBytes(int64(t.LinkTCPRate)), 100*targetLinkFill,
				verdict(fill >= targetLinkFill), formatBytes(int64(t.LinkWireRate)), 100*t.LinkWireRate/t.LinkTCPRate)
		} else {
			fmt.Fprintf(w, "no shaped link (%s), so judged by the CPU alone: ", t.NoLink)
		}
		fmt.Fprintf(w, "%s used %.1f CPU s for %s on the wire, so one core carries %s/s (%.2f Gbit/s)",
			whose, r.WorkstationCPU.Seconds(), formatBytes(r.Down+r.Up), formatBytes(int64(t.ColdCoreRate)), t.ColdCoreRate*8/1e9)
		if t.LinkWireRate == 0 {
			fmt.Fprintf(w, ", %s", verdict(t.ColdCoreRate >= targetLinkRate))
		}
		fmt.Fprintf(w, "; unshaped, both sides sharing %d cores, the pull moved %s/s on the wire (%.2f Gbit/s)\n",
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
func formatBytes(n int64) string { return units.Bytes(uint64(max(n, 0))) }
