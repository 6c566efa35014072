package diskbench

import (
	"fmt"
	"io"
	"strings"

	"github.com/handoff-dev/handoff/units"
)

// WriteMarkdown writes rows as a markdown table, then how each grab fared
// against its target.
func WriteMarkdown(w io.Writer, rows []Row) {
	fmt.Fprintln(w, "| link | move | tool | to running there | disk on the link | of it NBD | disk, handoff's count | memory stream | link, both ways | reference: zstd -3 of | disk / reference | guest after |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
	for _, r := range rows {
		running, counted, ref, ratio := "–", "–", "–", "–"
		if r.Note == "" {
			running = fmt.Sprintf("%.1f s", r.Running.Seconds())
		}
		if r.DiskBytes >= 0 {
			counted = units.Bytes(uint64(r.DiskBytes))
		}
		if r.Reference.Zstd > 0 {
			ref = fmt.Sprintf("%s: %s", referenceOf(r.Move), units.Bytes(uint64(r.Reference.Zstd)))
			ratio = fmt.Sprintf("%.2fx", r.Ratio())
		}
		guest := r.Guest
		if r.Note != "" {
			guest = strings.TrimSpace(guest + " " + r.Note)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", rateName(r.Link), moveName(r), r.Tool,
			running, units.Bytes(uint64(r.Split.Disk())), units.Bytes(uint64(r.Split.NBD)), counted, units.Bytes(uint64(r.Split.Memory)),
			units.Bytes(uint64(r.LinkBytes)), ref, ratio, guest)
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		if !r.Judged() {
			continue
		}
		if r.Note != "" {
			fmt.Fprintf(w, "- %s, %s: NOT met: the move failed\n", rateName(r.Link), moveName(r))
			continue
		}
		verdict := "met"
		if !r.Met() {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "- %s, %s: the disk's %s on the link is %.2fx zstd -3 of %s (%d blocks of 4 KiB, %s); target at most %.1fx, guest %s: %s",
			rateName(r.Link), moveName(r), units.Bytes(uint64(r.Split.Disk())), r.Ratio(), referenceOf(r.Move), r.Reference.Blocks,
			units.Bytes(uint64(r.Reference.Zstd)), TargetRatio, r.Guest, verdict)
		if r.Split.NBD > 0 {
			// The mirror carries what the guest wrote during the move,
			// which the reference, made of the frozen image, leaves out.
			fmt.Fprintf(w, " (through the chunk store alone %s, %.2fx; NBD's mirror of the writes during the move %s)",
				units.Bytes(uint64(r.Split.Store)), float64(r.Split.Store)/float64(r.Reference.Zstd), units.Bytes(uint64(r.Split.NBD)))
		}
		fmt.Fprintln(w)
	}
}

// moveName names a row's move, and its try when it is not the first.
func moveName(r Row) string {
	if r.Try > 1 {
		return fmt.Sprintf("%s, try %d", r.Move, r.Try)
	}
	return string(r.Move)
}

// referenceOf says what a move's reference compresses.
func referenceOf(m Move) string {
	if m == SecondGrab {
		return "the blocks changed since the first grab"
	}
	return "the image's nonzero blocks"
}

// rateName writes a tc rate as people read it: "100mbit" as "100 Mbit/s".
func rateName(rate string) string {
	for _, u := range []struct{ suffix, name string }{{"gbit", "Gbit/s"}, {"mbit", "Mbit/s"}, {"kbit", "kbit/s"}} {
		if n, ok := strings.CutSuffix(rate, u.suffix); ok {
			return n + " " + u.name
		}
	}
	return rate
}
