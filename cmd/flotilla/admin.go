package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/kms"
	"flotilla.dev/flotilla/services/inventory"
)

func newAdmin() *cobra.Command {
	admin := &cobra.Command{Use: "admin", Short: "Administer a Flotilla data directory",
		Example: "  flotilla admin initial-setup admin --password-stdin --data-dir ./.flotilla"}
	var (
		dir           string
		port          int
		dbURL         string
		passwordStdin bool
	)
	setup := &cobra.Command{
		Use:   "initial-setup USER [PASSWORD]",
		Short: "Create the first admin user (once; works whether or not `flotilla up` is running)",
		Example: `  flotilla admin initial-setup admin 'S3cret-pass' --data-dir ./.flotilla
  echo "$PASSWORD" | flotilla admin initial-setup admin --password-stdin --data-dir /var/lib/flotilla`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			user := args[0]
			var pw string
			switch {
			case len(args) == 2 && passwordStdin:
				return errors.New("give the password either as an argument or with --password-stdin, not both")
			case len(args) == 2:
				pw = args[1]
			case passwordStdin:
				var err error
				if pw, err = readPassword(cmd, true); err != nil {
					return err
				}
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
			fmt.Fprintf(cmd.OutOrStdout(), "admin user %q created; log in with: %s\n", user, loginCommand(dir, user))
			return nil
		},
	}
	setup.Flags().StringVar(&dir, "data-dir", "./.flotilla", "data directory")
	setup.Flags().IntVar(&port, "port", datadir.DefaultBasePort, "base port, as for `flotilla up` (saved in the settings)")
	setup.Flags().StringVar(&dbURL, "database-url", "", "an external PostgreSQL, as for `flotilla up` (saved in the settings)")
	setup.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input")
	admin.AddCommand(setup, newBusCredentials(), newKMSKey(), newRewrapSecrets(), newBackup(), newRestore(), newVerifyBackup(), newBackupKey())
	return admin
}

// newKMSKey creates the master key file a cluster's secret brokers share:
// they load it (FLOTILLA_KMS_KEY_FILE) and never create one, so that a
// manager missing it fails instead of encrypting with a key of its own.
func newKMSKey() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:     "kms-key --file FILE",
		Short:   "Create the secret brokers' master key file, keeping one that exists",
		Example: "  flotilla admin kms-key --file /etc/flotilla/master.key   # then copy it to every manager running flotilla-secrets",
		Long: `Every secret broker of a cluster loads the same master key
(FLOTILLA_KMS_KEY_FILE) and none creates one. Create it once (mode 0600, in a
directory only its owner may write), then copy it to every manager that runs
flotilla-secrets. An existing key file is kept, and checked. flotilla up
creates its own (<data-dir>/keys/master.key).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := kms.OpenLocal(file)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "master key %s in %s (mode 0600): give every secret broker FLOTILLA_KMS_KEY_FILE=%s\n", k.KeyID(), file, file)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "the master key file (required)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// loginCommand is the command that logs user in to the Flotilla of the
// data directory dir, on its own host.
func loginCommand(dir, user string) string {
	s, err := datadir.Load(datadir.Dir(dir))
	if err != nil {
		return "flotilla login --username " + user
	}
	return "flotilla login --server " + stack.LocalAPIServer(s) + " --username " + user
}
