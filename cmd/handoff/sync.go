package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/syncengine"
	"github.com/handoff-dev/handoff/units"
)

const syncUsage = `
Disk images and checkpoints as content-addressed, compressed, verified chunks: a
push sends only the chunks the store lacks, a pull fetches only what the local cache
lacks, and of a chunk that changed since the last push or pull of the same file, only
its changed bytes. Every chunk is verified; a pull cut short resumes; a pulled file is
replaced only when the new one is whole.

A qcow2 overlay is pushed whole, with every file of its backing chain, and one root
names the chain; a pull writes the chain's other files beside FILE, base first, and
points each header at the pulled file it is backed by.

  push FILE         store FILE (with its backing chain, if any), print its root
  pull ROOT FILE    write the image or chain ROOT to FILE (replaced only when complete)
  diff ROOT1 ROOT2  the byte ranges where ROOT2 differs from ROOT1
  gc ROOT...        remove from the local store what no given root (or chain) uses

On the logged-in home server's own disk, inside its 'serve --images' folders:
  index PATH          store the server's image PATH (and its chain), print its root
  checkout ROOT PATH  write ROOT from the server's store to PATH on the server

The store is the home server's (after 'handoff lease login'), or a directory with
--store DIR. The local cache is --cache (default ~/.cache/handoff/chunks).`

// syncCommands holds each sync command's arguments and what it does.
var syncCommands = map[string][2]string{
	"push":     {"FILE", "Store FILE in the store and print its root (the name of this version of it). An overlay is stored with every file of its backing chain, and the root names the whole chain."},
	"pull":     {"ROOT FILE", "Write the image ROOT to FILE, from the local cache first; FILE is replaced only when the new image is whole. A chain's other files go beside FILE, under the names they were pushed with."},
	"diff":     {"ROOT1 ROOT2", "Print the byte ranges (offset +length) where ROOT2 differs from ROOT1."},
	"gc":       {"ROOT...", "Remove from the local cache (or --store DIR) every object no given root uses."},
	"index":    {"PATH", "Ask the home server to store the image at PATH on its own disk (with its backing chain) in its store, and print its root: a workstation then pulls it by that root. PATH must lie in one of the server's --images folders."},
	"checkout": {"ROOT PATH", "Ask the home server to write the image or chain ROOT from its store to PATH on its own disk, reusing what the file there holds; PATH is replaced only when the new image is whole, and not while a running QEMU uses it. PATH must lie in one of the server's --images folders."},
}

