package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// The detached end's process, in tests: this test binary, told by its
// environment which server to reach.
const (
	detachedURL  = "HANDOFF_RELAY_TEST_DETACHED_URL"
	detachedCert = "HANDOFF_RELAY_TEST_DETACHED_CERT"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(detachedURL); url != "" {
		der, _ := base64.StdEncoding.DecodeString(os.Getenv(detachedCert))
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			os.Exit(3)
		}
		pool := x509.NewCertPool()
		pool.AddCert(cert)
		c := &Carrier{Server: Server{URL: url, Token: "t", TLS: &tls.Config{RootCAs: pool}}, Local: hostOn("127.0.0.1")}
		if err := RunDetached(context.Background(), c, os.Stdin, os.NewFile(3, "reports")); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestDetachedEndCarriesInAProcessOfItsOwn(t *testing.T) {
	server, workstation := hostOn("127.0.0.2"), hostOn("127.0.0.1")
	srv, _ := startTLSServer(t, server, 1e9)
	stats := &Stats{}
	d := &Detached{Stats: stats, Command: func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), detachedURL+"="+srv.URL, detachedCert+"="+base64.StdEncoding.EncodeToString(srv.Certificate().Raw))
		return cmd
	}}
	port, stop, err := d.Carry(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	memory := guestMemory(4 << 20)
	migrate(t, server, workstation, port, memory)
	if err := stop(); err != nil {
		t.Fatalf("stop() = %v, want nil", err)
	}
	if got := stats.Raw.Load(); got != uint64(len(memory)) {
		t.Errorf("the client's stats say %d stream bytes, want the %d its detached end carried", got, len(memory))
	}
}

// runDetached runs RunDetached as its process would, its input and reports
// on pipes the test holds.
func runDetached(t *testing.T, c *Carrier) (port int, client io.WriteCloser, reports *bufio.Scanner, ended chan error) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ended = make(chan error, 1)
	go func() { ended <- RunDetached(context.Background(), c, inR, outW); outW.Close() }()
	go io.WriteString(inW, "{}\n") // the way: a memory stream's
	reports = bufio.NewScanner(outR)
	var r report
	if !reports.Scan() || json.Unmarshal(reports.Bytes(), &r) != nil || r.Port == 0 {
		t.Fatalf("the detached end's first report %q, want its port", reports.Text())
	}
	go func() { // reports nobody reads after the client is gone
		for reports.Scan() {
		}
	}()
	return r.Port, inW, reports, ended
}

func TestDetachedEndOutlivesItsClient(t *testing.T) {
	server, workstation := hostOn("127.0.0.2"), hostOn("127.0.0.1")
	srv := startServer(t, server, 1e9)

	// The client dies before the stream begins: the stream goes on, and
	// the end goes once it has ended.
	port, client, _, ended := runDetached(t, &Carrier{Server: srv, Local: workstation})
	client.Close()
	time.Sleep(2 * reportEvery) // a tick that must not end it
	memory := guestMemory(4 << 20)
	migrate(t, server, workstation, port, memory)
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the orphaned end: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the orphaned end still runs after its stream ended")
	}

	// Its client's stop ends it at once.
	_, client, _, ended = runDetached(t, &Carrier{Server: srv, Local: workstation})
	io.WriteString(client, stopWord+"\n")
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the end still runs after its client's stop")
	}
}

func TestAnOrphanedEndWaitsForItsStreams(t *testing.T) {
	for _, tc := range []struct {
		live, ended int
		orphanedFor time.Duration
		done        bool
	}{
		{0, 0, time.Second, false},             // the job may not have begun its stream
		{1, 0, time.Hour, false},               // a slow stream, carried still
		{1, 1, time.Second, false},             // a resumed one, carried still
		{0, 1, time.Second, true},              // the job's stream ended
		{0, 0, orphanWait + time.Second, true}, // no stream came
	} {
		if got := outlived(tc.live, tc.ended, tc.orphanedFor); got != tc.done {
			t.Errorf("outlived(%d live, %d ended, orphaned %v) = %v, want %v", tc.live, tc.ended, tc.orphanedFor, got, tc.done)
		}
	}
}
