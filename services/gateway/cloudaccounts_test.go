package gateway_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/filecopy"
	"flotilla.dev/flotilla/libs/testkit"
	"flotilla.dev/flotilla/services/gateway"
)

// TestCloudAccountsKeepTheirSecretKeyInTheBroker: a cloud account with
// static keys is created through the API; its secret key is never
// answered, never stored by the inventory nor put in an event, but kept
// sealed by the secret broker, which releases it to the provisioner to
// verify the account against moto (STS); bad input names the field; a
// network must name an existing account of its provider, and an account in
// use cannot be deleted; deleting it forgets the key.
func TestCloudAccountsKeepTheirSecretKeyInTheBroker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	moto := testkit.StartMoto(t)
	const secretKey = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"

	var acc struct {
		ID, Name, Provider string
		Version            string
		Aws                struct {
			Region, EndpointURL string
			Credentials         map[string]any
		}
	}
	body := map[string]any{"name": "lab-aws", "provider": "aws", "aws": map[string]any{"region": testkit.MotoRegion, "endpointUrl": moto.URL,
		"credentials": map[string]any{"accessKeyId": "AKIAFLOTILLATEST0001", "secretAccessKey": secretKey}}}
	var raw json.RawMessage
	if code := e.call("POST", "/api/v1/cloud-accounts", body, &raw, ""); code != 200 {
		t.Fatalf("create: %d %s", code, raw)
	}
	if strings.Contains(string(raw), secretKey) {
		t.Fatalf("the create answer holds the secret key: %s", raw)
	}
	if err := json.Unmarshal(raw, &acc); err != nil {
		t.Fatal(err)
	}
	if acc.Aws.Credentials["secretAccessKeySet"] != true || acc.Aws.Credentials["accessKeyId"] != "AKIAFLOTILLATEST0001" {
		t.Fatalf("credentials answered: %v", acc.Aws.Credentials)
	}
	if code := e.call("GET", "/api/v1/cloud-accounts/"+acc.ID, nil, &raw, ""); code != 200 || strings.Contains(string(raw), secretKey) {
		t.Fatalf("get: %d %s", code, raw)
	}
	// Neither the inventory's row nor any event holds the key; the broker's
	// row holds only its ciphertext.
	var spec string
	if err := e.pool.QueryRow(t.Context(), "SELECT spec::text FROM cloud_accounts WHERE id = $1", acc.ID).Scan(&spec); err != nil {
		t.Fatal(err)
	}
	var sealed []byte
	if err := e.pool.QueryRow(t.Context(), "SELECT ciphertext FROM cloud_keys WHERE cloud_account_id = $1", acc.ID).Scan(&sealed); err != nil {
		t.Fatalf("the broker keeps no key for the account: %v", err)
	}
	if strings.Contains(spec, secretKey) || strings.Contains(string(sealed), secretKey) {
		t.Fatal("the secret key is stored in plaintext")
	}

	// Verify: the provisioner signs in with the key and asks STS.
	var v struct {
		Ok                bool
		Account, Identity string
		Message           string
	}
	if code := e.call("POST", "/api/v1/cloud-accounts/"+acc.ID+":verify", map[string]any{}, &v, ""); code != 200 || !v.Ok || v.Account == "" || v.Identity == "" {
		t.Fatalf("verify: %d %+v", code, v)
	}

	// Field errors.
	for _, tc := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"name": "x", "provider": "gcp"}, "provider"},
		{map[string]any{"name": "x", "provider": "aws", "aws": map[string]any{}}, "aws.region"},
		{map[string]any{"name": "x", "provider": "aws", "aws": map[string]any{"region": "eu-west-1", "credentials": map[string]any{"accessKeyId": "AKIAFLOTILLATEST0002"}}}, "aws.credentials.secretAccessKey"},
		{map[string]any{"name": "x", "provider": "aws", "aws": map[string]any{"region": "eu-west-1", "endpointUrl": "ftp://x"}}, "aws.endpointUrl"},
		{map[string]any{"name": "x", "provider": "aws", "aws": map[string]any{"region": "eu-west-1", "credentials": map[string]any{"roleArn": "role/x"}}}, "aws.credentials.roleArn"},
	} {
		var apiErr struct{ Field, Message string }
		if code := e.call("POST", "/api/v1/cloud-accounts", tc.body, &apiErr, ""); code != http.StatusBadRequest || apiErr.Field != tc.field {
			t.Errorf("create %v: %d %+v, want 400 on %s", tc.body, code, apiErr, tc.field)
		}
	}

	// A network names an account of its provider that exists.
	net := map[string]any{"name": "vpc-a", "provider": "aws", "httpsStrategy": "none",
		"aws": map[string]any{"vpcId": "vpc-0123456789abcdef0", "subnetId": "subnet-0123456789abcdef0"}}
	var apiErr struct{ Field, Message, Reason string }
	if code := e.call("POST", "/api/v1/networks", net, &apiErr, ""); code != http.StatusBadRequest || apiErr.Field != "cloudAccountId" {
		t.Fatalf("an aws network without an account: %d %+v", code, apiErr)
	}
	net["cloudAccountId"] = "0190c3e1-0000-7000-8000-000000000000"
	if code := e.call("POST", "/api/v1/networks", net, &apiErr, ""); code != http.StatusBadRequest || apiErr.Field != "cloudAccountId" {
		t.Fatalf("an aws network with an unknown account: %d %+v", code, apiErr)
	}
	net["cloudAccountId"] = acc.ID
	var n struct{ ID, Version string }
	if code := e.call("POST", "/api/v1/networks", net, &n, ""); code != 200 {
		t.Fatalf("an aws network: %d", code)
	}
	if code := e.call("DELETE", "/api/v1/cloud-accounts/"+acc.ID, nil, &apiErr, ""); code != http.StatusConflict || apiErr.Reason != "in_use" {
		t.Fatalf("delete an account in use: %d %+v", code, apiErr)
	}

	// A new key replaces the kept one; the account changes version.
	patch := map[string]any{"version": acc.Version, "aws": map[string]any{"credentials": map[string]any{
		"accessKeyId": "AKIAFLOTILLATEST0001", "secretAccessKey": secretKey + "2"}}}
	if code := e.call("PATCH", "/api/v1/cloud-accounts/"+acc.ID, patch, &raw, ""); code != 200 || strings.Contains(string(raw), secretKey) {
		t.Fatalf("patch: %d %s", code, raw)
	}
	var keyVersion int64
	if err := e.pool.QueryRow(t.Context(), "SELECT version FROM cloud_keys WHERE cloud_account_id = $1", acc.ID).Scan(&keyVersion); err != nil || keyVersion != 2 {
		t.Fatalf("key version after a new key: %d %v", keyVersion, err)
	}

	if code := e.call("DELETE", "/api/v1/networks/"+n.ID, nil, nil, ""); code != 200 {
		t.Fatalf("delete the network: %d", code)
	}
	if code := e.call("DELETE", "/api/v1/cloud-accounts/"+acc.ID, nil, nil, ""); code != 200 {
		t.Fatalf("delete the account: %d", code)
	}
	if code := e.call("GET", "/api/v1/cloud-accounts/"+acc.ID, nil, &apiErr, ""); code != 404 || apiErr.Message != `cloud account "`+acc.ID+`" not found` {
		t.Fatalf("the deleted account: %d %+v", code, apiErr)
	}
	var left int
	if err := e.pool.QueryRow(t.Context(), "SELECT count(*) FROM cloud_keys WHERE cloud_account_id = $1", acc.ID).Scan(&left); err != nil || left != 0 {
		t.Fatalf("the key outlived its account: %d %v", left, err)
	}
	msgs := e.events(t, "flotilla.evt.cloudaccount."+acc.ID+".*")
	if len(msgs) != 3 { // created, updated (the new key), deleted
		t.Fatalf("%d events of the account, want 3", len(msgs))
	}
	for _, m := range msgs {
		if strings.Contains(string(m.Data()), secretKey) {
			t.Fatalf("event %s holds the secret key", m.Subject())
		}
	}
}