func runSync(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		fmt.Fprintln(stdout, "Usage: handoff sync push|pull|diff|gc|index|checkout [flags] ARGS\n"+syncUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w: name a sync command", errUsage)
		}
		return nil
	}
	cmd, args := args[0], args[1:]
	use, ok := syncCommands[cmd]
	if !ok {
		return fmt.Errorf("%w: unknown sync command %q (see handoff sync --help)", errUsage, cmd)
	}
	fs := newFlagSet("sync "+cmd, use[0]+" [flags]", use[1]+"\n\nSee 'handoff sync --help' for how transfers work.", stdout, stderr)
	storeDir := fs.String("store", "", "a directory to use as the store instead of the home server")
	cacheDir := fs.String("cache", defaultCacheDir(), "the local chunk cache")
	jsonOut := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	progress := &progressLine{w: stderr}
	defer progress.end() // an error then starts on a line of its own
	if cmd == "index" || cmd == "checkout" {
		if *storeDir != "" {
			return fmt.Errorf("%w: sync %s works on the logged-in server's own disk and store; --store does not apply", errUsage, cmd)
		}
		return runServerImages(ctx, cmd, fs.Args(), *jsonOut, progress, stdout)
	}
	codec := syncengine.NewCodec()
	cache := syncengine.DirStore{Dir: *cacheDir}
	remote, err := syncStore(*storeDir)
	if err != nil && cmd != "gc" && cmd != "diff" {
		return err
	}
	client := &syncengine.Client{Remote: remote, Cache: cache, Codec: codec, Progress: progress.show}
	defer client.Close()
	var out any
	switch cmd {
	case "push":
		if fs.NArg() != 1 {
			return fmt.Errorf("%w: sync push FILE", errUsage)
		}
		root, members, st, err := client.PushChain(ctx, fs.Arg(0))
		if err != nil {
			return stopped(err, "push stopped: what reached the server is kept there; push again to send the rest")
		}
		js := map[string]any{"root": root, "stats": st}
		if len(members) > 1 {
			js["members"] = members
		}
		out = js
		if !*jsonOut {
			fmt.Fprintf(stdout, "%s\n%s\n", root, describeTransfer(st))
			for _, m := range chainMembers(members) {
				fmt.Fprintf(stdout, "%s %s (%s): %s\n", m.Root, m.Name, m.Format, describeTransfer(m.Stats))
			}
		}
	case "pull":
		if fs.NArg() != 2 {
			return fmt.Errorf("%w: sync pull ROOT FILE", errUsage)
		}
		root, err := syncengine.ParseHash(fs.Arg(0))
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		members, st, err := client.PullChain(ctx, root, fs.Arg(1))
		if err != nil {
			return stopped(err, fmt.Sprintf("pull stopped: %s is as it was, and what arrived is kept in the cache; pull again to resume", fs.Arg(1)))
		}
		out = st
		if len(members) > 1 {
			out = struct {
				syncengine.Stats
				Members []syncengine.ChainMember `json:"members"`
			}{st, members}
		}
		if !*jsonOut {
			if len(members) == 1 {
				fmt.Fprintf(stdout, "%s: %s\n", fs.Arg(1), describeTransfer(st))
			}
			for _, m := range chainMembers(members) {
				fmt.Fprintf(stdout, "%s: %s\n", m.Path, describeTransfer(m.Stats))
			}
		}
	case "diff":
		if fs.NArg() != 2 {
			return fmt.Errorf("%w: sync diff ROOT1 ROOT2", errUsage)
		}
		var roots [2]syncengine.Hash
		for i := range roots {
			if roots[i], err = syncengine.ParseHash(fs.Arg(i)); err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
		}
		ranges, err := client.Diff(ctx, roots[0], roots[1])
		if err != nil {
			return err
		}
		out = ranges
		if !*jsonOut {
			for _, r := range ranges {
				fmt.Fprintf(stdout, "%d +%d\n", r.Offset, r.Length)
			}
		}
	case "gc":
		var keep []syncengine.Hash
		for _, a := range fs.Args() {
			h, err := syncengine.ParseHash(a)
			if err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			keep = append(keep, h)
		}
		n, where, err := syncGC(ctx, client, *storeDir, keep)
		if err != nil {
			return err
		}
		out = map[string]int{"removed": n}
		if !*jsonOut {
			fmt.Fprintf(stdout, "removed %d objects from %s\n", n, where)
		}
	}
	progress.end()
	if *jsonOut {
		return json.NewEncoder(stdout).Encode(out)
	}
	return nil
}

// chainMembers is the members of a chain, for a line each; none for a
// plain image, whose output stays as it was before chains.
func chainMembers(members []syncengine.ChainMember) []syncengine.ChainMember {
	if len(members) < 2 {
		return nil
	}
	return members
}

// stopped says what a transfer interrupted by Ctrl-C (or SIGTERM) left and
// what to do; other errors pass as they are.
func stopped(err error, what string) error {
	if errors.Is(err, context.Canceled) {
		return errors.New(what)
	}
	return err
}

// syncGC collects the store in dir if one is given, else the local cache.
func syncGC(ctx context.Context, client *syncengine.Client, dir string, keep []syncengine.Hash) (int, string, error) {
	if dir == "" {
		n, err := client.GCCache(ctx, keep)
		return n, client.Cache.Dir, err
	}
	n, err := syncengine.DirStore{Dir: dir}.GC(ctx, client.Codec, keep)
	return n, dir, err
}

// describeTransfer says in a line what a push or pull moved.
func describeTransfer(st syncengine.Stats) string {
	s := fmt.Sprintf("%d chunks (%d zero", st.Chunks, st.ZeroChunks)
	if st.InPlace > 0 {
		s += fmt.Sprintf(", %d already in place", st.InPlace)
	}
	if st.FromCache > 0 {
		s += fmt.Sprintf(", %d from the cache", st.FromCache)
	}
	s += fmt.Sprintf("), sent %d", st.Sent)
	if st.Patched > 0 {
		if st.Base.IsZero() { // a chain whose top had no base: its other files had theirs
			s += fmt.Sprintf(" (%d as changes)", st.Patched)
		} else {
			s += fmt.Sprintf(" (%d as changes against %.12s)", st.Patched, st.Base)
		}
	}
	return s + fmt.Sprintf(", %s on the wire", units.Bytes(uint64(st.WireBytes)))
}

func defaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "handoff-chunks"
	}
	return filepath.Join(dir, "handoff", "chunks")
}

// syncStore is the directory store asked for, or the home server's.
func syncStore(dir string) (syncengine.Remote, error) {
	if dir != "" {
		return syncengine.DirStore{Dir: dir}, nil
	}
	return serverAPI("/v1/chunks", "give --store DIR, or log in to your home server with handoff lease login")
}

