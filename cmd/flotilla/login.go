package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
)

func newLogin() *cobra.Command {
	var server, username, caFile, ctxName string
	var passwordStdin bool
	cmd := &cobra.Command{
		Use:   "login --server URL --username NAME",
		Short: "Log in to a Flotilla server and keep its token (and, for https, its CA) in a context",
		Long: `Log in to a Flotilla API and keep the bearer token in the client's
configuration (` + "`<user config dir>/flotilla/config.yaml`, mode 0600; $" + configEnv + ` names another
file), in a context named after the server (--context NAME to choose) that
becomes the current one. The other commands then talk to it.

The password is asked on the terminal without echo, or read from standard
input with --password-stdin.

For an https server, the CA to verify it with is pinned in the context: the
one given with --ca-file, or else, at the first login, the certificate chain
the server presents is shown with its SHA-256 fingerprints and trusted (on a
terminal, once you say so): compare them with what the server itself serves
(on the server: openssl s_client -connect 127.0.0.1:PORT </dev/null |
openssl x509 -noout -fingerprint -sha256), or give the CA file instead (for
flotilla up --tls: <data-dir>/ca/ca.crt). A certificate that chains to the
system's roots needs no pinning. When the
server's certificate is from the fleet CA, the fleet CA is pinned, so the
server's renewed certificates keep verifying. Logging in again to the same
server keeps the pinned CA unless --ca-file gives another.`,
		Example: `  flotilla login --server http://127.0.0.1:7700 --username admin
  echo "$PASSWORD" | flotilla login --server https://flotilla.example:7700 --username admin --password-stdin
  flotilla login --server https://10.77.0.1:7700 --ca-file api-ca.crt --username admin --context prod`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			var old *cliContext
			if ctxName != "" {
				old = cfg.context(ctxName)
			}
			if server == "" && old != nil {
				server = old.Server
			}
			if server == "" {
				return errors.New("--server: is required: the Flotilla API's URL, such as http://127.0.0.1:7700")
			}
			if server, err = normalizeServer(server); err != nil {
				return fmt.Errorf("--server: %w", err)
			}
			if old == nil {
				old = cfg.byServer(server)
				if ctxName == "" && old != nil {
					ctxName = old.Name
				}
			}
			ctxName = cmp.Or(ctxName, contextName(server))
			if old != nil && (old.Name != ctxName || !sameServer(old.Server, server)) {
				old = nil // another context, or another server under this name: start afresh
			}
			x := &cliContext{Name: ctxName, Server: server, Username: username}
			if old != nil {
				x.CA = old.CA
				x.Username = cmp.Or(x.Username, old.Username)
			}
			if x.Username == "" {
				return errors.New("--username: is required")
			}
			l := &login{cmd: cmd, server: server, errOut: cmd.ErrOrStderr()}
			if caFile != "" {
				pemData, err := os.ReadFile(caFile)
				if err != nil {
					return fmt.Errorf("--ca-file: %w", err)
				}
				if _, err := parseCerts(pemData); err != nil {
					return fmt.Errorf("--ca-file: %s: %w", caFile, err)
				}
				x.CA = string(pemData)
			} else if strings.HasPrefix(server, "https://") && x.CA == "" {
				if x.CA, err = l.trustOnFirstUse(cmd.Context()); err != nil {
					return err
				}
			}
			password, err := readPassword(cmd, passwordStdin)
			if err != nil {
				return err
			}
			c := &apiClient{server: server, context: ctxName}
			if c.http, err = httpClient([]byte(x.CA)); err != nil {
				return err
			}
			var resp authv1.LoginResponse
			if err := c.call(cmd.Context(), http.MethodPost, "/api/v1/login", jsonBody(map[string]string{"username": x.Username, "password": password}), &resp); err != nil {
				return fmt.Errorf("log in to %s as %s: %w", server, x.Username, err)
			}
			x.Token, x.TokenExpires = resp.GetToken(), resp.GetExpireTime().AsTime()
			c.token = x.Token
			if l.anchor != nil {
				x.CA = l.pinFleetCA(cmd.Context(), c, x.CA)
			}
			cfg.put(x)
			cfg.Current = ctxName
			if err := cfg.save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Logged in to %s as %s (context %s); the token is valid until %s.\n",
				server, x.Username, ctxName, x.TokenExpires.Local().Format(time.RFC1123))
			if resp.GetPasswordChangeRequired() {
				fmt.Fprintln(cmd.OutOrStdout(), mustChangePassword)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "", "the Flotilla API's URL, such as https://flotilla.example:7700")
	f.StringVar(&username, "username", "", "the user to log in as")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input")
	f.StringVar(&caFile, "ca-file", "", "PEM certificates to verify an https server with, pinned in the context")
	f.StringVar(&ctxName, "context", "", "the context to keep the login in (default: the server's host and port)")
	return cmd
}

