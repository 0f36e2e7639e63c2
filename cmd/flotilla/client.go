package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/libs/apierr"
)

// requestTimeout bounds one API request (not a followed stream).
const requestTimeout = 30 * time.Second

// clientOptions are the flags of every command that talks to a running
// Flotilla's API: which server and as whom (a stored context, or flags and
// environment variables that override it), and how to print answers.
type clientOptions struct {
	context, server, token, caFile, output string
}

// flags adds the client flags to cmd and the commands under it.
func (o *clientOptions) flags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&o.context, "context", "", "the stored context (server and login) to use instead of the current one")
	f.StringVar(&o.server, "server", "", "the Flotilla API's URL (default $"+serverEnv+", else the context's, else "+defaultServer+")")
	f.StringVar(&o.token, "token", "", "a bearer token (default $"+tokenEnv+", else the context's from flotilla login)")
	f.StringVar(&o.caFile, "ca-file", "", "PEM certificates to verify an https server with (default $"+caFileEnv+", else the CA pinned at login, else the system's)")
	f.StringVarP(&o.output, "output", "o", "", "output format: table, json or yaml (default table on a terminal, json otherwise)")
}

// apiClient calls one server's REST API with a bearer token.
type apiClient struct {
	server string
	token  string
	// context is the stored context the server and token came from, if any.
	context string
	http    *http.Client
}

// client resolves where and as whom to call: flags, then environment
// variables, then the stored context. A context's token and pinned CA are
// used only for the context's own server.
func (o *clientOptions) client() (*apiClient, error) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, err
	}
	var x *cliContext
	if o.context != "" {
		if x = cfg.context(o.context); x == nil {
			return nil, fmt.Errorf("--context: no context %q (flotilla context list shows them)", o.context)
		}
	} else {
		x = cfg.context(cfg.Current)
	}
	server := cmp.Or(o.server, os.Getenv(serverEnv))
	if server == "" && x != nil {
		server = x.Server
	}
	server, err = normalizeServer(cmp.Or(server, defaultServer))
	if err != nil {
		return nil, err
	}
	if x != nil && !sameServer(x.Server, server) {
		x = cfg.byServer(server)
	}
	c := &apiClient{server: server, token: cmp.Or(o.token, os.Getenv(tokenEnv))}
	var caPEM []byte
	if f := cmp.Or(o.caFile, os.Getenv(caFileEnv)); f != "" {
		if caPEM, err = os.ReadFile(f); err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
	}
	if x != nil {
		c.context = x.Name
		if c.token == "" {
			c.token = x.Token
		}
		if caPEM == nil && x.CA != "" {
			caPEM = []byte(x.CA)
		}
	}
	if c.token == "" {
		return nil, fmt.Errorf("not logged in to %s: run flotilla login --server %s --username NAME, or set %s (a token from POST /api/v1/login)",
			server, server, tokenEnv)
	}
	if c.http, err = httpClient(caPEM); err != nil {
		return nil, err
	}
	return c, nil
}

// httpClient verifies https servers with caPEM, or the system's roots when
// it is empty. It keeps the cookies a server sets for as long as the
// command runs: behind HAProxy, the FLOTILLA_GATEWAY cookie keeps a
// command's requests on one gateway, so a read after a change sees it
// (another gateway may answer from a copy the change's event has not yet
// reached).
func httpClient(caPEM []byte) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the CA to verify the server with holds no PEM certificate")
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: tr, Jar: jar}, nil
}

// apiError is an error answer of the API: {"code","reason","message","field"}.
type apiError struct {
	Status  int    `json:"-"`
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

func (e *apiError) Error() string {
	var notes []string
	if e.Field != "" {
		notes = append(notes, "field "+e.Field)
	}
	if e.Reason != "" {
		notes = append(notes, e.Reason)
	}
	msg := e.Message
	if e.Reason == string(apierr.ReasonPasswordChangeRequired) {
		// The API's message names its endpoint; the client's command is the
		// way here.
		msg = "an admin set your password: change it with flotilla password before anything else"
	}
	if len(notes) > 0 {
		msg += " (" + strings.Join(notes, ", ") + ")"
	}
	if e.Status == http.StatusUnauthorized {
		msg += "; log in again with flotilla login"
	}
	return msg
}

// isNotFound reports whether err is the API's 404.
func isNotFound(err error) bool {
	var e *apiError
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// send makes one request with a JSON body (nil for none) and returns the
// body of a successful answer; an error answer is an *apiError.
func (c *apiClient) send(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := c.request(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return data, nil
}

// request sends a request and returns a successful answer for the caller
// to read and close.
func (c *apiClient) request(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, r)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", "flotilla/"+version)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, explainTLS(c.server, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e := &apiError{Status: resp.StatusCode}
	if json.Unmarshal(data, e) != nil || e.Message == "" {
		e.Message = cmp.Or(string(bytes.TrimSpace(data)), resp.Status)
		if len(e.Message) > 300 {
			e.Message = e.Message[:300] + "…"
		}
		if strings.Contains(e.Message, "HTTPS server") && strings.HasPrefix(c.server, "http://") {
			e.Message += ": the server serves https; log in to https://" + strings.TrimPrefix(c.server, "http://")
		}
	}
	return nil, e
}

// call sends body (nil, or a JSON document) and decodes a successful
// answer into out (when not nil). Fields a newer server adds are skipped.
func (c *apiClient) call(ctx context.Context, method, path string, body []byte, out proto.Message) error {
	data, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode the answer: %w", method, path, err)
	}
	return nil
}

// explainTLS says what to do when a server's certificate does not verify.
func explainTLS(server string, err error) error {
	var unknown x509.UnknownAuthorityError
	var verify *tls.CertificateVerificationError
	var host x509.HostnameError
	switch {
	case errors.As(err, &host):
		return fmt.Errorf("%w: use a server URL with a name the certificate holds", err)
	case errors.As(err, &unknown) || errors.As(err, &verify):
		return fmt.Errorf("%w: the server's certificate is not signed by the CA this client trusts for %s; if the server's CA changed on purpose, log in again with --ca-file FILE, or run flotilla context delete and log in again to trust it anew",
			err, server)
	}
	return err
}
