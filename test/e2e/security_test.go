package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A real agent whose ATTUNE_API_URL carries a password and whose operator
// endpoints want TIMERD_HTTP_TOKEN_FILE's token: the password is never
// logged or shown (/v1/status shows xxxxx), /v1/status refuses a caller
// without the token and `timerd status --token-file` reads it, probes and
// scrapes stay open, and events still flow through the URL.
func TestAgentHidesSecrets(t *testing.T) {
	b := newBroker(t)
	node := b.node("secrets")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	const password = "hunter2-s3cret"
	withUser := strings.Replace(api.apiURL, "http://", "http://timerd:"+password+"@", 1)
	tokFile := filepath.Join(t.TempDir(), "http.token")
	const opToken = "operator-token-e2e-0123456789"
	if err := os.WriteFile(tokFile, []byte(opToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := api.agentEnv(b, node, t.TempDir())
	env = append(slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "ATTUNE_API_URL=") }),
		"ATTUNE_API_URL="+withUser, "TIMERD_HTTP_TOKEN_FILE="+tokFile)
	ag := startAgent(t, env)

	api.createRule(t, "secret.steady", "core.intervaltimer", map[string]any{"interval": 1})
	waitFor(t, "an event through the URL with a password", 10*time.Second, func() bool { return len(api.events(t, "secret.steady")) > 0 })

	for _, open := range []string{"/metrics", "/healthz", "/readyz"} {
		resp, err := http.Get(ag.nodeURL + open)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a token = %d, want 200", open, resp.StatusCode)
		}
	}
	resp, err := http.Get(ag.nodeURL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/status without the token = %d, want 401", resp.StatusCode)
	}
	cmd := exec.Command(timerdBin, "status", "--json", "--addr", ag.nodeURL, "--token-file", tokFile)
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("timerd status --token-file: %v", err)
	}
	var st struct {
		APIURL string `json:"api_url"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), password) || !strings.Contains(st.APIURL, "timerd:xxxxx@") {
		t.Errorf("/v1/status api_url = %q, want the password as xxxxx", st.APIURL)
	}
	if err := ag.stop(20 * time.Second); err != nil {
		t.Errorf("agent after SIGTERM: %v", err)
	}
	for what, secret := range map[string]string{"the API URL's password": password, "the operator token": opToken, "the sensor token": api.sensorToken} {
		if strings.Contains(ag.output(), secret) {
			t.Errorf("%s appears in the agent's output", what)
		}
	}
	if !strings.Contains(ag.output(), "timerd:xxxxx@") {
		t.Errorf("the agent's start log does not show the API URL redacted")
	}
}
