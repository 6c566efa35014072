package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"golang.org/x/crypto/ssh"
)

// Conn is one connection to a libvirt daemon.
type Conn struct {
	uri string
	url *url.URL
	lv  *golibvirt.Libvirt
	// ssh is the workstation's SSH connection to a qemu+ssh host; tunnels
	// for migrations open inside it. Nil for local and TCP/TLS URIs.
	ssh *ssh.Client
	// remoteSocket is the libvirt socket on the far end of ssh.
	remoteSocket string
}

// Connect dials the daemon that uri names and opens its QEMU driver.
func Connect(ctx context.Context, uri string) (*Conn, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if isSSH(u) {
		return connectSSH(ctx, uri, u)
	}
	type dialed struct {
		lv  *golibvirt.Libvirt
		err error
	}
	done := make(chan dialed, 1)
	// go-libvirt's dialers take no context; the dial ends by its own
	// timeout, and a connection that arrives after we gave up is closed.
	go func() {
		lv, err := golibvirt.ConnectToURI(u)
		done <- dialed{lv, err}
	}()
	select {
	case d := <-done:
		if d.err != nil {
			return nil, fmt.Errorf("connect %s: %w%s", uri, d.err, connectHint(u, d.err))
		}
		return &Conn{uri: uri, url: u, lv: d.lv}, nil
	case <-ctx.Done():
		go func() {
			if d := <-done; d.err == nil {
				d.lv.Disconnect()
			}
		}()
		return nil, fmt.Errorf("connect %s: %w", uri, ctx.Err())
	}
}

// connectHint says what to check for the usual reasons a dial fails.
func connectHint(u *url.URL, err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "no such file or directory") && u.Query().Get("socket") != "":
		return fmt.Sprintf(" (no libvirt daemon listens on %s: is it running?)", u.Query().Get("socket"))
	case strings.Contains(msg, "no such file or directory"):
		return " (is libvirtd running? for a user's own daemon use qemu:///session)"
	case strings.Contains(msg, "connection refused") && u.Query().Get("socket") != "":
		return fmt.Sprintf(" (%s is there but no libvirt daemon accepts on it: is it running, or still starting?)", u.Query().Get("socket"))
	case strings.Contains(msg, "connection refused") && u.Host == "":
		return " (libvirtd's socket is there but nobody accepts on it: is libvirtd running?)"
	case strings.Contains(msg, "connection refused"), strings.Contains(msg, "no route to host"), strings.Contains(msg, "i/o timeout"):
		return fmt.Sprintf(" (is %s reachable and its libvirt or SSH port open?)", u.Host)
	case strings.Contains(msg, "unable to authenticate"), strings.Contains(msg, "knownhosts"):
		return " (check that your SSH key is in ssh-agent and the host is in ~/.ssh/known_hosts: ssh to it once)"
	}
	return ""
}

// connectSSH opens the workstation's SSH connection to the server and
// speaks to libvirt through it; migrations tunnel through the same one.
func connectSSH(ctx context.Context, uri string, u *url.URL) (*Conn, error) {
	t, err := parseSSHTarget(u)
	if err != nil {
		return nil, err
	}
	client, err := dialSSH(ctx, t)
	if err != nil {
		return nil, fmt.Errorf("connect %s: ssh %s@%s: %w%s", u.Redacted(), t.user, t.addr, err, connectHint(u, err))
	}
	lv := golibvirt.NewWithDialer(sshSocketDialer{client: client, socket: t.socket})
	if err := lv.ConnectToURI(golibvirt.RemoteURI(u)); err != nil {
		client.Close()
		return nil, fmt.Errorf("connect %s: %w (is libvirtd running on the server, with its socket at %s?)", u.Redacted(), err, t.socket)
	}
	return &Conn{uri: uri, url: u, lv: lv, ssh: client, remoteSocket: t.socket}, nil
}

// URI is the URI this connection was made with.
func (c *Conn) URI() string { return c.uri }

// Close ends the connection.
func (c *Conn) Close() error {
	err := c.lv.Disconnect()
	if c.ssh != nil {
		c.ssh.Close()
	}
	return err
}

// Disconnected is closed when the daemon's connection drops.
func (c *Conn) Disconnected() <-chan struct{} { return c.lv.Disconnected() }

// Domain is a VM as one daemon knows it.
type Domain struct {
	conn *Conn
	dom  golibvirt.Domain
}

