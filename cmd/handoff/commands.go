package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// runFunc is the shape of every subcommand: flags in args, output to stdout
// and stderr, and an error that says what failed and what to do.
type runFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

type command struct {
	name    string
	summary string
	run     runFunc
}

func commands() []command {
	return []command{
		{"grab", "take a VM from the server and run it here, watching it live", runGrab},
		{"view", "show a VM's screen in the terminal, keyboard forwarded", runView},
		{"migrate", "live-migrate a VM between two libvirt hosts with the switchover policy", runMigrate},
		{"checkpoint", "commit a checkpoint of a VM running here to the server now", runCheckpoint},
		{"restore", "start a VM on the server from the checkpoint its lost device last committed", runRestore},
		{"lab", "start, inspect or remove the built-in two-host lab (up|down|status)", runLab},
		{"lease", "acquire, renew, release, steal or inspect VM image leases", runLease},
		{"serve", "run the home-server daemon (leases, commits, chunk store)", runServe},
		{"sync", "push, pull, diff or garbage-collect content-addressed images", runSync},
		{"bench", "measure handoff against plain virsh on the lab", runBench},
	}
}

// internalCommands are run by handoff itself, and not listed.
func internalCommands() []command {
	return []command{
		{"relay-end", "the workstation's end of a move's relay, run by migrate and grab", runRelayEnd},
	}
}

// errUsage marks errors caused by how handoff was called; they exit with 2.
var errUsage = errors.New("usage")

func exitCode(err error) int {
	if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stdout)
		if len(args) == 0 {
			return fmt.Errorf("%w: name a command", errUsage)
		}
		return nil
	}
	for _, c := range append(commands(), internalCommands()...) {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
	}
	return fmt.Errorf("%w: unknown command %q; run 'handoff --help' for the list", errUsage, args[0])
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "handoff moves a running VM from your home server to this machine and back.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: handoff COMMAND [flags] [args]")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'handoff COMMAND --help' for a command's flags.")
}

// newFlagSet makes a FlagSet whose --help prints a usage line, a description
// and the flags to stdout, and whose parse errors go to stderr.
func newFlagSet(name, usage, description string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("handoff "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: handoff %s %s\n\n%s\n\nFlags:\n", name, usage, strings.TrimSpace(description))
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and turns a parse failure into a usage error.
// Help goes to stdout so that 'handoff X --help | less' works.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			fs.SetOutput(stdout)
			fs.Usage()
			return flag.ErrHelp
		}
	}
	// Flags may come before or after the positional arguments, as people
	// type them: "sync push disk.img --store DIR".
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			positional = append(positional, rest...) // after "--" all is positional
			break
		}
		positional, args = append(positional, rest[0]), rest[1:]
	}
	return fs.Parse(append([]string{"--"}, positional...))
}
