package main

import (
	"context"
	"fmt"
	"io"

	"github.com/handoff-dev/handoff/testvm/lab"
)

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", "[--dir DIR] [--keep]", `
Measure handoff's migration engine against plain 'virsh migrate --live' on the built-in
lab: the same guest, restarted fresh for each run, on 20 Mbit/s, 100 Mbit/s and 1 Gbit/s
links (40 ms round trip), and a guest that dirties memory faster than the slow link
carries. Prints downtime, total time and bytes sent for both as a markdown table.
Takes several minutes; needs root.`, stdout, stderr)
	dir := fs.String("dir", "/run/handoff-lab-bench", "the bench's own lab directory (not the everyday lab's)")
	keep := fs.Bool("keep", false, "leave the bench lab up afterwards")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	l, err := lab.Up(ctx, lab.Config{Dir: *dir, Progress: stderr})
	if err != nil {
		return err
	}
	if !*keep {
		defer lab.Down(context.WithoutCancel(ctx), *dir)
	}
	rows, err := l.Bench(ctx, lab.DefaultBenchCases(), stderr)
	lab.BenchTable(stdout, rows)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
