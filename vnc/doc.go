// Package vnc is the workstation's view of a VM's screen: an RFB client on
// github.com/mitchellh/go-vnc that keeps the framebuffer as an image,
// updated incrementally, and forwards keys and the pointer.
//
// go-vnc does the handshake and the message loop; what it lacks we add
// through its Encoding and ServerMessage interfaces:
//   - a raw decoder that copies whole rows (go-vnc's reads pixel by pixel,
//     about 280 ms for one 720x400 frame here);
//   - zlib, which QEMU's VNC server offers, so the view stays usable on a
//     slow link while a migration shares it;
//   - the DesktopSize pseudo-encoding, so a guest switching video modes
//     resizes the view.
//
// The connection goes through a buffered reader, as go-vnc reads the wire
// field by field.
//
// Each Frame says what changed: Dirty, their bounding box, and Rects, the
// rectangles themselves (up to a bound), so a viewer that sends images
// sends only those parts.
//
// While the user types or moves the pointer, and for a second after, the
// client keeps QEMU's refresh timer at its shortest (30 ms) by sending
// every 30 ms the release of a key it never presses, which QEMU drops
// before the guest (see nudge.go): else an echo that comes after the key
// waits for a timer that has grown meanwhile, up to a third of a second.
//
// Reaching the screen: QEMU puts each guest's VNC server on a unix socket
// (libvirt's <graphics type='vnc' socket=...>), which Options.Dial opens.
// For a remote host, SSHDialer opens that socket through the workstation's
// own SSH connection (a direct-streamlocal channel, the same
// workstation-initiated path as the migration), so no port is ever opened to
// the world; sshd must allow AllowStreamLocalForwarding (its default).
package vnc
