package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/services/inventory"
)

func newAdmin() *cobra.Command {
	admin := &cobra.Command{Use: "admin", Short: "Administer a Flotilla data directory"}
	var (
		dir           string
		port          int
		dbURL         string
		passwordStdin bool
	)
	setup := &cobra.Command{
		Use:   "initial-setup USER [PASSWORD]",
		Short: "Create the first admin user (once; works whether or not `flotilla up` is running)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			user := args[0]
			var pw string
			switch {
			case len(args) == 2 && passwordStdin:
				return errors.New("give the password either as an argument or with --password-stdin, not both")
			case len(args) == 2:
				pw = args[1]
			case passwordStdin:
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && line == "" {
					return fmt.Errorf("read password from standard input: %w", err)
				}
				pw = strings.TrimRight(line, "\r\n")
			default:
				return errors.New("a password is required: flotilla admin initial-setup USER PASSWORD (or --password-stdin)")
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			o := datadir.Overrides{DatabaseURL: dbURL}
			if cmd.Flags().Changed("port") {
				o.BasePort = port
			}
			err := stack.WithDatabase(cmd.Context(), dir, o, func(ctx context.Context, pool *pgxpool.Pool) error {
				return inventory.InitialSetup(ctx, pool, log, user, pw)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "admin user %q created; log in with POST /api/v1/login\n", user)
			return nil
		},
	}
	setup.Flags().StringVar(&dir, "data-dir", "./.flotilla", "data directory")
	setup.Flags().IntVar(&port, "port", datadir.DefaultBasePort, "base port, as for `flotilla up` (saved in the settings)")
	setup.Flags().StringVar(&dbURL, "database-url", "", "an external PostgreSQL, as for `flotilla up` (saved in the settings)")
	setup.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input")
	admin.AddCommand(setup, newBusCredentials(), newMasterKey())
	return admin
}

// newMasterKey creates the KMS master key file a cluster's secret brokers
// share. Each of them only loads it (FLOTILLA_KMS_KEY_FILE), so a broker
// given no file, or the wrong path, fails instead of sealing secrets with a
// key of its own.
func newMasterKey() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "master-key --file PATH",
		Short: "Create the KMS master key file every secrets service of a cluster shares (keeps an existing one)",
		Long: `Create the local KMS master key (32 random bytes, mode 0600, in a directory
created 0700) that seals every secret's data key, once, for a cluster: copy it
to each host that runs flotilla-secrets and point FLOTILLA_KMS_KEY_FILE at it.
An existing key file is checked and kept, never replaced: replacing it would
make every stored secret unreadable. flotilla up makes its own.`,
		Example: "  flotilla admin master-key --file /etc/flotilla/keys/master.key",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("--file: is required: where to write the key")
			}
			k, err := kms.OpenLocal(file)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "master key %s in %s\n", k.KeyID(), k.Path())
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "the key file to create")
	return cmd
}