// serverAPI is the logged-in home server's API under prefix.
func serverAPI(prefix, otherwise string) (syncengine.HTTPStore, error) {
	c, err := loadServerConfig(otherwise)
	if err != nil {
		return syncengine.HTTPStore{}, err
	}
	return syncengine.HTTPStore{Base: c.Server + prefix, Token: c.Token,
		Client: syncengine.NewHTTPClient(leasectl.PinnedTLS(c.Fingerprint))}, nil
}

// runServerImages runs 'sync index' and 'sync checkout' against the
// logged-in server.
func runServerImages(ctx context.Context, cmd string, args []string, jsonOut bool, progress *progressLine, stdout io.Writer) error {
	api, err := serverAPI("/v1/disks", "log in to it with handoff lease login")
	if err != nil {
		return err
	}
	images := syncengine.ImagesClient{Base: api.Base, Token: api.Token, Client: api.Client, Progress: progress.show}
	var out any
	switch cmd {
	case "index":
		if len(args) != 1 {
			return fmt.Errorf("%w: sync index PATH (a path on the server)", errUsage)
		}
		res, err := images.Index(ctx, args[0])
		if err != nil {
			return stopped(err, "index stopped: what the server stored is kept; index again to store the rest")
		}
		out = res
		progress.end()
		if !jsonOut {
			fmt.Fprintf(stdout, "%s\n%d chunks (%d zero), %d newly stored, %s\n", res.Root, res.Stats.Chunks, res.Stats.ZeroChunks, res.Stats.Sent, units.Bytes(uint64(res.StoredBytes)))
			for _, m := range chainMembers(res.Members) {
				fmt.Fprintf(stdout, "%s %s (%s): %d chunks, %d newly stored\n", m.Root, m.Name, m.Format, m.Stats.Chunks, m.Stats.Sent)
			}
		}
	case "checkout":
		if len(args) != 2 {
			return fmt.Errorf("%w: sync checkout ROOT PATH (a path on the server)", errUsage)
		}
		root, err := syncengine.ParseHash(args[0])
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		res, err := images.Checkout(ctx, root, args[1])
		if err != nil {
			return stopped(err, fmt.Sprintf("checkout stopped: %s on the server is as it was", args[1]))
		}
		out = res
		progress.end()
		if !jsonOut {
			for _, m := range res.Members {
				fmt.Fprintf(stdout, "%s: %d chunks (%d zero, %d already in place, %d from the store)\n", m.Path, m.Stats.Chunks, m.Stats.ZeroChunks, m.Stats.InPlace, m.Stats.FromCache)
			}
		}
	}
	if jsonOut {
		return json.NewEncoder(stdout).Encode(out)
	}
	return nil
}

// progressLine keeps one line of progress on stderr, at most twice a
// second, and ends it when a step completes or the command stops.
type progressLine struct {
	w     io.Writer
	last  time.Time
	open  bool
	step  string
	start time.Time // when this step began
	from  int64     // where it stood then
	width int       // the last line's length
}

func (p *progressLine) show(step string, done, total int64) {
	now := time.Now()
	if step != p.step {
		p.step, p.start, p.from = step, now, done
	}
	if now.Sub(p.last) < 500*time.Millisecond && done < total {
		return
	}
	p.last = now
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	line := fmt.Sprintf("\r%s: %5.1f%% of %s", step, pct, units.Bytes(uint64(total)))
	chunks := step == "send" || step == "store" // counted in chunks, the other steps in bytes
	if chunks {
		line = fmt.Sprintf("\r%s: %5.1f%% of %d chunks", step, pct, total)
	}
	// The rate and what is left, once a second of the step has passed.
	if el := now.Sub(p.start); el > time.Second && done > p.from && done < total {
		rate := float64(done-p.from) / el.Seconds()
		left := time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second)
		if chunks {
			line += fmt.Sprintf(", %.0f chunks/s, %v left", rate, left)
		} else {
			line += fmt.Sprintf(", %s/s, %v left", units.Bytes(uint64(rate)), left)
		}
	}
	// Spaces cover what a longer line left; no escapes, so a log stays clean.
	fmt.Fprintf(p.w, "%s%s", line, strings.Repeat(" ", max(0, p.width-len(line))))
	p.width = len(line)
	p.open = true
	if done >= total {
		p.end()
	}
}

func (p *progressLine) end() {
	if p.open {
		fmt.Fprintln(p.w)
		p.open, p.width = false, 0
	}
}