// readPassword reads the password from standard input (--password-stdin)
// or asks for it on the terminal without echo.
func readPassword(cmd *cobra.Command, fromStdin bool) (string, error) {
	pw, err := readPasswords(cmd, fromStdin, false, "Password")
	if err != nil {
		return "", err
	}
	return pw[0], nil
}

// readPasswords reads one password per prompt: from standard input, a
// line each (--password-stdin), or asked on the terminal without echo,
// where with confirmNew the last (a new password) is asked twice.
func readPasswords(cmd *cobra.Command, fromStdin, confirmNew bool, prompts ...string) ([]string, error) {
	out := make([]string, len(prompts))
	if fromStdin {
		in := bufio.NewReader(cmd.InOrStdin())
		for i, p := range prompts {
			line, err := in.ReadString('\n')
			if err != nil && line == "" {
				return nil, fmt.Errorf("read the %s from standard input (%s, a line each): %w", strings.ToLower(p),
					strings.ToLower(strings.Join(prompts, ", then ")), err)
			}
			out[i] = strings.TrimRight(line, "\r\n")
		}
		return out, nil
	}
	for i, p := range prompts {
		pw, ok, err := askHidden(cmd, p)
		if !ok {
			return nil, fmt.Errorf("no terminal to ask the %s on: give it on standard input with --password-stdin", strings.ToLower(p))
		}
		if err != nil {
			return nil, err
		}
		out[i] = pw
	}
	if last := len(prompts) - 1; confirmNew && last >= 0 {
		again, _, err := askHidden(cmd, prompts[last]+" again")
		if err != nil {
			return nil, err
		}
		if again != out[last] {
			return nil, errors.New("the two new passwords differ: nothing was changed")
		}
	}
	return out, nil
}

// askHidden asks for a value on the terminal without echo; ok is false
// when standard input is not a terminal.
func askHidden(cmd *cobra.Command, prompt string) (value string, ok bool, err error) {
	in, isFile := cmd.InOrStdin().(*os.File)
	if !isFile || !term.IsTerminal(int(in.Fd())) {
		return "", false, nil
	}
	fmt.Fprint(cmd.ErrOrStderr(), prompt+": ")
	b, err := term.ReadPassword(int(in.Fd()))
	fmt.Fprintln(cmd.ErrOrStderr())
	if err != nil {
		return "", true, fmt.Errorf("read the %s: %w", strings.ToLower(prompt), err)
	}
	return string(b), true, nil
}

// login is the state of one login's trust in an https server.
type login struct {
	cmd    *cobra.Command
	server string
	errOut io.Writer
	// chain is what the server presented; anchor, the certificate of it
	// pinned on first use (nil when none was).
	chain  []*x509.Certificate
	anchor *x509.Certificate
}

