package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Environment variables the client commands read.
const (
	// configEnv names the client's configuration file, replacing
	// <user config dir>/flotilla/config.yaml.
	configEnv = "FLOTILLA_CONFIG"
	// serverEnv and tokenEnv override the current context's server and
	// token (for automation); caFileEnv names the CA to verify it with.
	serverEnv = "FLOTILLA_SERVER"
	tokenEnv  = "FLOTILLA_TOKEN"
	caFileEnv = "FLOTILLA_CA_FILE"
)

// defaultServer is the API of `make run` / `flotilla up`, asked when no
// context, flag or environment variable names another.
const defaultServer = "http://127.0.0.1:7700"

// cliConfig is the client's configuration file: the servers logged in to
// (contexts) and which one commands talk to. It holds bearer tokens, so it
// is written with mode 0600.
type cliConfig struct {
	Current  string        `yaml:"current-context,omitempty"`
	Contexts []*cliContext `yaml:"contexts"`

	path string
}

// cliContext is one server logged in to.
type cliContext struct {
	Name     string `yaml:"name"`
	Server   string `yaml:"server"`
	Username string `yaml:"username,omitempty"`
	// Token is the bearer token of the last login; empty after logout.
	Token        string    `yaml:"token,omitempty"`
	TokenExpires time.Time `yaml:"token-expires,omitempty"`
	// CA is the PEM certificate(s) an https server is verified with, pinned
	// at the first login; empty: the system's roots.
	CA string `yaml:"certificate-authority,omitempty"`
}

// configPath is where the configuration file is.
func configPath() (string, error) {
	if p := os.Getenv(configEnv); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no configuration directory (set %s to a file): %w", configEnv, err)
	}
	return filepath.Join(dir, "flotilla", "config.yaml"), nil
}

// loadConfig reads the configuration file; a missing file is an empty
// configuration.
func loadConfig() (*cliConfig, error) {
	p, err := configPath()
	if err != nil {
		return nil, err
	}
	c := &cliConfig{path: p}
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(data, c); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	c.Contexts = slices.DeleteFunc(c.Contexts, func(x *cliContext) bool { return x == nil })
	return c, nil
}

// save writes the configuration file, readable by its owner alone, in a
// directory of its own mode 0700 when it creates one.
func (c *cliConfig) save() error {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return err
	}
	data := buf.Bytes()
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.path), ".config-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		return fmt.Errorf("write %s: %w", c.path, err)
	}
	return nil
}

// context returns the context named name, or nil.
func (c *cliConfig) context(name string) *cliContext {
	for _, x := range c.Contexts {
		if x.Name == name {
			return x
		}
	}
	return nil
}

// byServer returns the context whose server is server, preferring the
// current one, or nil.
func (c *cliConfig) byServer(server string) *cliContext {
	if cur := c.context(c.Current); cur != nil && sameServer(cur.Server, server) {
		return cur
	}
	for _, x := range c.Contexts {
		if sameServer(x.Server, server) {
			return x
		}
	}
	return nil
}

// put adds or replaces a context.
func (c *cliConfig) put(x *cliContext) {
	for i, old := range c.Contexts {
		if old.Name == x.Name {
			c.Contexts[i] = x
			return
		}
	}
	c.Contexts = append(c.Contexts, x)
}

// remove deletes the context named name; it reports whether there was one.
func (c *cliConfig) remove(name string) bool {
	n := len(c.Contexts)
	c.Contexts = slices.DeleteFunc(c.Contexts, func(x *cliContext) bool { return x.Name == name })
	if c.Current == name {
		c.Current = ""
	}
	return len(c.Contexts) < n
}

// normalizeServer checks a server URL and returns it without a trailing
// slash: http or https, a host, no path beyond "/".
func normalizeServer(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("server %q is not an http:// or https:// URL such as https://flotilla.example:7700", s)
	}
	if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
		return "", fmt.Errorf("server %q: give the server's URL without a path (the API is under /api/v1 there)", s)
	}
	return u.Scheme + "://" + u.Host, nil
}

func sameServer(a, b string) bool {
	na, err1 := normalizeServer(a)
	nb, err2 := normalizeServer(b)
	return err1 == nil && err2 == nil && strings.EqualFold(na, nb)
}

// contextName is the name a login without --context gives its server's
// context: its host and port.
func contextName(server string) string {
	u, err := url.Parse(server)
	if err != nil {
		return server
	}
	return u.Host
}
