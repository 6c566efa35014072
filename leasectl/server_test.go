package leasectl

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// TestServeMountsMoreAPIsBehindTheTokens starts the daemon in process with
// a second API mounted, the way the chunk store is: it answers only with a
// device token, over the pinned certificate.
func TestServeMountsMoreAPIsBehindTheTokens(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var progress bytes.Buffer
	ready := make(chan string, 1)
	done := make(chan error, 1)
	chunks := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "chunk "+r.URL.Path) })
	var wg sync.WaitGroup
	wg.Go(func() {
		done <- Serve(ctx, ServeConfig{Data: t.TempDir(), Listen: "127.0.0.1:0", Progress: &progress,
			Ready: func(addr string) { ready <- addr }, Mounts: map[string]http.Handler{"/v1/chunks/": chunks}})
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	m := regexp.MustCompile(`--token (\S+) --fingerprint (\S+)`).FindStringSubmatch(progress.String())
	if m == nil {
		t.Fatalf("first start printed no login line:\n%s", progress.String())
	}
	tr := &http.Transport{TLSClientConfig: PinnedTLS(m[2])}
	t.Cleanup(tr.CloseIdleConnections)
	get := func(token string) (int, string) {
		req, _ := http.NewRequest("GET", "https://"+addr+"/v1/chunks/abc", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(""); code != http.StatusUnauthorized {
		t.Errorf("mounted API without a token: %d %s", code, body)
	}
	if code, body := get(m[1]); code != http.StatusOK || !strings.Contains(body, "chunk /v1/chunks/abc") {
		t.Errorf("mounted API with the token: %d %s", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve after Ctrl-C: %v", err)
	}
}

func TestServeRefusesAMountOverTheLeaseAPI(t *testing.T) {
	err := Serve(context.Background(), ServeConfig{Data: t.TempDir(), Listen: "127.0.0.1:0",
		Mounts: map[string]http.Handler{"/v1/images/x/": http.NotFoundHandler()}})
	if err == nil || !strings.Contains(err.Error(), "own /v1/NAME/ prefix") {
		t.Fatalf("serve with a mount over /v1/images/: %v", err)
	}
}
