package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/units"
)

// serverConfig is how this device reaches its home server.
type serverConfig struct {
	Server      string `json:"server"`
	Token       string `json:"token"`
	Fingerprint string `json:"fingerprint"`
}

// loadServerConfig reads the saved login; otherwise says what to do when
// there is none.
func loadServerConfig(otherwise string) (serverConfig, error) {
	var c serverConfig
	raw, err := os.ReadFile(serverConfigPath())
	if err != nil {
		return c, fmt.Errorf("no home server known (%v): %s", err, otherwise)
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, fmt.Errorf("%s is damaged: %w; log in again", serverConfigPath(), err)
	}
	return c, nil
}

func serverConfigPath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = "."
	}
	return filepath.Join(dir, "handoff", "server.json")
}

const leaseUsage = `
Leases keep a VM image running in one place at a time; commits are its checkpoints,
each fenced by the lease that allows it.

  login     remember the server, this device's token and the server's fingerprint
  create    register an image
  acquire   take the image's lease (refused while another device holds it)
  renew     extend your lease
  release   end your lease
  steal     take the lease from a lost device (its later commits are refused)
  checkout  note the head to start from; --read-only takes no lease
  commit    add a checkpoint (with --lease, or from a read-only checkout)
  branch    save a refused commit as a new image, so nothing is lost
  status    the lease and head
  log       each commit (time, device, epoch, size), then lease events

Every command takes --json. Run 'handoff lease COMMAND --help' for its flags.`

func runLease(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		fmt.Fprintln(stdout, "Usage: handoff lease COMMAND [flags] IMAGE\n"+leaseUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w: name a lease command", errUsage)
		}
		return nil
	}
	cmd, args := args[0], args[1:]
	fs := newFlagSet("lease "+cmd, "[flags] IMAGE", "See 'handoff lease --help'.", stdout, stderr)
	jsonOut := fs.Bool("json", false, "print JSON")
	host, _ := os.Hostname()
	holder := fs.String("holder", host, "who holds the lease (this device)")
	ttl := fs.Duration("ttl", 2*time.Minute, "lease time to live")
	leaseID := fs.String("lease", "", "the lease ID (renew, release, commit)")
	reason := fs.String("reason", "", "why the lease is stolen")
	parent := fs.String("parent", "", "the commit this one builds on")
	root := fs.String("root", "", "the commit's manifest root (from handoff sync push)")
	newImage := fs.String("new-image", "", "the branch's name")
	readOnly := fs.Bool("read-only", false, "checkout without a lease")
	// login saves these; other commands take them over the saved ones.
	var login serverConfig
	fs.StringVar(&login.Server, "server", "", "the server's URL, https://host:7443")
	fs.StringVar(&login.Token, "token", "", "this device's token (from handoff serve)")
	fs.StringVar(&login.Fingerprint, "fingerprint", "", "the server certificate's SHA-256 fingerprint")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if cmd == "login" {
		return saveLogin(login, stdout)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: lease %s takes one IMAGE", errUsage, cmd)
	}
	image := fs.Arg(0)
	c, err := leaseClientWith(login)
	if err != nil {
		return err
	}
	commitReq := leasectl.CommitRequest{Parent: *parent, LeaseID: *leaseID, Holder: *holder, Manifest: leasectl.Manifest{Root: *root}}
	var out any
	switch cmd {
	case "create":
		err = c.Create(ctx, image)
		out = map[string]string{"image": image}
	case "acquire":
		out, err = c.Acquire(ctx, image, *holder, *ttl)
	case "renew":
		out, err = c.Renew(ctx, image, *leaseID, *ttl)
	case "release":
		err = c.Release(ctx, image, *leaseID)
		out = map[string]string{"released": *leaseID}
	case "steal":
		out, err = c.Steal(ctx, image, *holder, *reason, *ttl)
	case "checkout":
		if !*readOnly {
			return fmt.Errorf("%w: a checkout with a lease is 'handoff lease acquire'; add --read-only for one without", errUsage)
		}
		out, err = c.Checkout(ctx, image)
	case "commit":
		out, err = c.Commit(ctx, image, commitReq)
		if errors.Is(err, leasectl.ErrRefused) {
			err = fmt.Errorf("%w\nkeep this state as a new image: handoff lease branch %s --new-image %s-%s --parent '%s' --root %s", err, image, image, *holder, *parent, *root)
		}
	case "branch":
		out, err = c.Branch(ctx, image, *newImage, commitReq)
	case "status", "log":
		var s *leasectl.State
		s, err = c.Status(ctx, image)
		out = s
		if err == nil && cmd == "log" {
			out = logOf(s)
		}
	default:
		return fmt.Errorf("%w: unknown lease command %q (see handoff lease --help)", errUsage, cmd)
	}
	if err != nil {
		return err
	}
	if *jsonOut {
		return json.NewEncoder(stdout).Encode(out)
	}
	return printLease(stdout, cmd, out)
}

