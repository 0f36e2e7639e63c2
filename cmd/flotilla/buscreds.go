package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/libs/busauth"
	"flotilla.dev/flotilla/libs/datadir"
)

// ServerConfigFile is the nats-server configuration fragment an authority
// directory holds: `include` it in every server's configuration.
const ServerConfigFile = "nats-auth.conf"

func newBusCredentials() *cobra.Command {
	var dir, dataDir string
	cmd := &cobra.Command{
		Use:   "bus-credentials",
		Short: "Mint, rotate and inspect the bus credentials of Flotilla's services",
		Long: `Every Flotilla service connects to NATS with credentials of its own (a .creds
file: a user JWT and its key), allowed only what the service's job needs;
observer.creds may replay the streams and nothing else.

flotilla up keeps them in <data-dir>/config/bus. For a cluster, keep an
authority directory on an administration host (--dir), copy each service's
.creds file to the hosts that run it (FLOTILLA_NATS_CREDS or --creds), and
include nats-auth.conf in every NATS server's configuration.`,
		Example: `  flotilla admin bus-credentials init --dir /etc/flotilla/bus
  flotilla admin bus-credentials permissions provisioner --data-dir ./.flotilla`,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", "", "authority directory (default: <data-dir>/config/bus)")
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", "./.flotilla", "data directory of `flotilla up`")
	authority := func() (*busauth.Authority, error) {
		d := dir
		if d == "" {
			d = datadir.Dir(dataDir).Bus()
		}
		a, err := busauth.LoadOrCreate(d)
		if err != nil {
			return nil, err
		}
		return a, writeServerConfig(a)
	}

	cmd.AddCommand(&cobra.Command{
		Use:     "init",
		Short:   "Create the authority (operator, accounts) and every identity's .creds file, keeping what exists",
		Example: "  flotilla admin bus-credentials init --dir /etc/flotilla/bus",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := authority()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "bus credentials in %s (mode 0600):\n", a.Dir())
			for _, id := range busauth.Identities() {
				fmt.Fprintf(out, "  %-12s %s\n", id, a.Creds(id))
			}
			fmt.Fprintf(out, "NATS servers: include %s in their configuration\n", filepath.Join(a.Dir(), ServerConfigFile))
			fmt.Fprintf(out, "NATS system account (flotilla cluster brokers remove; keep it on this host): %s\n", a.SystemCreds())
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:     "rotate IDENTITY",
		Short:   "Replace an identity's credentials with a new key and revoke the old one",
		Example: "  flotilla admin bus-credentials rotate inventory --dir /etc/flotilla/bus   # then copy inventory.creds to its hosts",
		Long: `Replace IDENTITY's .creds file with a new key and revoke the old key in the
account. Then: give the service the new file and restart it; reload every NATS
server (nats-auth.conf changed), after which the old credentials are refused.
With flotilla up, restart it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !slices.Contains(busauth.Identities(), args[0]) {
				return fmt.Errorf("IDENTITY: %q is not one of %s", args[0], strings.Join(busauth.Identities(), ", "))
			}
			a, err := authority()
			if err != nil {
				return err
			}
			if err := a.Rotate(args[0]); err != nil {
				return err
			}
			if err := writeServerConfig(a); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: new credentials in %s; the old key is revoked once the NATS servers reload %s\n",
				args[0], a.Creds(args[0]), filepath.Join(a.Dir(), ServerConfigFile))
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:     "permissions IDENTITY",
		Short:   "Show what an identity may publish and subscribe to",
		Example: "  flotilla admin bus-credentials permissions gateway --data-dir ./.flotilla",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := busauth.Permissions(args[0])
			if err != nil {
				return errors.New(strings.TrimPrefix(err.Error(), "busauth: "))
			}
			out := cmd.OutOrStdout()
			for _, l := range []struct {
				what string
				list []string
			}{{"publish", p.Pub.Allow}, {"publish, never", p.Pub.Deny}, {"subscribe", p.Sub.Allow}} {
				fmt.Fprintf(out, "%s:\n", l.what)
				for _, s := range l.list {
					fmt.Fprintf(out, "  %s\n", s)
				}
			}
			if p.Resp != nil {
				fmt.Fprintf(out, "reply: to each request it receives, once, within %v\n", p.Resp.Expires)
			}
			return nil
		},
	})
	return cmd
}

// writeServerConfig writes the authority's nats-server configuration
// fragment beside its keys.
func writeServerConfig(a *busauth.Authority) error {
	cfg, err := a.ServerConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(a.Dir(), ServerConfigFile), []byte(cfg), 0o600)
}