// trustOnFirstUse fetches the server's certificate chain and returns the
// PEM to pin: none when the system's roots verify it; otherwise the
// topmost certificate of the chain, once shown (and, on a terminal,
// accepted).
func (l *login) trustOnFirstUse(ctx context.Context) (string, error) {
	u, _ := url.Parse(l.server)
	host := u.Hostname()
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(host, "443")
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second},
		// Verified below, against the system's roots or by the operator.
		Config: &tls.Config{InsecureSkipVerify: true, ServerName: host, MinVersion: tls.VersionTLS12}}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("reach %s: %w", l.server, err)
	}
	l.chain = conn.(*tls.Conn).ConnectionState().PeerCertificates
	conn.Close()
	if len(l.chain) == 0 {
		return "", fmt.Errorf("%s presented no certificate", l.server)
	}
	leaf := l.chain[0]
	if err := leaf.VerifyHostname(host); err != nil {
		return "", fmt.Errorf("%s: %w: use a server URL with a name the certificate holds", l.server, err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Intermediates: certPool(l.chain[1:])}); err == nil {
		fmt.Fprintf(l.errOut, "%s presents a certificate the system's roots verify.\n", l.server)
		return "", nil
	}
	fmt.Fprintf(l.errOut, "%s presents a certificate chain this machine does not know:\n", l.server)
	for i, c := range l.chain {
		describeCert(l.errOut, i, c)
	}
	l.anchor = l.chain[len(l.chain)-1]
	if isTerminal(l.cmd.InOrStdin()) && isTerminal(l.errOut) {
		fmt.Fprintf(l.errOut, "Trust %s (SHA-256 %s) for %s? [y/N] ", l.anchor.Subject, fingerprint(l.anchor), l.server)
		answer, _ := bufio.NewReader(l.cmd.InOrStdin()).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			return "", errors.New("not trusted: nothing was saved (give the server's CA with --ca-file)")
		}
	} else {
		fmt.Fprintf(l.errOut, "Trusting %s (SHA-256 %s) for %s on first use.\n", l.anchor.Subject, fingerprint(l.anchor), l.server)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: l.anchor.Raw})), nil
}

// pinFleetCA replaces a pinned certificate that is not a root with the
// fleet CA, when the fleet CA (read from the server, trusted through the
// pinned certificate) is what issued the server's certificate: the
// server's renewed certificates then verify too.
func (l *login) pinFleetCA(ctx context.Context, c *apiClient, pinned string) string {
	if l.anchor.IsCA && bytes.Equal(l.anchor.RawIssuer, l.anchor.RawSubject) {
		return pinned // a root already
	}
	var ca cav1.CACertificate
	if err := c.call(ctx, http.MethodGet, "/api/v1/ca", nil, &ca); err != nil {
		return pinned
	}
	certs, err := parseCerts([]byte(ca.GetCertificatePem()))
	if err != nil {
		return pinned
	}
	u, _ := url.Parse(l.server)
	if _, err := l.chain[0].Verify(x509.VerifyOptions{DNSName: u.Hostname(), Roots: certPool(certs), Intermediates: certPool(l.chain[1:])}); err != nil {
		return pinned
	}
	fmt.Fprintf(l.errOut, "The server's certificate is from the fleet CA %s (SHA-256 %s): pinned that CA for %s.\n",
		certs[0].Subject, fingerprint(certs[0]), l.server)
	return ca.GetCertificatePem()
}

func describeCert(w io.Writer, i int, c *x509.Certificate) {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	fmt.Fprintf(w, "  [%d] subject  %s\n      issuer   %s\n      valid    %s to %s\n", i, c.Subject, c.Issuer,
		c.NotBefore.UTC().Format(time.DateOnly), c.NotAfter.UTC().Format(time.DateOnly))
	if len(names) > 0 {
		fmt.Fprintf(w, "      names    %s\n", strings.Join(names, ", "))
	}
	fmt.Fprintf(w, "      SHA-256  %s\n", fingerprint(c))
}

// fingerprint is a certificate's SHA-256 as openssl x509 -fingerprint
// -sha256 prints it.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// parseCerts reads the certificates of a PEM bundle.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return out, nil
}

func newLogout(opts *clientOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "logout",
		Short: "Revoke the context's token on the server and forget it (the server and its CA stay known)",
		Example: `  flotilla logout
  flotilla logout --context prod`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			err = c.call(cmd.Context(), http.MethodPost, "/api/v1/logout", []byte("{}"), nil)
			var e *apiError
			revoked := err == nil
			if err != nil && (!errors.As(err, &e) || e.Status != http.StatusUnauthorized) {
				return fmt.Errorf("log out of %s: %w", c.server, err)
			}
			if c.context != "" {
				cfg, err := loadConfig()
				if err != nil {
					return err
				}
				if x := cfg.context(c.context); x != nil && x.Token == c.token {
					x.Token, x.TokenExpires = "", time.Time{}
					if err := cfg.save(); err != nil {
						return err
					}
				}
			}
			if revoked {
				fmt.Fprintf(cmd.OutOrStdout(), "Logged out of %s: the token is revoked.\n", c.server)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "Logged out of %s (the token was no longer valid).\n", c.server)
			}
			return nil
		},
	}
	opts.flags(cmd)
	return cmd
}

