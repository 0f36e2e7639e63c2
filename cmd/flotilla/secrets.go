package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	secretsv1 "flotilla.dev/flotilla/api/gen/flotilla/secrets/v1"
)

// secretsCommand is `flotilla instances secrets`: the secrets bound to an
// instance, which only its agent can read.
func secretsCommand(opts *clientOptions) *cobra.Command {
	group := &cobra.Command{
		Use:   "secrets",
		Short: "An instance's secrets: set, list (names only), delete; only its agent reads their values",
		Long: `Secrets bound to an instance, kept encrypted: its agent alone reads their
values, in setup actions (${secret:NAME} in a file's content) and in the node
software's configuration, as setup runs and the node software starts: a value
replaced on a provisioned instance takes effect when its configuration is
refreshed (flotilla instances refresh-configuration) or it is reprovisioned.
Their values never come back out of the API.`,
		Example: `  flotilla instances secrets set web-1 db-password < password.txt
  flotilla instances secrets list web-1`,
	}
	var (
		fromFile, ref string
		over          int64
	)
	set := &cobra.Command{
		Use:   "set INSTANCE NAME",
		Short: "Store or replace a secret of an instance: the value from standard input, a file, or the terminal (no echo)",
		Example: `  flotilla instances secrets set web-1 db-password            # asks for the value
  printf %s "$DB_PASSWORD" | flotilla instances secrets set web-1 db-password
  flotilla instances secrets set web-1 tls-key --from-file key.pem
  flotilla instances secrets set web-1 db-password --secrets-manager prod/db   # read there at each read`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: instances.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			value := ""
			if ref == "" {
				var err error
				if value, err = readSecretValue(cmd, fromFile); err != nil {
					return err
				}
			}
			s, id, _, err := instanceSession(cmd, opts, args[0])
			if err != nil {
				return err
			}
			var sec secretsv1.Secret
			if err := s.call(cmd.Context(), http.MethodPost, instancesPath+"/"+id+"/secrets",
				jsonBody(map[string]any{"name": args[1], "value": value, "secretsManagerId": ref, "version": over}), &sec); err != nil {
				return fmt.Errorf("set secret %s of %s: %w", args[1], args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "secret %s of %s set (version %d)\n", sec.GetName(), args[0], sec.GetVersion())
			if sec.GetVersion() > 1 {
				fmt.Fprintf(cmd.OutOrStdout(), "a provisioned instance reads values as its setup runs and its node software starts: flotilla instances refresh-configuration %s for the new value to take effect\n", args[0])
			}
			return nil
		},
	}
	set.Flags().StringVar(&fromFile, "from-file", "", "read the value from this file (as it is, newlines included)")
	set.Flags().StringVar(&ref, "secrets-manager", "", "keep no value: read it from this AWS Secrets Manager secret (name or ARN) at each read, in the cloud account of the instance's network")
	set.MarkFlagsMutuallyExclusive("from-file", "secrets-manager")
	set.Flags().Int64Var(&over, "if-version", 0, "replace only the version read (instances secrets list): refused if someone changed it since, or there is none")
	list := &cobra.Command{
		Use:               "list INSTANCE",
		Aliases:           []string{"ls"},
		Short:             "List an instance's secrets: names, versions and times, never values",
		Example:           "  flotilla instances secrets list web-1",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: instances.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, id, format, err := instanceSession(cmd, opts, args[0])
			if err != nil {
				return err
			}
			var resp secretsv1.ListSecretsResponse
			if err := s.call(cmd.Context(), http.MethodGet, instancesPath+"/"+id+"/secrets", nil, &resp); err != nil {
				return err
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, &resp)
			}
			rows := [][]string{{"NAME", "VERSION", "UPDATED", "KMS KEY", "SECRETS MANAGER"}}
			for _, sec := range resp.GetSecrets() {
				rows = append(rows, []string{sec.GetName(), fmt.Sprint(sec.GetVersion()), ago(sec.GetUpdateTime().AsTime()), dash(sec.GetKmsKeyId()), dash(sec.GetSecretsManagerId())})
			}
			return writeTable(cmd.OutOrStdout(), rows)
		},
	}
	del := &cobra.Command{
		Use:               "delete INSTANCE NAME",
		Aliases:           []string{"rm"},
		Short:             "Delete one of an instance's secrets",
		Example:           "  flotilla instances secrets delete web-1 db-password",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: instances.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, id, _, err := instanceSession(cmd, opts, args[0])
			if err != nil {
				return err
			}
			if err := s.call(cmd.Context(), http.MethodDelete, instancesPath+"/"+id+"/secrets/"+url.PathEscape(args[1]), nil, nil); err != nil {
				return fmt.Errorf("delete secret %s of %s: %w", args[1], args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "secret %s of %s deleted\n", args[1], args[0])
			return nil
		},
	}
	group.AddCommand(set, list, del)
	return group
}