// ErrNoDomain is returned (wrapped) when a daemon has no domain of that name.
var ErrNoDomain = errors.New("no such domain")

// Lookup finds a domain by name.
func (c *Conn) Lookup(name string) (*Domain, error) {
	dom, err := c.lv.DomainLookupByName(name)
	if err != nil {
		if golibvirt.IsNotFound(err) {
			return nil, fmt.Errorf("%w %q on %s (list them with: virsh -c '%s' list --all)", ErrNoDomain, name, c.uri, c.uri)
		}
		return nil, fmt.Errorf("look up domain %q on %s: %w", name, c.uri, err)
	}
	return &Domain{conn: c, dom: dom}, nil
}

// Define makes a persistent domain from its XML and starts it.
func (c *Conn) DefineAndStart(domainXML string) (*Domain, error) {
	dom, err := c.lv.DomainDefineXML(domainXML)
	if err != nil {
		return nil, fmt.Errorf("define domain on %s: %w", c.uri, err)
	}
	if err := c.lv.DomainCreate(dom); err != nil {
		return nil, fmt.Errorf("start domain %s on %s: %w", dom.Name, c.uri, err)
	}
	return &Domain{conn: c, dom: dom}, nil
}

// Name is the domain's name.
func (d *Domain) Name() string { return d.dom.Name }

// State is a domain's run state in libvirt's words.
type State string

const (
	StateRunning  State = "running"
	StatePaused   State = "paused"
	StateShutoff  State = "shut off"
	StateOther    State = "other"
	StatePostcopy State = "paused for post-copy" // the source side during post-copy
	// StatePostcopyFailed is the source side of a post-copy whose stream
	// broke: the guest runs on the destination, waiting for the pages
	// this side still holds, until the migration is resumed.
	StatePostcopyFailed State = "paused, its post-copy broken"
)

// State reports whether the domain runs here.
func (d *Domain) State() (State, error) {
	state, reason, err := d.conn.lv.DomainGetState(d.dom, 0)
	if err != nil {
		if golibvirt.IsNotFound(err) {
			return StateShutoff, nil
		}
		return StateOther, fmt.Errorf("state of %s on %s: %w", d.dom.Name, d.conn.uri, err)
	}
	switch golibvirt.DomainState(state) {
	case golibvirt.DomainRunning:
		return StateRunning, nil
	case golibvirt.DomainPaused:
		switch golibvirt.DomainPausedReason(reason) {
		case golibvirt.DomainPausedPostcopy:
			return StatePostcopy, nil
		case golibvirt.DomainPausedPostcopyFailed:
			return StatePostcopyFailed, nil
		}
		return StatePaused, nil
	case golibvirt.DomainShutoff:
		return StateShutoff, nil
	}
	return StateOther, nil
}

// Resume continues a paused domain.
func (d *Domain) Resume() error {
	if err := d.conn.lv.DomainResume(d.dom); err != nil {
		return fmt.Errorf("resume %s on %s: %w", d.dom.Name, d.conn.uri, err)
	}
	return nil
}

// Destroy stops a domain at once and, if undefine, forgets its definition.
func (d *Domain) Destroy(undefine bool) error {
	if st, _ := d.State(); st != StateShutoff {
		if err := d.conn.lv.DomainDestroy(d.dom); err != nil && !golibvirt.IsNotFound(err) {
			return fmt.Errorf("destroy %s on %s: %w", d.dom.Name, d.conn.uri, err)
		}
	}
	if undefine {
		if err := d.conn.lv.DomainUndefine(d.dom); err != nil && !golibvirt.IsNotFound(err) {
			return fmt.Errorf("undefine %s on %s: %w", d.dom.Name, d.conn.uri, err)
		}
	}
	return nil
}

// XML is the domain's live description.
func (d *Domain) XML() (string, error) {
	x, err := d.conn.lv.DomainGetXMLDesc(d.dom, 0)
	if err != nil {
		return "", fmt.Errorf("XML of %s on %s: %w", d.dom.Name, d.conn.uri, err)
	}
	return x, nil
}

// VNCAddress is where a domain's screen is served, as its host sees it.
type VNCAddress struct {
	Network string // "unix" or "tcp"
	Address string // socket path, or host:port
}

// VNC reads the VNC address from the running domain's XML.
func (d *Domain) VNC() (VNCAddress, error) {
	x, err := d.XML()
	if err != nil {
		return VNCAddress{}, err
	}
	addr, err := vncFromXML(x)
	if err != nil {
		return VNCAddress{}, fmt.Errorf("domain %s on %s: %w", d.dom.Name, d.conn.uri, err)
	}
	return addr, nil
}

