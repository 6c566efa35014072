package checkpointbench

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/units"
)

// WriteMarkdown writes rows as a markdown table, one row per link's turn,
// then how each turn fared against the pause target.
func WriteMarkdown(w io.Writer, rows []Row) {
	fmt.Fprintln(w, "| link | checkpoints | pause, median | pause, worst | sent, the first | sent, median of the rest | link, the first | link, median of the rest | memory file | changed since the one before (zstd -3), median | link / changed, median | link / changed, worst | snapshot to commit, median | snapshot to commit, worst | guest after |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rows {
		s := r.Summary()
		cells := []string{linkName(r), fmt.Sprintf("%d of %d", s.N, r.Count)}
		if s.N == 0 {
			cells = append(cells, "–", "–", "–", "–", "–", "–", "–", "–", "–", "–", "–", "–")
		} else {
			later := func(n int64) string {
				if s.Later == 0 {
					return "–"
				}
				return bytesOf(n)
			}
			cells = append(cells, ms(s.PauseMedian), ms(s.PauseWorst),
				bytesOf(s.FirstSent), later(s.SentMedian), bytesOf(s.FirstLink), later(s.LinkMedian),
				bytesOf(s.MemoryBytes))
			if s.Judged == 0 {
				cells = append(cells, "–", "–", "–")
			} else {
				cells = append(cells, bytesOf(s.RefMedian), fmt.Sprintf("%.2fx", s.RatioMedian), fmt.Sprintf("%.2fx", s.RatioWorst))
			}
			cells = append(cells, secs(s.TookMedian), secs(s.TookWorst))
		}
		guest := r.Guest
		if r.Note != "" && guest != "" {
			guest += "; " + r.Note
		} else if r.Note != "" {
			guest = r.Note
		}
		if guest == "" {
			guest = "–"
		}
		cells = append(cells, strings.ReplaceAll(guest, "|", `\|`))
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		s := r.Summary()
		switch {
		case r.Note != "" && s.N > 0:
			fmt.Fprintf(w, "- %s: not judged: the turn failed after %d of %d checkpoints (their worst pause %s)\n", linkName(r), s.N, r.Count, ms(s.PauseWorst))
		case r.Note != "" || s.N == 0:
			fmt.Fprintf(w, "- %s: not judged: the turn failed before its first checkpoint\n", linkName(r))
		default:
			verdict := "met"
			if !r.Met() {
				verdict = "NOT met"
			}
			fmt.Fprintf(w, "- %s: the worst pause of %d checkpoints %s (median %s); target under %s, guest %s: %s\n",
				linkName(r), s.N, ms(s.PauseWorst), ms(s.PauseMedian), ms(TargetPause), r.Guest, verdict)
			if s.Judged == 0 {
				fmt.Fprintf(w, "- %s: bytes not judged: no checkpoint after the first had its memory's pages lined up to compare\n", linkName(r))
				continue
			}
			verdict = "met"
			if !r.BytesMet() {
				verdict = "NOT met"
			}
			fmt.Fprintf(w, "- %s: the link's bytes of %d later checkpoints, over zstd -3 of the pages and disk blocks changed since the one before: median %.2fx, worst %.2fx; target at most %.1fx: %s\n",
				linkName(r), s.Judged, s.RatioMedian, s.RatioWorst, TargetBytesRatio, verdict)
		}
	}
}

// linkName is the row's link as people read it, and its try when it is
// not the first.
func linkName(r Row) string {
	if r.Try > 1 {
		return fmt.Sprintf("%s, try %d", rateName(r.Link), r.Try)
	}
	return rateName(r.Link)
}

// rateName writes a tc rate as people read it: "20mbit" as "20 Mbit/s".
func rateName(rate string) string {
	for _, u := range []struct{ suffix, name string }{{"gbit", "Gbit/s"}, {"mbit", "Mbit/s"}, {"kbit", "kbit/s"}} {
		if n, ok := strings.CutSuffix(rate, u.suffix); ok {
			return n + " " + u.name
		}
	}
	return rate
}

func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// bytesOf writes n for people; "–" for an unknown (negative) count.
func bytesOf(n int64) string {
	if n < 0 {
		return "–"
	}
	return units.Bytes(uint64(n))
}
