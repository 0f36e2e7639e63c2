package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/internal/stack"
)

// newBackup backs a data directory up, while flotilla up runs on it or not.
func newBackup() *cobra.Command {
	var (
		dir, into, creds, textfile string
		keep                       int
		fromEnv, dump              bool
	)
	cmd := &cobra.Command{
		Use:   "backup DEST | --into DIR [--keep N]",
		Short: "Back the data directory up into DEST, while flotilla up runs on it or not (or, --env, a cluster)",
		Long: `Copies into DEST (a new directory, or an empty one) everything flotilla up
cannot make again: the settings and bus credentials, the fleet CA and its key,
the master key that wraps every secret, the managed PostgreSQL (a base backup
taken while it serves, checked with pg_verifybackup) and every JetStream stream
(the events, the audit trail, the instances' logs, the buckets: each stream's
snapshot), the two copies made to agree (the events of changes made meanwhile
wait). While flotilla up runs, it goes on serving; while it does not, it cannot
start until the backup is done.

With an external PostgreSQL (flotilla up --database-url), the database is
copied by pg_dump. The local provider's VMs and disks are not in it, nor files
the settings name outside the data directory (listed at the end).

With --into, the backup is made in DIR/flotilla-<UTC time>, and, once it is
whole, the backups of this data directory in DIR but the newest --keep are
removed (nothing else in DIR is touched): for a timer that backs up daily.
With --textfile, the outcome is written for Prometheus's node exporter (its
textfile collector): flotilla_backup_last_success_timestamp_seconds,
_last_duration_seconds, _last_size_bytes and _last_failure_timestamp_seconds,
by source, so that an alert can say a backup failed or is too old.

With --dump, the managed PostgreSQL is copied by pg_dump instead: such a
backup restores into a cluster (restore --env), to move a Flotilla from
flotilla up to the HA cluster.

With --env, it backs up a cluster from one of its managers, with the settings
its services read from the environment (flotilla.env): every stream through
FLOTILLA_NATS_URL as the backup identity (--creds backup.creds, which
flotilla admin bus-credentials writes), the database by pg_dump through
FLOTILLA_DATABASE_OWNER_URL, and the files FLOTILLA_CA_CERT_FILE,
FLOTILLA_CA_KEY_FILE and FLOTILLA_KMS_KEY_FILE name. Keep the bus authority's
directory (bus-credentials init --dir) beside it: the cluster trusts its keys.

Keep the backup as you keep those keys: whoever has it can read every secret.
Restore it with flotilla admin restore.`,
		Example: `  flotilla admin backup /backup/flotilla-$(date +%F) --data-dir ./.flotilla
  flotilla admin backup --into /var/backups/flotilla --keep 7 --data-dir /var/lib/flotilla
  set -a; . /etc/flotilla/flotilla.env; set +a
  flotilla admin backup --env --creds /etc/flotilla/bus/backup.creds --into /var/backups/flotilla
  flotilla admin restore /backup/flotilla-2026-12-04 --data-dir ./.flotilla-restored
  flotilla up --data-dir ./.flotilla-restored`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var dest string
			switch {
			case len(args) == 1 && into != "":
				return errors.New("give either DEST or --into DIR, not both")
			case len(args) == 1:
				if cmd.Flags().Changed("keep") {
					return errors.New("--keep prunes a directory of backups: give it with --into DIR, not DEST")
				}
				dest = args[0]
			case into != "":
				if keep < 1 {
					return fmt.Errorf("--keep: %d: at least 1 (the backup just made)", keep)
				}
				dest = filepath.Join(into, stack.BackupName(time.Now()))
			default:
				return errors.New("where to? give DEST (a new directory) or --into DIR (a directory of backups)")
			}
			var source string
			if fromEnv {
				if cmd.Flags().Changed("data-dir") || dump {
					return errors.New("--env backs up a cluster from the environment's settings: drop --data-dir (and --dump: a cluster's database is dumped)")
				}
				var err error
				if source, err = stack.ClusterSourceFromEnv(nil); err != nil {
					return err
				}
			} else {
				if cmd.Flags().Changed("creds") {
					return errors.New("--creds is for a cluster's backup (--env): a data directory has its own")
				}
				abs, err := filepath.Abs(dir)
				if err != nil {
					return err
				}
				source = abs
			}
			start := time.Now()
			var (
				m   *stack.BackupManifest
				err error
			)
			if fromEnv {
				m, err = stack.BackupClusterFromEnv(cmd.Context(), nil, creds, dest, version)
			} else {
				m, err = stack.Backup(cmd.Context(), dir, dest, version, dump)
			}
			if textfile != "" {
				if merr := writeBackupMetrics(textfile, source, m, time.Since(start), err != nil, time.Now()); merr != nil {
					err = errors.Join(err, fmt.Errorf("--textfile: %w", merr))
				}
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			how := "flotilla up was not running"
			switch {
			case fromEnv:
				how = "a cluster, while it ran"
			case m.Hot:
				how = "while flotilla up ran"
			}
			fmt.Fprintf(out, "backed up %s into %s (%s) in %.1f s\n", m.Source, dest, how, time.Since(start).Seconds())
			printBackup(out, m)
			fmt.Fprintln(out, "it holds the master key that opens every secret, and the fleet CA's key: keep it as you keep them")
			switch {
			case fromEnv || dump:
				fmt.Fprintf(out, "restore it into a new cluster, before its services first start: flotilla admin restore %s --env --bus-dir DIR\n", dest)
			case m.Database == stack.BackupDatabaseDump:
				fmt.Fprintf(out, "restore it: flotilla admin restore %s --data-dir DIR --database-url URL (an empty database), then flotilla up --data-dir DIR\n", dest)
			default:
				fmt.Fprintf(out, "restore it: flotilla admin restore %s --data-dir DIR, then flotilla up --data-dir DIR\n", dest)
			}
			if into == "" {
				return nil
			}
			removed, err := stack.PruneBackups(into, m.Source, keep)
			for _, r := range removed {
				fmt.Fprintf(out, "removed the old backup %s\n", r)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "./.flotilla", "data directory")
	cmd.Flags().StringVar(&into, "into", "", "a directory of backups: make the backup in it, named flotilla-<UTC time>")
	cmd.Flags().IntVar(&keep, "keep", 7, "with --into: how many backups of this data directory (or cluster) to keep there, the newest")
	cmd.Flags().BoolVar(&fromEnv, "env", false, "back up a cluster, with the settings its services read from the environment")
	cmd.Flags().StringVar(&creds, "creds", "", "with --env: the backup identity's credentials (backup.creds)")
	cmd.Flags().BoolVar(&dump, "dump", false, "copy the managed PostgreSQL by pg_dump, not a base backup: to restore it into a cluster (restore --env)")
	cmd.Flags().StringVar(&textfile, "textfile", "", "a node exporter textfile (.prom) to record the outcome in: flotilla_backup_last_success_timestamp_seconds, …")
	return cmd
}

// newRestore makes a new data directory from a backup.
func newRestore() *cobra.Command {
	var (
		dir, busDir, dbURL string
		fromEnv            bool
	)
	cmd := &cobra.Command{
		Use:   "restore BACKUP --data-dir DIR | --env --bus-dir DIR",
		Short: "Make a new data directory from a backup, for flotilla up to start on (or, --env, restore a cluster's)",
		Long: `Makes DIR (a new directory, or an empty one) a data directory holding what
BACKUP (made by flotilla admin backup) holds: flotilla up --data-dir DIR then
starts as Flotilla stood when the backup was taken. Its settings keep the
backup's ports: give flotilla up --port to run it beside the original. The
backup of a Flotilla on an external PostgreSQL is restored into the empty
database --database-url names, which the settings then name.

With --env, it restores a cluster's backup (made with --env), or a data
directory's made with --dump, into a cluster whose services have not started
yet (a data directory's streams get FLOTILLA_STREAM_REPLICAS), with the settings they read from the
environment: the database by pg_restore through FLOTILLA_DATABASE_OWNER_URL
(it must hold no table), then every stream through FLOTILLA_NATS_URL (none may
exist), as a user the bus authority in --bus-dir (bus-credentials init --dir,
whose keys the cluster's servers trust) signs for the restore alone; the CA's
and master key's files are written where the settings name them on this host,
unless a file is there. Copy them to every manager, then start the services.`,
		Example: `  flotilla admin restore /backup/flotilla-2026-12-04 --data-dir ./.flotilla
  flotilla up --data-dir ./.flotilla
  set -a; . /etc/flotilla/flotilla.env; set +a
  flotilla admin restore /var/backups/flotilla/flotilla-20261204T030000Z --env --bus-dir /root/flotilla-bus`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if fromEnv {
				if dir != "" || dbURL != "" {
					return errors.New("--env restores into a cluster, from the environment's settings (FLOTILLA_DATABASE_OWNER_URL): drop --data-dir and --database-url")
				}
				m, written, err := stack.RestoreClusterFromEnv(cmd.Context(), nil, busDir, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "restored %s (the backup of the cluster at %s taken %s)\n", args[0], m.Source, m.Created.Local().Format(time.DateTime))
				printBackup(out, m)
				for _, f := range written {
					fmt.Fprintf(out, "wrote %s: copy it to every manager\n", f)
				}
				fmt.Fprintln(out, "start the services")
				return nil
			}
			switch {
			case dir == "":
				return errors.New(`required flag(s) "data-dir" not set: the new data directory (or --env, for a cluster)`)
			case busDir != "":
				return errors.New("--bus-dir is for a cluster's restore (--env)")
			}
			m, err := stack.Restore(cmd.Context(), args[0], dir, dbURL)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "restored %s (the backup of %s taken %s) into %s\n", args[0], m.Source, m.Created.Local().Format(time.DateTime), dir)
			printBackup(out, m)
			fmt.Fprintf(out, "start it: flotilla up --data-dir %s\n", dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "", "the new data directory (required, unless --env)")
	cmd.Flags().BoolVar(&fromEnv, "env", false, "restore a cluster's backup into a cluster, with the settings its services read from the environment")
	cmd.Flags().StringVar(&busDir, "bus-dir", "", "with --env: the bus authority's directory (flotilla admin bus-credentials init --dir)")
	cmd.Flags().StringVar(&dbURL, "database-url", "", "the empty database to restore the backup of a Flotilla on an external PostgreSQL into")
	return cmd
}

// newVerifyBackup checks a backup without restoring it.
func newVerifyBackup() *cobra.Command {
	return &cobra.Command{
		Use:   "verify-backup BACKUP",
		Short: "Check that a backup is whole, without restoring it",
		Long: `Reads the whole of a backup made by flotilla admin backup: its manifest, each
stream's snapshot (whole, and holding what the manifest says), the database
(a base backup checked by pg_verifybackup, a dump read through by pg_restore)
and the copied files. It exits non-zero, naming each problem, when the backup
would not restore.`,
		Example: "  flotilla admin verify-backup /var/backups/flotilla/flotilla-20261204T030000Z",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, problems, err := stack.VerifyBackup(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: the backup of %s taken %s\n", args[0], m.Source, m.Created.Local().Format(time.DateTime))
			printBackup(out, m)
			if len(problems) > 0 {
				return fmt.Errorf("%s would not restore: %w", args[0], errors.Join(problems...))
			}
			fmt.Fprintln(out, "whole: every stream, the database and the files read back")
			return nil
		},
	}
}

// printBackup lists what a backup holds.
func printBackup(out io.Writer, m *stack.BackupManifest) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	switch m.Database {
	case stack.BackupDatabaseManaged:
		fmt.Fprintf(tw, "  database\tthe managed PostgreSQL, %s\n", sizeOf(m.DatabaseBytes))
	default:
		fmt.Fprintf(tw, "  database\tpg_dump, %s\n", sizeOf(m.DatabaseBytes))
	}
	for _, s := range m.Streams {
		fmt.Fprintf(tw, "  stream %s\t%d messages, %s\n", s.Name, s.Messages, sizeOf(s.Bytes))
	}
	for _, f := range m.Files {
		fmt.Fprintf(tw, "  %s/\tcopied\n", f)
	}
	for _, f := range m.Outside {
		fmt.Fprintf(tw, "  %s\toutside the data directory: not in the backup\n", f)
	}
	_ = tw.Flush()
}

// sizeOf is n bytes for a reader: B, KiB, MiB or GiB.
func sizeOf(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n)/unit, "KiB"
	for _, next := range []string{"MiB", "GiB"} {
		if v < unit {
			break
		}
		v, u = v/unit, next
	}
	return fmt.Sprintf("%.1f %s", v, u)
}
