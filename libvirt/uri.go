package libvirt

import (
	"fmt"
	"net/url"
	"strings"
)

// transports go-libvirt can dial, by the part after "qemu+" in a URI.
var transports = map[string]bool{"": true, "unix": true, "ssh": true, "libssh": true, "libssh2": true, "tcp": true, "tls": true}

// ParseURI checks a libvirt connection URI before anything is dialed, so a
// typo gets an answer that names it rather than a socket error.
func ParseURI(raw string) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("empty libvirt URI: give one such as qemu:///system or qemu+ssh://user@host/system")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("libvirt URI %q: %w", raw, err)
	}
	driver, transport, _ := strings.Cut(u.Scheme, "+")
	if driver != "qemu" {
		return nil, fmt.Errorf("libvirt URI %q: driver %q is not supported; handoff speaks to QEMU: use qemu:///system, qemu:///session or qemu+ssh://user@host/system", raw, driver)
	}
	if !transports[transport] {
		return nil, fmt.Errorf("libvirt URI %q: unknown transport %q; use one of unix, ssh, libssh, tcp, tls", raw, transport)
	}
	if u.Path != "/system" && u.Path != "/session" {
		return nil, fmt.Errorf("libvirt URI %q: path must be /system or /session, not %q", raw, u.Path)
	}
	remote := transport == "ssh" || transport == "libssh" || transport == "libssh2" || transport == "tcp" || transport == "tls"
	if remote && u.Hostname() == "" {
		return nil, fmt.Errorf("libvirt URI %q: transport %s needs a host, as in qemu+%s://user@host%s", raw, transport, transport, u.Path)
	}
	if (transport == "" || transport == "unix") && u.Host != "" {
		if transport == "" {
			// qemu://host/system means TLS to host in libvirt's own client.
			return u, nil
		}
		return nil, fmt.Errorf("libvirt URI %q: a unix socket is local; drop the host %q or use qemu+ssh://%s%s", raw, u.Host, u.Host, u.Path)
	}
	return u, nil
}

// IsRemote reports whether the URI reaches another machine.
func IsRemote(u *url.URL) bool { return u.Host != "" }