func vncFromXML(domainXML string) (VNCAddress, error) {
	var doc struct {
		Graphics []struct {
			Type   string `xml:"type,attr"`
			Port   int    `xml:"port,attr"`
			Listen string `xml:"listen,attr"`
			Socket string `xml:"socket,attr"`
		} `xml:"devices>graphics"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &doc); err != nil {
		return VNCAddress{}, fmt.Errorf("parse domain XML: %w", err)
	}
	for _, g := range doc.Graphics {
		if g.Type != "vnc" {
			continue
		}
		if g.Socket != "" {
			return VNCAddress{Network: "unix", Address: g.Socket}, nil
		}
		if g.Port > 0 {
			host := g.Listen
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			return VNCAddress{Network: "tcp", Address: fmt.Sprintf("%s:%d", host, g.Port)}, nil
		}
		return VNCAddress{}, errors.New("VNC display has no port or socket yet (is the domain running?)")
	}
	return VNCAddress{}, errors.New("no VNC display: add <graphics type='vnc'/> to the domain")
}

// DialVNC opens a domain's screen as its host serves it: directly for a
// local host, through the workstation's SSH connection for a qemu+ssh one,
// so no VNC port is ever opened beyond the server itself.
func (c *Conn) DialVNC(ctx context.Context, addr VNCAddress) (net.Conn, error) {
	if c.ssh != nil {
		conn, err := c.ssh.DialContext(ctx, addr.Network, addr.Address)
		if err != nil {
			return nil, fmt.Errorf("open VNC %s on %s through SSH: %w", addr.Address, c.url.Host, err)
		}
		return conn, nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, addr.Network, addr.Address)
	if err != nil {
		return nil, fmt.Errorf("open VNC %s: %w", addr.Address, err)
	}
	return conn, nil
}

// SavedXML is the domain definition a memory file saved on this host (by
// Checkpoint, or virsh save) carries.
func (c *Conn) SavedXML(path string) (string, error) {
	x, err := c.lv.DomainSaveImageGetXMLDesc(path, uint32(golibvirt.DomainSaveImageXMLSecure))
	if err != nil {
		return "", fmt.Errorf("read the domain saved in %s on %s: %w", path, c.uri, err)
	}
	return x, nil
}

// Restore starts the domain saved in the memory file at path on this host,
// running, as domainXML defines it (the saved definition with other disk
// paths, say), and makes that its persistent definition too. libvirt gives
// a restored domain a new VM generation ID (when its definition has the
// device; one in domainXML that differs from the saved one is refused), as
// a clone must have: the persistent definition takes the new one.
func (c *Conn) Restore(path, domainXML string) (*Domain, error) {
	if err := c.lv.DomainRestoreFlags(path, golibvirt.OptString{domainXML}, uint32(golibvirt.DomainSaveRunning)); err != nil {
		return nil, fmt.Errorf("restore the domain saved in %s on %s: %w", path, c.uri, err)
	}
	d, err := c.Lookup(domainName(domainXML))
	if err != nil {
		return nil, err
	}
	id, err := d.GenID()
	if err != nil {
		return nil, err
	}
	if _, err := c.lv.DomainDefineXML(withGenID(domainXML, id)); err != nil {
		return nil, fmt.Errorf("the domain restored from %s runs on %s, but its definition was not updated: %w", path, c.uri, err)
	}
	return d, nil
}

// GenID is the VM generation ID the domain runs with; "" when it has no
// such device.
func (d *Domain) GenID() (string, error) {
	x, err := d.XML()
	if err != nil {
		return "", err
	}
	if m := genIDElement.FindStringSubmatch(x); m != nil {
		return m[1], nil
	}
	return "", nil
}

var (
	genIDElement = regexp.MustCompile(`<genid>([^<]*)</genid>|<genid\s*/>`)
	nameElement  = regexp.MustCompile(`<name>([^<]*)</name>`)
)

// withGenID sets the domain XML's VM generation ID to id, where it has the
// device.
func withGenID(domainXML, id string) string {
	if id == "" {
		return domainXML
	}
	return genIDElement.ReplaceAllLiteralString(domainXML, "<genid>"+id+"</genid>")
}

func domainName(domainXML string) string {
	if m := nameElement.FindStringSubmatch(domainXML); m != nil {
		return m[1]
	}
	return ""
}
