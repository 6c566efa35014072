package main

import (
	"net/url"

	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/relay"
	"github.com/handoff-dev/handoff/testvm/lab"
)

// streamRelay is the carrier of a move's memory stream through handoff
// serve's relay on the VM's server, compressed; nil where no serve on that
// server is known: the lab's when from and to are its hosts, else the one
// logged in to, if it runs on the remote one of from and to.
func streamRelay(l *lab.Lab, from, to string, stats *relay.Stats) libvirt.StreamCarrier {
	if l != nil && (from == l.Server.URI && to == l.Workstation.URI || from == l.Workstation.URI && to == l.Server.URI) {
		c, err := l.StreamRelay(to == l.Server.URI, stats)
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
		Stats:    stats,
	}
}