// instanceSession opens a session and finds an instance by name or id; it
// returns the session, the instance's id and the output format.
func instanceSession(cmd *cobra.Command, opts *clientOptions, nameOrID string) (*session, string, string, error) {
	s, format, err := opts.start(cmd)
	if err != nil {
		return nil, "", "", err
	}
	in, err := s.find(cmd.Context(), instances, nameOrID)
	if err != nil {
		return nil, "", "", err
	}
	return s, stringField(in, "id"), format, nil
}

// readSecretValue reads a secret's value: from a file, from the terminal
// without echo, or from standard input (one trailing newline dropped).
func readSecretValue(cmd *cobra.Command, fromFile string) (string, error) {
	if fromFile != "" {
		b, err := os.ReadFile(fromFile)
		return string(b), err
	}
	if v, ok, err := askHidden(cmd, "Value"); ok {
		return v, err
	}
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
	if err != nil {
		return "", fmt.Errorf("read the value from standard input: %w", err)
	}
	if len(b) == 0 {
		return "", errors.New("no value: give it on standard input, with --from-file, or on a terminal")
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"), nil
}

// fleetSecretsPath is the fleet secrets' collection.
const fleetSecretsPath = "/api/v1/secrets"

// fleetSecretsCommand is `flotilla secrets`: fleet secrets, one value for
// the agents of every instance of the templates each names.
func fleetSecretsCommand(opts *clientOptions) *cobra.Command {
	group := &cobra.Command{
		Use:   "secrets",
		Short: "Fleet secrets: one value for the instances of some templates (in some networks); set, list (names only), delete",
		Long: `Fleet secrets, kept encrypted: one value (a licence key, a registry's
credentials) for the agents of every instance of the templates each names,
in every network or in the networks it names.
An agent asking for NAME (${secret:NAME} in a setup action) gets its own
instance's secret of that name if there is one (flotilla instances secrets),
else the fleet secret NAME if its instance's template is among the secret's,
and its network too when the secret names networks; any other agent is
refused, and every read is audited. Like an instance's
secrets, values are read as setup runs and the node software starts, and
never come back out of the API.`,
		Example: `  flotilla secrets set registry-token --template small --template big < token.txt
  flotilla secrets set registry-token --template small --network prod < prod-token.txt
  flotilla secrets list`,
	}
	var (
		fromFile, ref string
		tpls, nets    []string
		templatesOnly bool
		allNetworks   bool
		over          int64
		ifUpdated     string
	)
	set := &cobra.Command{
		Use:   "set NAME --template TEMPLATE...",
		Short: "Store or replace a fleet secret for the instances of the templates named (in the networks named): the value from standard input, a file, or the terminal (no echo)",
		Long: `Store or replace a fleet secret for the instances of the templates named,
the value from standard input, a file, or the terminal (no echo). With
--network, only those templates' instances in the networks named may read
it. A secret replaced keeps the networks it had unless --network or
--all-networks says otherwise, so a new value never widens who reads it.`,
		Example: `  flotilla secrets set registry-token --template small            # asks for the value
  printf %s "$TOKEN" | flotilla secrets set registry-token --template small --template big
  flotilla secrets set registry-token --template small --network prod --templates-only  # where it is read changes, not its value
  flotilla secrets set registry-token --template small --all-networks --templates-only`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(tpls) == 0 {
				return errors.New("--template: name at least one template whose instances' agents may read the secret")
			}
			if ifUpdated != "" {
				if _, err := time.Parse(time.RFC3339Nano, ifUpdated); err != nil {
					return fmt.Errorf("--if-updated: %q is not a time: RFC 3339, as secrets get -o json shows updateTime", ifUpdated)
				}
			}
			value := ""
			if !templatesOnly && ref == "" {
				var err error
				if value, err = readSecretValue(cmd, fromFile); err != nil {
					return err
				}
			}
			s, _, err := opts.start(cmd)
			if err != nil {
				return err
			}
			ids, err := templateIDs(cmd.Context(), s, tpls)
			if err != nil {
				return err
			}
			netIDs, err := idsOf(cmd.Context(), s, networks, "--network", nets)
			if err != nil {
				return err
			}
			if len(nets) == 0 && !allNetworks {
				// Replaced, it keeps the networks it had.
				var had secretsv1.FleetSecret
				if err := s.call(cmd.Context(), http.MethodGet, fleetSecretsPath+"/"+url.PathEscape(args[0]), nil, &had); err != nil && !isNotFound(err) {
					return fmt.Errorf("set fleet secret %s: read the networks it has: %w", args[0], err)
				}
				netIDs = had.GetNetworkIds()
			}
			body := map[string]any{"value": value, "templateIds": ids, "networkIds": netIDs, "secretsManagerId": ref, "version": over}
			if ifUpdated != "" {
				body["ifUpdateTime"] = ifUpdated
			}
			var sec secretsv1.FleetSecret
			if err := s.call(cmd.Context(), http.MethodPut, fleetSecretsPath+"/"+url.PathEscape(args[0]), jsonBody(body), &sec); err != nil {
				return fmt.Errorf("set fleet secret %s: %w", args[0], err)
			}
			where := "in every network"
			switch n := len(sec.GetNetworkIds()); {
			case len(nets) > 0:
				where = "in " + strings.Join(nets, ", ")
			case n > 0:
				where = fmt.Sprintf("in the %d %s it had", n, plural(n, "network", "networks"))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "fleet secret %s set (version %d) for the instances of %s %s\n", sec.GetName(), sec.GetVersion(), strings.Join(tpls, ", "), where)
			if sec.GetVersion() > 1 && !templatesOnly {
				fmt.Fprintf(cmd.OutOrStdout(), "a provisioned instance reads values as its setup runs and its node software starts: for the new value to take effect on those running, flotilla instances refresh-configuration --template %s --wait\n",
					strings.Join(tpls, " --template "))
			}
			return nil
		},
	}
	set.Flags().StringVar(&fromFile, "from-file", "", "read the value from this file (as it is, newlines included)")
	set.Flags().StringArrayVar(&tpls, "template", nil, "a template (name or id) whose instances' agents may read the secret; repeat for more")
	set.Flags().StringArrayVar(&nets, "network", nil, "a network (name or id): only the templates' instances in it may read the secret; repeat for more")
	set.Flags().BoolVar(&allNetworks, "all-networks", false, "the templates' instances in every network may read the secret (a secret replaced otherwise keeps its networks)")
	set.MarkFlagsMutuallyExclusive("network", "all-networks")
	set.Flags().BoolVar(&templatesOnly, "templates-only", false, "keep the value stored, and change which templates (and networks) the secret is for")
	set.Flags().StringVar(&ref, "secrets-manager", "", "keep no value: read it from this AWS Secrets Manager secret (name or ARN) at each read, in the cloud account of the reading instance's network")
	set.MarkFlagsMutuallyExclusive("from-file", "templates-only", "secrets-manager")
	set.Flags().Int64Var(&over, "if-version", 0, "replace only the value's version read (secrets list): refused if someone gave it another value since, or there is none")
	set.Flags().StringVar(&ifUpdated, "if-updated", "", "change only the secret as read at this update time (updateTime in secrets get -o json): refused if someone changed its value, templates or networks since, or there is none")
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the fleet secrets: names, templates, networks, versions and times, never values",
		Example: "  flotilla secrets list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			var resp secretsv1.ListFleetSecretsResponse
			if err := s.call(cmd.Context(), http.MethodGet, fleetSecretsPath, nil, &resp); err != nil {
				return err
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, &resp)
			}
			return writeFleetSecrets(cmd.Context(), cmd.OutOrStdout(), s, resp.GetSecrets())
		},
	}
	get := &cobra.Command{
		Use:     "get NAME...",
		Short:   "Show fleet secrets by name: templates, networks, version and times, never values",
		Example: "  flotilla secrets get registry-token\n  flotilla secrets get registry-token -o yaml",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			var found []*secretsv1.FleetSecret
			for _, name := range args {
				sec := &secretsv1.FleetSecret{}
				if err := s.call(cmd.Context(), http.MethodGet, fleetSecretsPath+"/"+url.PathEscape(name), nil, sec); err != nil {
					return fmt.Errorf("fleet secret %s: %w", name, err)
				}
				found = append(found, sec)
			}
			switch {
			case format == formatTable:
				return writeFleetSecrets(cmd.Context(), cmd.OutOrStdout(), s, found)
			case len(found) == 1:
				return writeMessage(cmd.OutOrStdout(), format, found[0])
			}
			return writeMessage(cmd.OutOrStdout(), format, &secretsv1.ListFleetSecretsResponse{Secrets: found})
		},
	}
	del := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a fleet secret",
		Example: "  flotilla secrets delete registry-token",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, _, err := opts.start(cmd)
			if err != nil {
				return err
			}
			if err := s.call(cmd.Context(), http.MethodDelete, fleetSecretsPath+"/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return fmt.Errorf("delete fleet secret %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "fleet secret %s deleted\n", args[0])
			return nil
		},
	}
	group.AddCommand(set, list, get, del)
	opts.flags(group)
	return group
}