func newContext() *cobra.Command {
	var output string
	group := &cobra.Command{
		Use:   "context",
		Short: "The servers logged in to: list them, choose the current one, delete one",
		Example: `  flotilla context list
  flotilla context use prod`,
	}
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the contexts (never their tokens)",
		Example: "  flotilla context list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			format, err := (&clientOptions{output: output}).format(cmd.OutOrStdout())
			if err != nil {
				return err
			}
			type entry struct {
				Name         string    `json:"name"`
				Current      bool      `json:"current"`
				Server       string    `json:"server"`
				Username     string    `json:"username,omitempty"`
				LoggedIn     bool      `json:"loggedIn"`
				TokenExpires time.Time `json:"tokenExpires,omitzero"`
				PinnedCA     string    `json:"pinnedCa,omitempty"`
			}
			var entries []entry
			rows := [][]string{{"CURRENT", "NAME", "SERVER", "USER", "LOGGED IN", "PINNED CA"}}
			for _, x := range cfg.Contexts {
				e := entry{Name: x.Name, Current: x.Name == cfg.Current, Server: x.Server, Username: x.Username,
					LoggedIn: x.Token != "" && time.Now().Before(x.TokenExpires), TokenExpires: x.TokenExpires}
				if certs, err := parseCerts([]byte(x.CA)); err == nil {
					e.PinnedCA = fingerprint(certs[0])
				}
				entries = append(entries, e)
				loggedIn := "no"
				if e.LoggedIn {
					loggedIn = "until " + x.TokenExpires.Local().Format(time.DateTime)
				}
				pinned := e.PinnedCA
				if len(pinned) > 23 {
					pinned = pinned[:23] + "…"
				}
				rows = append(rows, []string{map[bool]string{true: "*"}[e.Current], x.Name, x.Server, dash(x.Username), loggedIn, dash(pinned)})
			}
			switch format {
			case formatTable:
				return writeTable(cmd.OutOrStdout(), rows)
			case formatYAML:
				return writeYAML(cmd.OutOrStdout(), jsonBody(map[string]any{"contexts": entries}))
			}
			return writeJSON(cmd.OutOrStdout(), jsonBody(map[string]any{"contexts": entries}))
		},
	}
	list.Flags().StringVarP(&output, "output", "o", "", "output format: table, json or yaml (default table on a terminal, json otherwise)")
	use := contextCommand("use NAME", "Make a context the current one", "  flotilla context use prod", "Now using context %s.",
		func(cfg *cliConfig, name string) bool {
			if cfg.context(name) == nil {
				return false
			}
			cfg.Current = name
			return true
		})
	del := contextCommand("delete NAME", "Forget a context: its server, token and pinned CA (flotilla logout revokes the token first)",
		"  flotilla logout --context old && flotilla context delete old", "Deleted context %s.", (*cliConfig).remove)
	del.Aliases = []string{"rm"}
	group.AddCommand(list, use, del)
	return group
}

// contextCommand is a command that changes the context NAME in the
// configuration file with change (false: there is no such context) and
// says done.
func contextCommand(use, short, example, done string, change func(*cliConfig, string) bool) *cobra.Command {
	return &cobra.Command{
		Use:               use,
		Short:             short,
		Example:           example,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig()
			if err != nil {
				return err
			}
			if !change(cfg, args[0]) {
				return fmt.Errorf("no context %q (flotilla context list shows them)", args[0])
			}
			if err := cfg.save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), done+"\n", args[0])
			return nil
		},
	}
}

func completeContexts(_ *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	cfg, err := loadConfig()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, x := range cfg.Contexts {
		if strings.HasPrefix(x.Name, prefix) {
			out = append(out, x.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
