package diskbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
)

// MemoryPort is the TCP port the bench gives every migration's memory
// stream (--migrate-uri tcp://HOST:PORT), so that a counter at the link can
// tell it from the disk's bytes. It lies above libvirt's own range
// (49152-49215), from which the NBD servers take their ports.
const MemoryPort = 49300

// table is the bench's nftables table in the workstation's namespace.
const table = "handoff_diskbench"

// Split is what crossed the link, both ways, at the IP layer (IP and TCP
// headers included, Ethernet's not): the memory stream's bytes, the chunk
// store's (to and from the server's handoff serve), and all the rest,
// which on the lab link is NBD's, the disks' other way (libvirt's own
// control channel goes over unix sockets, and the guest has no network).
type Split struct {
	Memory, Store, NBD int64
}

// Disk is the disks' bytes, whichever way they went.
func (s Split) Disk() int64 { return s.Store + s.NBD }

// Sub is what crossed between before and s.
func (s Split) Sub(before Split) Split {
	return Split{Memory: s.Memory - before.Memory, Store: s.Store - before.Store, NBD: s.NBD - before.NBD}
}

// counterRules counts the traffic through dev by stream: the memory
// stream's port, the store's, and the rest. accept ends only this table's
// chains, so the lab's own rules still see every packet.
func counterRules(dev string, memoryPort, storePort int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n\tcounter memory { }\n\tcounter store { }\n\tcounter rest { }\n", table)
	for _, c := range []struct{ name, hook, iface string }{{"in", "input", "iifname"}, {"out", "output", "oifname"}} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority -10; policy accept;\n", c.name, c.hook)
		for _, p := range []struct {
			counter string
			port    int
		}{{"memory", memoryPort}, {"store", storePort}} {
			fmt.Fprintf(&b, "\t\t%s %q tcp dport %d counter name %q accept\n", c.iface, dev, p.port, p.counter)
			fmt.Fprintf(&b, "\t\t%s %q tcp sport %d counter name %q accept\n", c.iface, dev, p.port, p.counter)
		}
		fmt.Fprintf(&b, "\t\t%s %q counter name \"rest\"\n\t}\n", c.iface, dev)
	}
	b.WriteString("}\n")
	return b.String()
}

// counters are the bench's nftables counters in one namespace.
type counters struct{ netns string }

// startCounters puts the counters on dev in netns, the store's on its TCP
// port, replacing any an earlier, killed bench left.
func startCounters(ctx context.Context, netns, dev string, storePort int) (*counters, error) {
	c := &counters{netns: netns}
	c.stop(ctx)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(counterRules(dev, MemoryPort, storePort))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("count the lab link by stream (nft in %s): %w: %s", netns, err, out)
	}
	return c, nil
}

func (c *counters) read(ctx context.Context) (Split, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", c.netns, "nft", "-j", "list", "counters", "table", "inet", table).Output()
	if err != nil {
		return Split{}, fmt.Errorf("read the link's counters (nft in %s): %w", c.netns, err)
	}
	return parseCounters(out)
}

// parseCounters reads nft -j's list of the bench's counters.
func parseCounters(out []byte) (Split, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name  string `json:"name"`
				Bytes int64  `json:"bytes"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.NewDecoder(bytes.NewReader(out)).Decode(&doc); err != nil {
		return Split{}, fmt.Errorf("read the link's counters: %w", err)
	}
	var s Split
	seen := 0
	for _, o := range doc.Nftables {
		switch {
		case o.Counter == nil:
		case o.Counter.Name == "memory":
			s.Memory, seen = o.Counter.Bytes, seen+1
		case o.Counter.Name == "store":
			s.Store, seen = o.Counter.Bytes, seen+1
		case o.Counter.Name == "rest":
			s.NBD, seen = o.Counter.Bytes, seen+1
		}
	}
	if seen != 3 {
		return Split{}, fmt.Errorf("read the link's counters: want memory, store and rest in %s", out)
	}
	return s, nil
}

// stop removes the counters; it is safe to call when there are none.
func (c *counters) stop(ctx context.Context) {
	exec.CommandContext(ctx, "ip", "netns", "exec", c.netns, "nft", "delete", "table", "inet", table).Run()
}
