package vnc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// startSSHD runs a real sshd on loopback with a throwaway host key that
// accepts one throwaway user key, and returns a client logged in to it.
func startSSHD(t *testing.T) *ssh.Client {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	for _, k := range []string{"host", "user"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "user.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	port := addr[strings.LastIndex(addr, ":")+1:]
	cfg := fmt.Sprintf("ListenAddress 127.0.0.1\nPort %s\nHostKey %s/host\nAuthorizedKeysFile %s/authorized_keys\n"+
		"StrictModes no\nPasswordAuthentication no\nUsePAM no\nPidFile none\nAllowStreamLocalForwarding yes\n", port, dir, dir)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	sshd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var stderr strings.Builder
	sshd.Stderr = &stderr
	if err := sshd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	t.Cleanup(func() {
		sshd.Process.Kill()
		sshd.Wait()
		if t.Failed() {
			t.Logf("sshd: %s", stderr.String())
		}
	})
	key, err := os.ReadFile(filepath.Join(dir, "user"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host.pub"))
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(hostPub)
	if err != nil {
		t.Fatal(err)
	}
	conf := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 5 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := ssh.Dial("tcp", addr, conf)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh to %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestViewOverSSHStreamlocal(t *testing.T) {
	q := bootWithVNC(t, t.TempDir())
	client := startSSHD(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := Connect(ctx, Options{Dial: SSHDialer(client, q.VNCSocket)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := nextFrame(t, c, "a whole screen", func(f Frame) bool { return f.Dirty == f.Image.Rect })
	if f.Image.Rect.Dx() < 320 {
		t.Errorf("frame over SSH is %v, want a screen", f.Image.Rect)
	}

	_, err = SSHDialer(client, filepath.Join(q.Dir, "no-such.sock"))(ctx)
	if err == nil || !strings.Contains(err.Error(), "no-such.sock") {
		t.Errorf("dialing a missing socket over SSH: %v, want an error naming it", err)
	}
}
