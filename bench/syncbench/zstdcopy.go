package syncbench

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// zstdServer answers one connection on 127.0.0.1 with zstd -3 of a file:
// the server's end of a full copy. The workstation connects, as it does to
// the chunk server and to rsync's daemon, so that Down is the copy.
type zstdServer struct {
	ln   net.Listener
	wg   sync.WaitGroup
	cpu  time.Duration
	err  error
	stop context.CancelFunc
}

func startZstdServer(ctx context.Context, src string) (*zstdServer, error) {
	if err := needTools("zstd"); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the zstd sender: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &zstdServer{ln: ln, stop: cancel}
	stopListening := context.AfterFunc(ctx, func() { ln.Close() })
	s.wg.Go(func() {
		defer stopListening()
		s.cpu, s.err = s.send(ctx, src)
	})
	return s, nil
}

func (s *zstdServer) Addr() string { return s.ln.Addr().String() }

func (s *zstdServer) send(ctx context.Context, src string) (time.Duration, error) {
	c, err := s.ln.Accept()
	s.ln.Close()
	if err != nil {
		return 0, fmt.Errorf("zstd sender: accept: %w", err)
	}
	defer c.Close()
	// zstd writes to the socket itself: no copy through this process.
	out, err := c.(*net.TCPConn).File()
	if err != nil {
		return 0, fmt.Errorf("zstd sender: %w", err)
	}
	defer out.Close()
	cmd := command(ctx, "zstd", "-3", "-c", "-q", src)
	cmd.Stdout = out
	err = runQuiet(cmd)
	// Both descriptors of the socket must close for the receiver to see
	// the end of the stream.
	out.Close()
	c.Close()
	if err != nil {
		return 0, fmt.Errorf("zstd sender: %w", err)
	}
	return cpuOf(cmd), nil
}

// wait waits for the sender to finish and returns its zstd's CPU time.
func (s *zstdServer) wait() (time.Duration, error) {
	s.wg.Wait()
	return s.cpu, s.err
}

// close stops a sender that may still be waiting and waits for it.
func (s *zstdServer) close() {
	s.stop()
	s.wg.Wait()
}

// zstdReceive connects to addr and decompresses what arrives into dst with
// zstd -d, returning zstd's CPU time.
func zstdReceive(ctx context.Context, addr, dst string) (time.Duration, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("zstd copy: connect to the sender: %w", err)
	}
	defer c.Close()
	in, err := c.(*net.TCPConn).File()
	if err != nil {
		return 0, fmt.Errorf("zstd copy: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, fmt.Errorf("zstd copy: %w", err)
	}
	defer out.Close()
	cmd := command(ctx, "zstd", "-d", "-c", "-q")
	cmd.Stdin, cmd.Stdout = in, out
	if err := runQuiet(cmd); err != nil {
		return 0, fmt.Errorf("zstd copy: %w", err)
	}
	return cpuOf(cmd), out.Close()
}

// zstdCopy copies src to dst as zstd -3 over one TCP connection through a
// counting proxy; the CPU times are each end's zstd.
func zstdCopy(ctx context.Context, src, dst string) (measured, error) {
	s, err := startZstdServer(ctx, src)
	if err != nil {
		return measured{}, err
	}
	defer s.close()
	return throughProxy(ctx, s.Addr(), func(addr string) (cpuTimes, error) {
		recvCPU, err := zstdReceive(ctx, addr, dst)
		if err != nil {
			return cpuTimes{}, err
		}
		sendCPU, err := s.wait()
		return cpuTimes{Workstation: recvCPU, Server: sendCPU}, err
	})
}
