package libvirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/handoff-dev/handoff/internal/pipe"
)

// tunnel carries a peer-to-peer migration's two connections (the source
// daemon's to the destination daemon, and QEMU's memory stream) inside the
// SSH connection the workstation opened to the server, so that the server
// never connects to the workstation: a laptop behind NAT can take its VM and
// give it back.
type tunnel struct {
	peerURI    string // the destination daemon as the source daemon reaches it
	migrateURI string // where the source QEMU sends memory
	disksURI   string // where the source QEMU mirrors disks, if asked for
	listenAddr string // where the destination QEMU listens

	listeners []net.Listener
	cleanup   []func()
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// openTunnel returns nil when neither side is reached over SSH, or both
// are (two servers reach each other directly). The tunnel lives until
// Close, whatever becomes of the caller's context: in post-copy the VM on
// the destination still fetches pages through it.
func openTunnel(src, dst *Conn, disks bool) (*tunnel, error) {
	if (src.ssh == nil) == (dst.ssh == nil) {
		return nil, nil
	}
	t := &tunnel{listenAddr: "127.0.0.1"}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	if err := t.open(src, dst, disks); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *tunnel) open(src, dst *Conn, disks bool) error {
	if src.ssh != nil {
		// Grab: the server's daemon and QEMU dial listeners that sshd
		// opens on the server; each connection comes back to us.
		sock := "/tmp/handoff-peer-" + randomName() + ".sock"
		peer, err := src.ssh.ListenUnix(sock)
		if err != nil {
			return fmt.Errorf("open a socket on the server through SSH (is AllowStreamLocalForwarding on in sshd_config?): %w", err)
		}
		// sshd leaves the socket file behind when the forward ends.
		t.cleanup = append(t.cleanup, func() { removeRemoteFile(src, sock) })
		t.forward(peer, func() (net.Conn, error) { return net.Dial("unix", localSocket(dst.url)) })
		// Each stream QEMU opens (memory, and the NBD mirror of disks)
		// comes to a port sshd opens on the server and goes on to the
		// same port here, where the destination QEMU listens.
		stream := func() (string, error) {
			ln, err := src.ssh.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return "", fmt.Errorf("open a port on the server through SSH (is AllowTcpForwarding on in sshd_config?): %w", err)
			}
			port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
			t.forward(ln, func() (net.Conn, error) { return net.Dial("tcp", "127.0.0.1:"+port) })
			return "tcp://127.0.0.1:" + port, nil
		}
		t.peerURI = "qemu+unix://" + dst.url.Path + "?socket=" + sock
		return t.openStreams(stream, disks)
	}
	// Hand back: our daemon and QEMU dial listeners here; each connection
	// goes to the server inside SSH.
	dir, err := os.MkdirTemp("", "handoff-peer-")
	if err != nil {
		return err
	}
	t.cleanup = append(t.cleanup, func() { os.RemoveAll(dir) })
	// The local daemon may run as another user (qemu:///session of a lab
	// user): let it reach the socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	sock := filepath.Join(dir, "peer.sock")
	peer, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	if err := os.Chmod(sock, 0o777); err != nil {
		peer.Close()
		return err
	}
	t.forward(peer, func() (net.Conn, error) { return dst.ssh.Dial("unix", dst.remoteSocket) })
	stream := func() (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		t.forward(ln, func() (net.Conn, error) { return dst.ssh.Dial("tcp", "127.0.0.1:"+port) })
		return "tcp://127.0.0.1:" + port, nil
	}
	t.peerURI = "qemu+unix://" + dst.url.Path + "?socket=" + sock
	return t.openStreams(stream, disks)
}

// openStreams opens the memory stream's way through the tunnel and, when
// disks move too, the NBD mirror's: without its own, NBD would pick a
// port in 49152-49215 that nothing forwards.
func (t *tunnel) openStreams(stream func() (string, error), disks bool) error {
	var err error
	if t.migrateURI, err = stream(); err != nil {
		return err
	}
	if disks {
		t.disksURI, err = stream()
	}
	return err
}

// forward accepts on ln until the tunnel closes and joins each connection
// to a fresh one from dial.
func (t *tunnel) forward(ln net.Listener, dial func() (net.Conn, error)) {
	t.listeners = append(t.listeners, ln)
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := dial()
			if err != nil {
				in.Close()
				continue
			}
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				pipe.Join(t.ctx, in, out)
			}()
		}
	}()
}

// Close stops the listeners and every joined connection.
func (t *tunnel) Close() {
	t.cancel()
	for _, ln := range t.listeners {
		ln.Close()
	}
	t.wg.Wait()
	for _, f := range t.cleanup {
		f()
	}
}

// removeRemoteFile deletes a file of ours on c's host, over its SSH
// connection; a failure leaves only a stale socket in /tmp behind.
func removeRemoteFile(c *Conn, path string) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return
	}
	defer s.Close()
	s.Run("rm -f -- '" + strings.ReplaceAll(path, "'", `'\''`) + "'")
}

func randomName() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