func printLease(w io.Writer, cmd string, out any) error {
	switch v := out.(type) {
	case leasectl.Lease:
		fmt.Fprintf(w, "lease %s for %s, epoch %d, until %s\n", v.ID, v.Holder, v.Epoch, v.Expires.Local().Format(time.TimeOnly))
	case leasectl.Commit:
		fmt.Fprintf(w, "commit %s (parent %q, epoch %d, root %s)\n", v.ID, v.Parent, v.Epoch, v.Manifest.Root)
	case leasectl.Checkout:
		fmt.Fprintf(w, "read-only checkout of %s at head %q\n", v.Image, v.Head)
	case *leasectl.State:
		lease := "none"
		if v.Lease != nil {
			lease = fmt.Sprintf("%s holds it (epoch %d) until %s", v.Lease.Holder, v.Lease.Epoch, v.Lease.Expires.Local().Format(time.TimeOnly))
		}
		fmt.Fprintf(w, "image %s: head %q, %d commits; lease: %s\n", v.Image, v.Head, len(v.Commits), lease)
	case imageLog:
		fmt.Fprintf(w, "commits of %s (%d):\n", v.Image, len(v.Commits))
		for _, c := range v.Commits {
			size := "-"
			if c.SentBytes > 0 || c.MemoryBytes > 0 {
				size = fmt.Sprintf("%s sent, memory %s", units.Bytes(uint64(c.SentBytes)), units.Bytes(uint64(c.MemoryBytes)))
			}
			fmt.Fprintf(w, "  %s  %s  %-12s epoch %-3d %-10s %s\n", c.Time.Local().Format(time.DateTime), c.ID, c.Holder, c.Epoch, c.Kind, size)
		}
		fmt.Fprintln(w, "events:")
		for _, e := range v.Events {
			fmt.Fprintf(w, "  %s  %-8s %-12s epoch %-3d %s\n", e.Time.Local().Format(time.DateTime), e.Kind, e.Holder, e.Epoch, e.Detail)
		}
	default:
		fmt.Fprintf(w, "%s: done\n", cmd)
	}
	return nil
}

func saveLogin(c serverConfig, stdout io.Writer) error {
	if c.Server == "" || c.Token == "" || c.Fingerprint == "" {
		return fmt.Errorf("%w: login needs --server, --token and --fingerprint (handoff serve prints all three)", errUsage)
	}
	path := serverConfigPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	raw, _ := json.MarshalIndent(c, "", "  ")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return fmt.Errorf("save login: %w", err)
	}
	fmt.Fprintf(stdout, "saved: %s\n", path)
	return nil
}

func leaseClient() (*leasectl.Client, error) { return leaseClientWith(serverConfig{}) }

// leaseClientWith reaches the saved server, with what flags gave taking
// the place of what was saved; all three given, no login is needed.
func leaseClientWith(flags serverConfig) (*leasectl.Client, error) {
	var c serverConfig
	if flags.Server == "" || flags.Token == "" || flags.Fingerprint == "" {
		var err error
		if c, err = loadServerConfig("run handoff lease login --server URL --token TOKEN --fingerprint FP, or give all three"); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct{ saved, flag *string }{{&c.Server, &flags.Server}, {&c.Token, &flags.Token}, {&c.Fingerprint, &flags.Fingerprint}} {
		if *f.flag != "" {
			*f.saved = *f.flag
		}
	}
	return leasectl.NewClient(c.Server, c.Token, c.Fingerprint), nil
}

// imageLog is what 'lease log' shows: each commit with what made it (a
// grab's checkpoint, or another commit) and what it cost, then every
// lease event.
type imageLog struct {
	Image   string           `json:"image"`
	Commits []commitLine     `json:"commits"`
	Events  []leasectl.Event `json:"events"`
}

type commitLine struct {
	ID          string    `json:"id"`
	Parent      string    `json:"parent"`
	Time        time.Time `json:"time"`
	Holder      string    `json:"holder"` // the device
	Epoch       uint64    `json:"epoch"`
	Kind        string    `json:"kind"` // "checkpoint" (memory and disks of a running VM) or "commit"
	SentBytes   int64     `json:"sent_bytes,omitempty"`
	MemoryBytes int64     `json:"memory_bytes,omitempty"`
}

func logOf(s *leasectl.State) imageLog {
	l := imageLog{Image: s.Image, Events: s.Log, Commits: []commitLine{}}
	for _, c := range s.Commits {
		line := commitLine{ID: c.ID, Parent: c.Parent, Time: c.Time, Holder: c.Holder, Epoch: c.Epoch, Kind: "commit"}
		if saved, err := checkout.SavedFromMeta(c.Manifest.Meta); err == nil {
			line.Kind, line.SentBytes, line.MemoryBytes = "checkpoint", saved.SentBytes, saved.MemoryBytes
		}
		l.Commits = append(l.Commits, line)
	}
	return l
}
