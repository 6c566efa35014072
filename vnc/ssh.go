package vnc

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/crypto/ssh"
)

// SSHDialer reaches a VNC unix socket on a remote host through an SSH
// connection the workstation already holds (the one the migration uses):
// each dial is a streamlocal channel (direct-streamlocal@openssh.com), so the
// remote VNC server never listens on the network.
func SSHDialer(client *ssh.Client, socket string) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		conn, err := client.DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, fmt.Errorf("open %s on %s over SSH (does sshd allow streamlocal forwarding, and is the VM running?): %w",
				socket, client.RemoteAddr(), err)
		}
		return conn, nil
	}
}