// TestTheGatewayServesTheAgentOfItsVersion: new cloud VMs download the
// agent binary from the gateway, without a token, at a path naming the
// manager's version and platform, with its SHA-256; another version is
// not found.
func TestTheGatewayServesTheAgentOfItsVersion(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "flotilla-agent")
	content := []byte("#!/bin/sh\necho agent\n")
	if err := os.WriteFile(bin, content, 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{only: []string{}, config: func(c *stack.Config) { c.AgentBinary = bin }})
	path := gateway.AgentDownloadPath("1.2.3")
	if !strings.HasPrefix(path, "/downloads/flotilla-agent/1.2.3/"+runtime.GOOS+"-"+runtime.GOARCH) {
		t.Fatalf("download path %s", path)
	}
	resp, err := http.Get(e.base + path)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(content)
	if resp.StatusCode != 200 || !bytes.Equal(got, content) || resp.Header.Get("X-Checksum-Sha256") != hex.EncodeToString(sum[:]) {
		t.Fatalf("GET %s: %d %q %v", path, resp.StatusCode, got, resp.Header)
	}
	if want, err := filecopy.SHA256(bin); err != nil || want != hex.EncodeToString(sum[:]) {
		t.Fatalf("filecopy.SHA256: %s %v", want, err)
	}
	resp, err = http.Get(e.base + gateway.AgentDownloadPath("0.9.0"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("another version's agent: %d", resp.StatusCode)
	}
}
