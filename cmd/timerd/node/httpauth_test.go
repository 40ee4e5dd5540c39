package node

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/timerd/timerd/test/testkit"
)

// status of GET url with bearer tok ("" for none), over client.
func statusOf(t *testing.T, client *http.Client, method, url, tok string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// With TIMERD_HTTP_TOKEN_FILE the operator endpoints want its token, read at
// each request (a rotation is a rewrite of the file); probes and scrapes
// stay open. Refusals are counted, and the token is never logged.
func TestOperatorEndpointsWantTheToken(t *testing.T) {
	s := startAPI(t, t.TempDir())
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "http.token")
	const tok1, tok2 = "first-operator-token-0123", "second-operator-token-4567"
	if err := os.WriteFile(tokFile, []byte(tok1+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer // the node logs while the test reads
	n := runNode(t, Config{DataDir: filepath.Join(dir, "node"), APIURL: s.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "auth",
		ReconcileInterval: -1, HTTPTokenFile: tokFile, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	base := "http://" + n.HTTPAddr()
	testkit.Eventually(t, 10*time.Second, "ready", func() bool { return get(t, base+"/readyz") == 200 })
	c := http.DefaultClient
	for _, open := range []string{"/metrics", "/healthz", "/readyz"} {
		if code := statusOf(t, c, "GET", base+open, ""); code != http.StatusOK {
			t.Errorf("GET %s without a token = %d, want 200 (probes and scrapes need no secret)", open, code)
		}
	}
	guarded := []struct{ method, path string }{{"GET", "/v1/status"}, {"GET", "/v1/dead-letters"}, {"POST", "/v1/dead-letters/redrive"},
		{"GET", "/v1/rules/1"}, {"POST", "/v1/rules/1/backfill"}, {"POST", "/v1/rules/1/fire"}}
	for _, g := range guarded {
		for _, bad := range []string{"", "wrong-token-0123456789", tok1 + "x", tok1[:len(tok1)-1]} {
			if code := statusOf(t, c, g.method, base+g.path, bad); code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q = %d, want 401", g.method, g.path, bad, code)
			}
		}
	}
	if code := statusOf(t, c, "GET", base+"/v1/status", tok1); code != http.StatusOK {
		t.Errorf("GET /v1/status with the token = %d, want 200", code)
	}
	if got := testutil.ToFloat64(n.metrics.unauthorized); got != float64(4*len(guarded)) {
		t.Errorf("timerd_http_unauthorized_total = %v, want %d", got, 4*len(guarded))
	}
	// Rotation: rewrite the file; the old token is refused at once.
	if err := os.WriteFile(tokFile, []byte(tok2), 0o600); err != nil {
		t.Fatal(err)
	}
	if statusOf(t, c, "GET", base+"/v1/status", tok1) != http.StatusUnauthorized || statusOf(t, c, "GET", base+"/v1/status", tok2) != http.StatusOK {
		t.Errorf("after rewriting the token file the old token still works, or the new one does not")
	}
	for _, tok := range []string{tok1, tok2} {
		if strings.Contains(logs.String(), tok) {
			t.Errorf("the node logged a token")
		}
	}
	// A file that is too short or missing refuses the node at start.
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("tiny"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{short, filepath.Join(dir, "missing")} {
		if _, err := New(Config{DataDir: t.TempDir(), APIURL: s.apiURL, HTTPTokenFile: f}); err == nil {
			t.Errorf("New with HTTPTokenFile %s: no error", f)
		} else if strings.Contains(err.Error(), "tiny") {
			t.Errorf("the error quotes the file's content: %v", err)
		}
	}
}

// With TIMERD_HTTP_CONFIG_FILE (an exporter-toolkit web config) the node
// serves HTTPS and nothing in clear.
func TestNodeServesTLS(t *testing.T) {
	s := startAPI(t, t.TempDir())
	dir := t.TempDir()
	certPEM, keyPEM := selfSigned(t)
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	webCfg := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(webCfg, []byte("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := runNode(t, Config{DataDir: filepath.Join(dir, "node"), APIURL: s.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "tls",
		ReconcileInterval: -1, HTTPConfigFile: webCfg, Registry: prometheus.NewRegistry()})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	tlsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer tlsClient.CloseIdleConnections()
	testkit.Eventually(t, 10*time.Second, "ready over https", func() bool {
		resp, err := tlsClient.Get("https://" + n.HTTPAddr() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if code := statusOf(t, http.DefaultClient, "GET", "http://"+n.HTTPAddr()+"/readyz", ""); code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the TLS port = %d, want 400 (Go's answer to plain HTTP on a TLS port)", code)
	}
	bad := filepath.Join(dir, "bad.yml")
	if err := os.WriteFile(bad, []byte("tls_server_config:\n  cert_file: missing.crt\n  key_file: tls.key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{DataDir: t.TempDir(), APIURL: s.apiURL, HTTPConfigFile: bad}); err == nil {
		t.Errorf("New with a web config naming a missing certificate: no error")
	}
}

// selfSigned is a certificate for 127.0.0.1 and its key, PEM.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "timerd test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
