// Package node is the node software of the local provider: an HTTP server
// (HTTPS with a certificate it reloads when the files change) whose page
// names the instance. It imports the standard library only, so
// cmd/flotilla-node, which runs it for every local VM, starts at a fraction
// of the agent's cost.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Config is the node software's settings.
type Config struct {
	// Listen is the host:port to serve on (--listen).
	Listen string
	// InstanceName is the name the page shows (--instance-name).
	InstanceName string
	// CertFile and KeyFile, both or neither, make it serve HTTPS
	// (--cert-file, --key-file).
	CertFile string
	KeyFile  string
	// Stdout receives a line per request; nil means os.Stdout.
	Stdout io.Writer
}

// Bind declares c's flags on fs: a flag.FlagSet (cmd/flotilla-node) or a
// cobra command's pflag.FlagSet (`flotilla-agent node`).
func (c *Config) Bind(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:8080", "host:port to serve on")
	fs.StringVar(&c.InstanceName, "instance-name", "", "name of the instance the page shows (required)")
	fs.StringVar(&c.CertFile, "cert-file", "", "PEM certificate chain: serve HTTPS")
	fs.StringVar(&c.KeyFile, "key-file", "", "PEM private key of --cert-file")
}

// Validate reports every problem at once, naming the flag.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen: %q is not host:port", c.Listen))
	}
	if c.InstanceName == "" {
		errs = append(errs, errors.New("--instance-name: is required"))
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("--cert-file, --key-file: give both for HTTPS, or neither"))
	}
	return errors.Join(errs...)
}

// Run runs the node software of the local provider until ctx ends: an
// HTTP server (HTTPS with a certificate) whose page names the instance,
// logging each request to Stdout.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	out := cfg.Stdout
	if out == nil {
		out = os.Stdout
	}
	srv := &http.Server{Handler: handler(cfg.InstanceName, out), ReadHeaderTimeout: 10 * time.Second}
	if cfg.CertFile != "" {
		kp, err := NewKeyPairFiles(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return fmt.Errorf("--cert-file, --key-file: %w", err)
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.GetCertificate}
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	scheme := "http"
	if srv.TLSConfig != nil {
		scheme = "https"
		l = tls.NewListener(l, srv.TLSConfig)
	}
	fmt.Fprintf(out, "serving instance %s on %s://%s/\n", cfg.InstanceName, scheme, l.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	fmt.Fprintln(out, "stopped")
	return nil
}

// handler serves the page naming the instance.
func handler(name string, out io.Writer) http.Handler {
	var mu sync.Mutex
	page := fmt.Sprintf(`<!doctype html>
<html><head><meta charset="utf-8"><title>Flotilla instance %[1]s</title></head>
<body><h1>Flotilla instance %[1]s</h1><p>This node is managed by Flotilla.</p></body></html>
`, html.EscapeString(name))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, page)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()
		mux.ServeHTTP(rec, r)
		mu.Lock()
		fmt.Fprintf(out, "%s %s %d %s %s\n", r.Method, r.URL.RequestURI(), rec.status, r.RemoteAddr, time.Since(start).Round(time.Microsecond))
		mu.Unlock()
	})
}

// statusRecorder remembers the status code written.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
