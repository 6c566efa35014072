package lab

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// A NAT lab models a laptop behind NAT: the workstation drops every
// connection that comes to it, and reaches the server only over SSH. A
// migration works there only if the workstation opens every connection.

// natRules makes the workstation accept only replies on its link.
const natRules = `table inet handoff_nat {
	chain input {
		type filter hook input priority 0; policy accept;
		iifname "%s" ct state established,related accept
		iifname "%s" drop
	}
}
`

func (l *Lab) sshDir() string { return filepath.Join(l.Dir, "ssh") }

// startNAT runs sshd on the server's link address, with a key pair for the
// workstation, and closes the workstation to inbound connections.
func (l *Lab) startNAT(ctx context.Context) error {
	dir := l.sshDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// sshd refuses to start without its privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	for _, k := range []string{"host_key", "id_ed25519"} {
		if err := run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "handoff-lab", "-f", filepath.Join(dir, k)); err != nil {
			return err
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id_ed25519.pub"))
	if err != nil {
		return err
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_key.pub"))
	if err != nil {
		return err
	}
	files := map[string]string{
		"authorized_keys": string(pub),
		"known_hosts":     l.Server.Addr + " " + strings.Join(strings.Fields(string(hostPub))[:2], " ") + "\n",
		"sshd_config": fmt.Sprintf(`ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
PidFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
# the server's libvirtd runs as the lab user and must reach root's forwarded sockets
StreamLocalBindMask 0111
StreamLocalBindUnlink yes
`, l.Server.Addr, filepath.Join(dir, "host_key"), filepath.Join(dir, "authorized_keys"), filepath.Join(dir, "sshd.pid")),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	if err := run(ctx, "ip", "netns", "exec", l.Server.Netns, "/usr/sbin/sshd", "-f", filepath.Join(dir, "sshd_config")); err != nil {
		return fmt.Errorf("start the lab server's sshd: %w", err)
	}
	rules := fmt.Sprintf(natRules, l.Workstation.Dev, l.Workstation.Dev)
	cmd := []string{"ip", "netns", "exec", l.Workstation.Netns, "nft", "-f", filepath.Join(dir, "nat.nft")}
	if err := os.WriteFile(filepath.Join(dir, "nat.nft"), []byte(rules), 0o600); err != nil {
		return err
	}
	if err := run(ctx, cmd...); err != nil {
		return fmt.Errorf("close the workstation to inbound connections: %w", err)
	}
	l.NAT = true
	l.ServerSSHURI = l.sshURI()
	return l.save()
}

// sshURI reaches the server's libvirt daemon from the workstation over SSH.
func (l *Lab) sshURI() string {
	q := url.Values{}
	q.Set("socket", l.Server.Socket)
	q.Set("keyfile", filepath.Join(l.sshDir(), "id_ed25519"))
	q.Set("known_hosts", filepath.Join(l.sshDir(), "known_hosts"))
	return "qemu+ssh://root@" + l.Server.Addr + "/session?" + q.Encode()
}
