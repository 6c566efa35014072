package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/relay"
	"github.com/handoff-dev/handoff/testvm/lab"
)

// streamRelay is the carrier of a move's memory stream through handoff
// serve's relay on the VM's server, compressed; nil where no serve on that
// server is known. Its workstation end runs in a process of its own
// ('handoff relay-end'), so a client that dies mid-move leaves the job
// going, for the next one to take over.
func streamRelay(l *lab.Lab, from, to string, stats *relay.Stats) libvirt.StreamCarrier {
	if relayCarrier(l, from, to) == nil {
		return nil
	}
	args := []string{"relay-end", "--from", from, "--to", to}
	if l != nil {
		args = append(args, lab.RelayEndFlag(l.Dir))
	}
	return &relay.Detached{Stats: stats, Command: func() *exec.Cmd { return exec.Command(executable(), args...) }}
}

// mirrorRelay is streamRelay for the disks' NBD mirror: it sends each
// write as its changes to the chain below the overlays, which both hosts
// hold.
func mirrorRelay(l *lab.Lab, from, to string, stats *relay.Stats) libvirt.StreamCarrier {
	c := relayCarrier(l, from, to)
	d, _ := streamRelay(l, from, to, stats).(*relay.Detached)
	if c == nil || d == nil {
		return nil
	}
	return mirrorCarrier{d, c.ToServer}
}

type mirrorCarrier struct {
	*relay.Detached
	toServer bool
}

func (m mirrorCarrier) CarryMirror(ctx context.Context, below map[string]libvirt.BelowOverlay) (int, func() error, error) {
	mirror := &relay.Mirror{Here: map[string]string{}, There: map[string]string{}}
	for export, b := range below {
		source, destination := mirror.There, mirror.Here // a grab: the server sends
		if m.toServer {
			source, destination = mirror.Here, mirror.There
		}
		source[export], destination[export] = b.Source, b.Destination
	}
	return m.Detached.CarryMirror(ctx, mirror)
}

// relayCarrier is the relay's workstation end for a move from from to to:
// the lab's when they are its hosts, else that of the server logged in
// to, if it runs on the remote one of from and to; nil for none.
func relayCarrier(l *lab.Lab, from, to string) *relay.Carrier {
	if l != nil && (from == l.Server.URI && to == l.Workstation.URI || from == l.Workstation.URI && to == l.Server.URI) {
		c, err := l.StreamRelay(to == l.Server.URI, nil)
		if err != nil {
			return nil
		}
		return c
	}
	remote, toServer := from, false
	switch {
	case isLocalURI(from) && !isLocalURI(to):
		remote, toServer = to, true
	case isLocalURI(from) || !isLocalURI(to):
		return nil // both here, or neither: no workstation end
	}
	c, err := loadServerConfig("")
	if err != nil {
		return nil // not logged in: the stream goes as QEMU sends it
	}
	serve, err := url.Parse(c.Server)
	lv, lerr := libvirt.ParseURI(remote)
	if err != nil || lerr != nil || serve.Hostname() != lv.Hostname() {
		return nil // serve runs elsewhere: its 127.0.0.1 is not the VM's host
	}
	return &relay.Carrier{
		Server:   relay.Server{URL: c.Server, Token: c.Token, TLS: leasectl.PinnedTLS(c.Fingerprint)},
		Local:    relay.Loopback(),
		ToServer: toServer,
	}
}

// runRelayEnd is the process streamRelay starts: not for people.
func runRelayEnd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("relay-end", "--from URI --to URI [--lab DIR]", `
The workstation's end of handoff serve's migration relay for one move, run by
migrate and grab in a process of their own: it reports to its client on file
descriptor 3 and outlives a client that dies mid-move. Not for people.`, stdout, stderr)
	from := fs.String("from", "", "source libvirt URI")
	to := fs.String("to", "", "destination libvirt URI")
	labDir := fs.String("lab", "", "the lab whose hosts from and to are")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	var l *lab.Lab
	if *labDir != "" {
		var err error
		if l, err = lab.Load(*labDir); err != nil {
			return err
		}
	}
	c := relayCarrier(l, *from, *to)
	if c == nil {
		return fmt.Errorf("%w: no relay between %s and %s", errUsage, *from, *to)
	}
	reports := os.NewFile(3, "reports")
	if _, err := reports.Stat(); err != nil {
		return errors.New("relay-end reports on file descriptor 3: migrate and grab start it so")
	}
	return relay.RunDetached(ctx, c, os.Stdin, reports)
}
