package leasectl

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// apiServer is the lease API over real TLS with one device's token.
func apiServer(t testing.TB) (srv *httptest.Server, token string, sv *Service) {
	t.Helper()
	dir := t.TempDir()
	store, err := OpenBolt(filepath.Join(dir, "leases.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	token, err = AddToken(dir, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	sv = &Service{Store: store}
	mux := http.NewServeMux()
	mux.Handle("/v1/images/", Handler(sv))
	srv = httptest.NewTLSServer(RequireToken(TokenFile(dir), mux))
	t.Cleanup(srv.Close)
	return srv, token, sv
}

func fingerprintOf(srv *httptest.Server) string {
	return Fingerprint(srv.Certificate().Raw)
}

func TestClientRoundTripOverTLS(t *testing.T) {
	srv, token, _ := apiServer(t)
	ctx := context.Background()
	c := NewClient(srv.URL, token, fingerprintOf(srv))
	if err := c.Create(ctx, "desktop"); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, "desktop", "laptop", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var held *HeldError
	if _, err := c.Acquire(ctx, "desktop", "other", time.Minute); !errors.As(err, &held) || held.Holder != "laptop" {
		t.Fatalf("second acquire over HTTP: %v, want laptop's lease", err)
	}
	cm, err := c.Commit(ctx, "desktop", CommitRequest{LeaseID: l.ID, Holder: "laptop", Manifest: root("r1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(ctx, "desktop", CommitRequest{LeaseID: l.ID, Holder: "laptop", Manifest: root("r2")}); !errors.Is(err, ErrNotHead) {
		t.Fatalf("commit on a stale parent: %v", err)
	}
	st, err := c.Status(ctx, "desktop")
	if err != nil || st.Head != cm.ID {
		t.Fatalf("status %+v, %v", st, err)
	}
	// A client pinned to another certificate refuses to talk.
	bad := NewClient(srv.URL, token, strings.Repeat("ab", 32))
	if _, err := bad.Status(ctx, "desktop"); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("client with the wrong pin: %v", err)
	}
}

func TestBadRequestsGetClearErrorsAndChangeNothing(t *testing.T) {
	srv, token, sv := apiServer(t)
	ctx := context.Background()
	sv.Create(ctx, "desktop")
	l, _ := sv.Acquire(ctx, "desktop", "laptop", time.Minute)
	sv.Create(ctx, "old")
	gone, _ := sv.Acquire(ctx, "old", "laptop", time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	before, _ := sv.Status(ctx, "desktop")
	client := srv.Client()
	for _, tc := range []struct {
		name, method, path, body, token string
		status                          int
		says                            string
	}{
		{"missing token", "POST", "/v1/images/desktop/acquire", `{"holder":"x","ttl_seconds":60}`, "", 401, "missing bearer token"},
		{"wrong token", "POST", "/v1/images/desktop/acquire", `{"holder":"x","ttl_seconds":60}`, "nope", 401, "unknown token"},
		{"unknown image", "POST", "/v1/images/nothere/acquire", `{"holder":"x","ttl_seconds":60}`, token, 404, "no such image"},
		{"malformed JSON", "POST", "/v1/images/desktop/acquire", `{"holder":`, token, 400, "malformed JSON"},
		{"unknown field", "POST", "/v1/images/desktop/acquire", `{"holdr":"x"}`, token, 400, "unknown field"},
		{"bad ttl", "POST", "/v1/images/desktop/acquire", `{"holder":"x","ttl_seconds":-1}`, token, 400, "ttl"},
		{"held", "POST", "/v1/images/desktop/acquire", `{"holder":"x","ttl_seconds":60}`, token, 409, "laptop holds it"},
		{"stale lease", "POST", "/v1/images/desktop/renew", `{"lease_id":"Lold","ttl_seconds":60}`, token, 410, "stolen or released"},
		{"expired lease", "POST", "/v1/images/old/renew", `{"lease_id":"` + gone.ID + `","ttl_seconds":60}`, token, 410, "expired"},
		{"parent not head", "POST", "/v1/images/desktop/commits", `{"lease_id":"` + l.ID + `","parent":"c-none","holder":"laptop","manifest":{"root":"r"}}`, token, 412, "not the image's head"},
		{"oversized body", "POST", "/v1/images/desktop/commits", `{"holder":"laptop","manifest":{"root":"` + strings.Repeat("x", maxBody) + `"}}`, token, 413, "over"},
		{"manifest too big", "POST", "/v1/images/desktop/commits", `{"lease_id":"` + l.ID + `","holder":"laptop","manifest":{"root":"` + strings.Repeat("x", maxRoot+1) + `"}}`, token, 400, "manifest root"},
		{"bad image name", "POST", "/v1/images/..%2fetc/acquire", `{"holder":"x","ttl_seconds":60}`, token, 400, "image name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, bytes.NewReader([]byte(tc.body)))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(buf.String(), tc.says) {
				t.Errorf("%s %s: %d %s, want %d saying %q", tc.method, tc.path, resp.StatusCode, buf.String(), tc.status, tc.says)
			}
		})
	}
	after, _ := sv.Status(ctx, "desktop")
	if !reflect.DeepEqual(before, after) {
		t.Errorf("bad requests changed the image:\nbefore %+v\nafter  %+v", before, after)
	}
}
