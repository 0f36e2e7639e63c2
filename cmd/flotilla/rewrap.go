package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/services/secrets"
)

// newRewrapSecrets re-wraps every stored data key under the KMS key now
// configured, after a move from the local master key to AWS KMS (or to
// another key).
func newRewrapSecrets() *cobra.Command {
	var (
		dir     string
		port    int
		dbURL   string
		fromEnv bool
		batch   int
	)
	cmd := &cobra.Command{
		Use:   "rewrap-secrets",
		Short: "Re-wrap every secret's data key under the KMS key now configured",
		Long: `Every secret's data key is stored wrapped by the KMS key that was configured
when the secret was written. After configuring a new key (kms.provider "aws" in
the settings, or FLOTILLA_KMS_PROVIDER=aws for flotilla-secrets) while keeping
the previous local master key for reading, this wraps every data key not yet
under the new key again under it, so the previous key can then be retired.

It unwraps only data keys, never secret values; it works in batches while the
secret brokers keep serving, and never overwrites a secret written meanwhile.
Secrets already under the new key are skipped, so it is safe to run again,
and after a crash it goes on where it stopped. It exits non-zero while any
secret remains under another key (for instance one written by a broker not
yet restarted with the new key): run it again once every broker uses it.

With --data-dir it uses the settings and database of that data directory
(flotilla up); with --env it reads FLOTILLA_DATABASE_URL, FLOTILLA_KMS_PROVIDER,
FLOTILLA_KMS_AWS_* and FLOTILLA_KMS_KEY_FILE (the previous key) as
flotilla-secrets does.`,
		Example: `  # flotilla up: after adding "kms": {"provider": "aws", "keyId": "alias/flotilla",
  # "region": "eu-west-1"} to .flotilla/config/settings.json and restarting
  flotilla admin rewrap-secrets --data-dir ./.flotilla

  # a cluster: with the environment of flotilla-secrets
  FLOTILLA_DATABASE_URL=postgres://… FLOTILLA_KMS_PROVIDER=aws \
  FLOTILLA_KMS_AWS_KEY_ID=alias/flotilla FLOTILLA_KMS_AWS_REGION=eu-west-1 \
  FLOTILLA_KMS_KEY_FILE=/etc/flotilla/master.key flotilla admin rewrap-secrets --env`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
			o := secrets.RewrapOptions{BatchSize: batch, Log: log}
			var (
				rep   secrets.RewrapReport
				keyID string
				err   error
			)
			if fromEnv {
				if cmd.Flags().Changed("data-dir") || cmd.Flags().Changed("database-url") || cmd.Flags().Changed("port") {
					return fmt.Errorf("--env reads the settings from the environment: drop --data-dir, --port and --database-url")
				}
				rep, keyID, err = stack.RewrapSecretsFromEnv(cmd.Context(), nil, o)
			} else {
				ov := datadir.Overrides{DatabaseURL: dbURL}
				if cmd.Flags().Changed("port") {
					ov.BasePort = port
				}
				rep, keyID, err = stack.RewrapSecretsInDataDir(cmd.Context(), dir, ov, o)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rewrapped %d data keys under %s; %d changed meanwhile (left as written); %d failed; %d remaining under other keys\n",
				rep.Rewrapped, keyID, rep.Changed, rep.Failed, rep.Remaining)
			if rep.Remaining > 0 {
				return fmt.Errorf("%d secrets are still under another key than %s: keep the previous key, and run rewrap-secrets again (failures are logged above)", rep.Remaining, keyID)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "./.flotilla", "data directory")
	cmd.Flags().IntVar(&port, "port", datadir.DefaultBasePort, "base port, as for `flotilla up`")
	cmd.Flags().StringVar(&dbURL, "database-url", "", "an external PostgreSQL, as for `flotilla up`")
	cmd.Flags().BoolVar(&fromEnv, "env", false, "read the database and KMS settings from the environment, as flotilla-secrets does")
	cmd.Flags().IntVar(&batch, "batch-size", secrets.DefaultRewrapBatch, "secrets read at once")
	return cmd
}
