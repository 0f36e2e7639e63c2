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
		dir, into string
		keep      int
	)
	cmd := &cobra.Command{
		Use:   "backup DEST | --into DIR [--keep N]",
		Short: "Back the data directory up into DEST, while flotilla up runs on it or not",
		Long: `Copies into DEST (a new directory, or an empty one) everything flotilla up
cannot make again: the settings and bus credentials, the fleet CA and its key,
the master key that wraps every secret, the managed PostgreSQL (a base backup
taken while it serves, checked with pg_verifybackup) and every JetStream stream
(the events, the audit trail, the instances' logs, the buckets: each stream's
snapshot, taken after the database's). While flotilla up runs, it goes on
serving; while it does not, it cannot start until the backup is done.

The local provider's VMs and disks are not in it, nor an external database
(back that up with its own tools, before this backup), nor files the settings
name outside the data directory (listed at the end).

With --into, the backup is made in DIR/flotilla-<UTC time>, and, once it is
whole, the backups of this data directory in DIR but the newest --keep are
removed (nothing else in DIR is touched): for a timer that backs up daily.

Keep the backup as you keep those keys: whoever has it can read every secret.
Restore it with flotilla admin restore.`,
		Example: `  flotilla admin backup /backup/flotilla-$(date +%F) --data-dir ./.flotilla
  flotilla admin backup --into /var/backups/flotilla --keep 7 --data-dir /var/lib/flotilla
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
			start := time.Now()
			m, err := stack.Backup(cmd.Context(), dir, dest, version)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			how := "flotilla up was not running"
			if m.Hot {
				how = "while flotilla up ran"
			}
			fmt.Fprintf(out, "backed up %s into %s (%s) in %.1f s\n", m.Source, dest, how, time.Since(start).Seconds())
			printBackup(out, m)
			fmt.Fprintln(out, "it holds the master key that opens every secret, and the fleet CA's key: keep it as you keep them")
			fmt.Fprintf(out, "restore it: flotilla admin restore %s --data-dir DIR, then flotilla up --data-dir DIR\n", dest)
			if into == "" {
				return nil
			}
			removed, err := stack.PruneBackups(into, dir, keep)
			for _, r := range removed {
				fmt.Fprintf(out, "removed the old backup %s\n", r)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "./.flotilla", "data directory")
	cmd.Flags().StringVar(&into, "into", "", "a directory of backups: make the backup in it, named flotilla-<UTC time>")
	cmd.Flags().IntVar(&keep, "keep", 7, "with --into: how many backups of this data directory to keep there, the newest")
	return cmd
}

// newRestore makes a new data directory from a backup.
func newRestore() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "restore BACKUP --data-dir DIR",
		Short: "Make a new data directory from a backup, for flotilla up to start on",
		Long: `Makes DIR (a new directory, or an empty one) a data directory holding what
BACKUP (made by flotilla admin backup) holds: flotilla up --data-dir DIR then
starts as Flotilla stood when the backup was taken. Its settings keep the
backup's ports: give flotilla up --port to run it beside the original.

An external database is not in a backup: restore it with its own tools first.`,
		Example: `  flotilla admin restore /backup/flotilla-2026-12-04 --data-dir ./.flotilla
  flotilla up --data-dir ./.flotilla`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := stack.Restore(cmd.Context(), args[0], dir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "restored %s (the backup of %s taken %s) into %s\n", args[0], m.Source, m.Created.Local().Format(time.DateTime), dir)
			printBackup(out, m)
			fmt.Fprintf(out, "start it: flotilla up --data-dir %s\n", dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "", "the new data directory (required)")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}

// printBackup lists what a backup holds.
func printBackup(out io.Writer, m *stack.BackupManifest) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	switch m.Database {
	case stack.BackupDatabaseManaged:
		fmt.Fprintf(tw, "  database\tthe managed PostgreSQL, %s\n", sizeOf(m.DatabaseBytes))
	default:
		fmt.Fprintf(tw, "  database\texternal: not in the backup (back it up with its own tools)\n")
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
