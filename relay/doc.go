// Package relay carries a live migration's memory stream between two
// hosts, compressed: QEMU 7.2 refuses post-copy together with its own
// compression or multifd, so handoff compresses the stream outside QEMU and
// keeps post-copy.
//
// It has a home of its own because both ends run it: 'handoff serve' on
// the server (Handler) and the workstation's handoff (Carrier), which
// libvirt.Options.Stream drives. Each QEMU talks to its end on 127.0.0.1;
// between the ends one HTTPS connection per stream crosses the link, opened
// by the workstation (a laptop behind NAT can take its VM), upgraded to
// Protocol and authorised by the device's token.
//
// In the direction memory goes the stream travels in frames, each one
// zstd frame or the bytes as they came (Choose decides from the link's
// and the compressor's measured rates); the return path (post-copy's page
// requests) goes as it is. Each read from QEMU becomes a frame, so a page
// QEMU answers in post-copy leaves at once and a bulk copy fills frames.
package relay
