package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"flotilla.dev/flotilla/internal/stack"
	"flotilla.dev/flotilla/libs/datadir"
	"flotilla.dev/flotilla/libs/sealdir"
)

// newBackup backs a data directory up, while flotilla up runs on it or not.
func newBackup() *cobra.Command {
	var (
		dir, into, creds, textfile    string
		keep                          int
		fromEnv, dump                 bool
		recipientKeys, recipientFiles []string
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
Or seal it: with --recipient (a public key, age1…) or --recipients-file, the
backup is one file encrypted to those keys (age), with its manifest in the
clear beside it, and restoring it needs the secret key of one of them
(restore --identity). Make a key with flotilla admin backup-key, on a host
other than this one, and keep its secret key there: the sealed backups can
then leave this host. A sealed backup is staged in $TMPDIR first, unsealed
(no other user can read it there; it needs room for the backup).
Restore it with flotilla admin restore.`,
		Example: `  flotilla admin backup /backup/flotilla-$(date +%F) --data-dir ./.flotilla
  flotilla admin backup --into /var/backups/flotilla --keep 7 --data-dir /var/lib/flotilla
  flotilla admin backup --into /var/backups/flotilla --recipients-file /etc/flotilla/backup.recipients
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
			default:
				return errors.New("where to? give DEST (a new directory) or --into DIR (a directory of backups)")
			}
			var (
				source  string
				dataDir datadir.Dir // what the backup may not be inside
			)
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
				source, dataDir = abs, datadir.Dir(abs)
			}
			recipients, err := sealdir.Recipients(recipientKeys, recipientFiles)
			if err != nil {
				return err
			}
			var m *stack.BackupManifest
			start := time.Now()
			if into != "" {
				if dest, err = stack.NewBackupIn(into, start); err != nil {
					return err
				}
				defer func() {
					if m == nil {
						_ = os.Remove(dest) // empty: the failed backup removed what it wrote
					}
				}()
			}
			take := func(dest string) (*stack.BackupManifest, error) {
				if fromEnv {
					return stack.BackupClusterFromEnv(cmd.Context(), nil, creds, dest, version)
				}
				return stack.Backup(cmd.Context(), dir, dest, version, dump)
			}
			if len(recipients) > 0 {
				m, err = stack.SealBackup(dest, dataDir, recipients, take)
			} else {
				m, err = take(dest)
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
			key := ""
			if m.Sealed != nil {
				fmt.Fprintf(out, "sealed: only the secret key of one of those it is sealed to opens it\n")
				key = " --identity KEY"
			} else {
				fmt.Fprintln(out, "it holds the master key that opens every secret, and the fleet CA's key: keep it as you keep them (or seal it: --recipient)")
			}
			switch {
			case fromEnv || dump:
				fmt.Fprintf(out, "restore it into a new cluster, before its services first start: flotilla admin restore %s%s --env --bus-dir DIR\n", dest, key)
			case m.Database == stack.BackupDatabaseDump:
				fmt.Fprintf(out, "restore it: flotilla admin restore %s%s --data-dir DIR --database-url URL (an empty database), then flotilla up --data-dir DIR\n", dest, key)
			default:
				fmt.Fprintf(out, "restore it: flotilla admin restore %s%s --data-dir DIR, then flotilla up --data-dir DIR\n", dest, key)
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
	cmd.Flags().StringArrayVar(&recipientKeys, "recipient", nil, "seal the backup to this public key (age1…, from flotilla admin backup-key); repeat for more")
	cmd.Flags().StringArrayVar(&recipientFiles, "recipients-file", nil, "seal the backup to the public keys in this file (one a line, # comments); repeat for more")
	return cmd
}

// newRestore makes a new data directory from a backup.
func newRestore() *cobra.Command {
	var (
		dir, busDir, dbURL string
		fromEnv            bool
		identities         []string
	)
	cmd := &cobra.Command{
		Use:   "restore BACKUP --data-dir DIR | --env --bus-dir DIR",
		Short: "Make a new data directory from a backup, for flotilla up to start on (or, --env, restore into a cluster)",
		Long: `Makes DIR (a new directory, or an empty one) a data directory holding what
BACKUP (made by flotilla admin backup) holds: flotilla up --data-dir DIR then
starts as Flotilla stood when the backup was taken. Its settings keep the
backup's ports: give flotilla up --port to run it beside the original. The
backup of a Flotilla on an external PostgreSQL is restored into the empty
database --database-url names, which the settings then name. A database
dump (a cluster's backup, or one taken with --dump) is restored into the
data directory's managed PostgreSQL, or with --database-url into that
database. A cluster's backup gets the settings flotilla up makes on a first
start (its ports, the API's TLS, the agents' address: the cluster's are not
in the backup), with the cluster's fleet CA and master key, so its agents'
certificates and every secret carry over: the way from the HA cluster back
to flotilla up.

With --env, it restores a cluster's backup (made with --env), or a data
directory's made with --dump, into a cluster whose services have not started
yet (a data directory's streams get FLOTILLA_STREAM_REPLICAS), with the settings they read from the
environment: the CA's and master key's files are written where the settings
name them on this host, unless a file is there; every stream through
FLOTILLA_NATS_URL (none may exist), as a user the bus authority in --bus-dir
(bus-credentials init --dir, whose keys the cluster's servers trust) signs for
the restore alone; then the database by pg_restore through
FLOTILLA_DATABASE_OWNER_URL (it must hold no table), in one transaction. A
failure undoes what was done before it, so the restore can be run again. Copy
the files to every manager, then start the services.

A sealed backup (backup --recipient) is opened with --identity, a file
holding the secret key of one of the keys it is sealed to (flotilla admin
backup-key made it), into $TMPDIR, which needs room for it; no other user
can read it there, and it is removed after.`,
		Example: `  flotilla admin restore /backup/flotilla-2026-12-04 --data-dir ./.flotilla
  flotilla up --data-dir ./.flotilla
  set -a; . /etc/flotilla/flotilla.env; set +a
  flotilla admin restore /var/backups/flotilla/flotilla-20261204T030000Z --env --bus-dir /root/flotilla-bus`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			keys, err := sealdir.Identities(identities)
			if err != nil {
				return err
			}
			if fromEnv {
				if dir != "" || dbURL != "" {
					return errors.New("--env restores into a cluster, from the environment's settings (FLOTILLA_DATABASE_OWNER_URL): drop --data-dir and --database-url")
				}
				m, written, err := stack.RestoreClusterFromEnv(cmd.Context(), nil, busDir, args[0], keys)
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
			m, err := stack.Restore(cmd.Context(), args[0], dir, dbURL, keys)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "restored %s (the backup of %s taken %s) into %s\n", args[0], m.Source, m.Created.Local().Format(time.DateTime), dir)
			printBackup(out, m)
			if m.Cluster {
				fmt.Fprintln(out, "the cluster's settings are not in its backup: this data directory has flotilla up's own (its ports, the API's TLS); agents of VMs in a cloud dial the cluster's address: point it at this host")
			}
			fmt.Fprintf(out, "start it: flotilla up --data-dir %s\n", dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "", "the new data directory (required, unless --env)")
	cmd.Flags().BoolVar(&fromEnv, "env", false, "restore a cluster's backup into a cluster, with the settings its services read from the environment")
	cmd.Flags().StringVar(&busDir, "bus-dir", "", "with --env: the bus authority's directory (flotilla admin bus-credentials init --dir)")
	cmd.Flags().StringVar(&dbURL, "database-url", "", "the empty database to restore the backup of a Flotilla on an external PostgreSQL into")
	identityFlag(cmd, &identities)
	return cmd
}

// identityFlag adds --identity, the secret keys that open a sealed backup.
func identityFlag(cmd *cobra.Command, files *[]string) {
	cmd.Flags().StringArrayVar(files, "identity", nil, "a sealed backup's key: a file holding the secret key of one it is sealed to (flotilla admin backup-key); repeat for more")
}

// newVerifyBackup checks a backup without restoring it.
func newVerifyBackup() *cobra.Command {
	var identities []string
	cmd := &cobra.Command{
		Use:   "verify-backup BACKUP",
		Short: "Check that a backup is whole, without restoring it",
		Long: `Reads the whole of a backup made by flotilla admin backup: its manifest, each
stream's snapshot (whole, and holding what the manifest says), the database
(a base backup checked by pg_verifybackup, a dump read through by pg_restore)
and the copied files. It exits non-zero, naming each problem, when the backup
would not restore. A sealed backup is opened with --identity (into $TMPDIR,
removed after) and read the same way; opening it checks that no byte of it
was altered. Without --identity (on a host that keeps copies but not the
key), only the sealed file's size and header are checked.`,
		Example: "  flotilla admin verify-backup /var/backups/flotilla/flotilla-20261204T030000Z",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			keys, err := sealdir.Identities(identities)
			if err != nil {
				return err
			}
			m, problems, err := stack.VerifyBackup(cmd.Context(), args[0], keys)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: the backup of %s taken %s\n", args[0], m.Source, m.Created.Local().Format(time.DateTime))
			printBackup(out, m)
			if len(problems) > 0 {
				return fmt.Errorf("%s would not restore: %w", args[0], errors.Join(problems...))
			}
			if m.Sealed != nil && len(keys) == 0 {
				fmt.Fprintln(out, "sealed: its size and header are as written; its contents were not read (give --identity KEY to read them through)")
				return nil
			}
			fmt.Fprintln(out, "whole: every stream, the database and the files read back")
			return nil
		},
	}
	identityFlag(cmd, &identities)
	return cmd
}

// newBackupKey makes a key to seal backups to.
func newBackupKey() *cobra.Command {
	return &cobra.Command{
		Use:   "backup-key FILE",
		Short: "Make a key to seal backups to: its secret key in FILE, its public key printed",
		Long: `Writes a new key to FILE (which must not exist; mode 0600): the secret key
that opens the backups sealed to it (restore --identity FILE). It prints its
public key (age1pq1…, a post-quantum age key), which seals backups to it
(backup --recipient, or a line of --recipients-file) and cannot open them.

Make it on a host other than the one whose backups it seals, and keep FILE
there, or offline: the backups can then leave that host, and a copy of
them, or the host, does not give away the secrets they hold. Lose FILE and
the backups sealed to it alone are lost too: seal to two keys kept apart.`,
		Example: `  flotilla admin backup-key ~/flotilla-backup.key > flotilla-backup.recipient
  scp flotilla-backup.recipient root@fleet:/etc/flotilla/backup.recipients`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			recipient, err := sealdir.NewKey(args[0])
			if err != nil {
				return fmt.Errorf("backup key: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote the secret key to %s: keep it off the hosts whose backups it opens\nits public key, to seal backups to (backup --recipient, or --recipients-file):\n", args[0])
			fmt.Fprintln(cmd.OutOrStdout(), recipient)
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
	if m.Sealed != nil {
		fmt.Fprintf(tw, "  sealed in %s\t%s, to %d key(s): %s\n", m.Sealed.File, sizeOf(m.Sealed.Bytes), len(m.Sealed.Recipients), sealdir.Abbrev(m.Sealed.Recipients...))
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
