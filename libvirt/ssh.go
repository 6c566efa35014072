package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshTarget is what a qemu+ssh URI says about the SSH side.
type sshTarget struct {
	user, addr   string // addr is host:port
	socket       string // the libvirt socket on the remote host
	keyFile      string
	knownHosts   string
	noVerifyHost bool
}

func parseSSHTarget(u *url.URL) (sshTarget, error) {
	t := sshTarget{user: u.User.Username(), addr: u.Host}
	if t.user == "" {
		if cur, err := user.Current(); err == nil {
			t.user = cur.Username
		}
	}
	if u.Port() == "" {
		t.addr = net.JoinHostPort(u.Hostname(), "22")
	}
	q := u.Query()
	t.socket = q.Get("socket")
	if t.socket == "" {
		if u.Path != "/system" {
			return t, fmt.Errorf("libvirt URI %s: a remote session daemon's socket is not at a fixed place: add ?socket=/run/user/UID/libvirt/libvirt-sock", u.Redacted())
		}
		t.socket = "/var/run/libvirt/libvirt-sock"
	}
	t.keyFile = q.Get("keyfile")
	home, _ := os.UserHomeDir()
	t.knownHosts = q.Get("known_hosts")
	if t.knownHosts == "" {
		t.knownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	t.noVerifyHost = q.Get("no_verify") == "1"
	return t, nil
}

// authMethods offers the user's ssh-agent first, then key files: the one
// the URI names, or the usual ones in ~/.ssh.
func (t sshTarget) authMethods() []ssh.AuthMethod {
	var methods []ssh.AuthMethod
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if conn, err := net.Dial("unix", sock); err == nil {
			methods = append(methods, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
		}
	}
	files := []string{t.keyFile}
	if t.keyFile == "" {
		home, _ := os.UserHomeDir()
		files = nil
		for _, k := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			files = append(files, filepath.Join(home, ".ssh", k))
		}
	}
	var signers []ssh.Signer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if s, err := ssh.ParsePrivateKey(b); err == nil {
			signers = append(signers, s)
		}
	}
	if len(signers) > 0 {
		methods = append(methods, ssh.PublicKeys(signers...))
	}
	return methods
}

// dialSSH opens the workstation's one SSH connection to a server; every
// connection handoff needs to that server travels inside it.
func dialSSH(ctx context.Context, t sshTarget) (*ssh.Client, error) {
	hostKey := ssh.InsecureIgnoreHostKey()
	if !t.noVerifyHost {
		cb, err := knownhosts.New(t.knownHosts)
		if err != nil {
			return nil, fmt.Errorf("read known hosts %s: %w (ssh to the server once to add its key, or pass ?known_hosts=FILE)", t.knownHosts, err)
		}
		hostKey = cb
	}
	if t.keyFile != "" {
		// A key named in the URI must work: falling back to others would
		// hide the typo until the server refuses them all.
		if _, err := os.Stat(t.keyFile); err != nil {
			return nil, fmt.Errorf("SSH key %s: %w (fix ?keyfile= in the URI)", t.keyFile, err)
		}
	}
	methods := t.authMethods()
	if len(methods) == 0 {
		return nil, errors.New("no SSH key: start ssh-agent and ssh-add your key, or pass ?keyfile=PATH")
	}
	cfg := &ssh.ClientConfig{User: t.user, Auth: methods, HostKeyCallback: hostKey}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, t.addr, cfg)
	if err != nil {
		conn.Close()
		return nil, explainHandshake(err, t)
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// explainHandshake turns the SSH library's terse refusals into what the
// user should do about them.
func explainHandshake(err error, t sshTarget) error {
	var keyErr *knownhosts.KeyError
	switch {
	case errors.As(err, &keyErr) && len(keyErr.Want) > 0:
		return fmt.Errorf("the server's host key does not match the one in %s line %d: if the server was reinstalled, remove that line; if not, someone may be between you and it: %w",
			keyErr.Want[0].Filename, keyErr.Want[0].Line, err)
	case errors.As(err, &keyErr):
		return fmt.Errorf("the server's host key is not in %s: ssh to it once to check and add it: %w", t.knownHosts, err)
	case strings.Contains(err.Error(), "unable to authenticate"):
		return fmt.Errorf("the server refused your SSH key as %s: add your public key to its ~%s/.ssh/authorized_keys: %w", t.user, t.user, err)
	}
	return err
}

// sshSocketDialer reaches the remote libvirt socket through SSH
// streamlocal forwarding, as go-libvirt's socket.Dialer.
type sshSocketDialer struct {
	client *ssh.Client
	socket string
}

func (d sshSocketDialer) Dial() (net.Conn, error) {
	c, err := d.client.Dial("unix", d.socket)
	if err != nil {
		return nil, fmt.Errorf("open %s on the server through SSH: %w", d.socket, err)
	}
	return c, nil
}

// localSocket is where a local URI's daemon listens.
func localSocket(u *url.URL) string {
	if s := u.Query().Get("socket"); s != "" {
		return s
	}
	if u.Path == "/session" {
		dir := os.Getenv("XDG_RUNTIME_DIR")
		if dir == "" {
			home, _ := os.UserHomeDir()
			dir = filepath.Join(home, ".cache")
		}
		return filepath.Join(dir, "libvirt", "libvirt-sock")
	}
	return "/var/run/libvirt/libvirt-sock"
}

func isSSH(u *url.URL) bool { return strings.HasPrefix(u.Scheme, "qemu+ssh") }