// writeFleetSecrets prints fleet secrets as a table, their templates and
// networks by name where s can read them.
func writeFleetSecrets(ctx context.Context, w io.Writer, s *session, secrets []*secretsv1.FleetSecret) error {
	names := map[string]string{}
	for _, r := range []*resource{templates, networks} {
		if all, err := s.all(ctx, r); err == nil {
			for _, t := range all {
				names[stringField(t, "id")] = stringField(t, "name")
			}
		}
	}
	named := func(ids []string) []string {
		var out []string
		for _, id := range ids {
			out = append(out, cmp.Or(names[id], id))
		}
		return out
	}
	rows := [][]string{{"NAME", "TEMPLATES", "NETWORKS", "VERSION", "UPDATED", "KMS KEY", "SECRETS MANAGER"}}
	for _, sec := range secrets {
		tn, nn := named(sec.GetTemplateIds()), strings.Join(named(sec.GetNetworkIds()), ",")
		// Below an operator the API gives names and templates only: no
		// version, and no networks, which are not "(all)".
		version, updated := "—", "—"
		if sec.GetVersion() > 0 {
			version, updated = fmt.Sprint(sec.GetVersion()), ago(sec.GetUpdateTime().AsTime())
			if nn == "" {
				nn = "(all)"
			}
		}
		rows = append(rows, []string{sec.GetName(), dash(strings.Join(tn, ",")), nn, version, updated, dash(sec.GetKmsKeyId()), dash(sec.GetSecretsManagerId())})
	}
	return writeTable(w, rows)
}
