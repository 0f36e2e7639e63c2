package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	authv1 "flotilla.dev/flotilla/api/gen/flotilla/auth/v1"
)

// tokens are the API tokens: one's own, or everyone's for an admin. The
// API reads them only as a list, and a name is unique per user only.
var tokens = &resource{
	plural: "tokens", singular: "API token", aliases: []string{"token", "api-tokens"},
	item: &authv1.ApiToken{}, list: &authv1.ListTokensResponse{}, noGet: true, deleteVerb: "revoke",
	columns: columns("NAME=name", "USER=username", "ROLE=role", "EXPIRES=expireTime", "LAST USED=lastUseTime",
		"CREATED=createTime", "ID=id"),
}

// tokensCommand is `flotilla tokens`: list, create and revoke API tokens.
func tokensCommand(opts *clientOptions) *cobra.Command {
	return tokens.group(opts, "API tokens for automation: list, create (shown once), revoke",
		`  flotilla tokens create ci --role operator --expires-in 720h
  flotilla tokens list
  flotilla tokens revoke ci`,
		tokens.listCommand(opts), createTokenCommand(opts), tokens.deleteCommand(opts))
}

func createTokenCommand(opts *clientOptions) *cobra.Command {
	var (
		role      string
		expiresIn time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create NAME --role ROLE [--expires-in 720h]",
		Short: "Create an API token (a bearer token for scripts) and print it, the only time it is shown",
		Long: `Create an API token for the user logged in: named (unique among your live
tokens), with a role no greater than yours (and never more than your role
of the moment), living --expires-in (1m to 365d). It needs a login session:
an API token cannot mint another.

The token is printed alone on standard output (-o json or yaml: the API's
whole answer, the token included), so a script can capture it; Flotilla keeps
only its SHA-256, so it is never shown again. Use it as FLOTILLA_TOKEN (or
--token) with the client, or as "Authorization: Bearer <token>".`,
		Example: `  flotilla tokens create ci --role operator --expires-in 720h
  TOKEN=$(flotilla tokens create deploy --role operator --expires-in 24h)
  flotilla tokens create ci --role viewer -o json | jq -r .token`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkRoleFlag("--role", role); err != nil {
				return err
			}
			if err := opts.checkOutput(cmd.OutOrStdout()); err != nil {
				return err
			}
			s, err := opts.session()
			if err != nil {
				return err
			}
			resp := &authv1.CreateTokenResponse{}
			if err := s.call(cmd.Context(), http.MethodPost, tokens.path(), jsonBody(map[string]string{
				"name": args[0], "role": role, "expiresIn": fmt.Sprintf("%ds", int64(expiresIn.Seconds())),
			}), resp); err != nil {
				return fmt.Errorf("create API token %q: %w", args[0], err)
			}
			t := resp.GetApiToken()
			fmt.Fprintf(cmd.ErrOrStderr(), "API token %s (role %s, id %s) created, valid until %s. It is shown only this once: keep it now.\n",
				t.GetName(), t.GetRole(), t.GetId(), t.GetExpireTime().AsTime().Local().Format(time.RFC1123))
			if opts.output == formatJSON || opts.output == formatYAML {
				return writeMessage(cmd.OutOrStdout(), opts.output, resp)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
			return err
		},
	}
	roleFlag(cmd, &role, "the token's role, at most yours")
	expiresIn = 30 * 24 * time.Hour
	cmd.Flags().Var(durationFlag{&expiresIn}, "expires-in", "how long the token lives (1m to 365d; 90m, 24h, 30d)")
	return cmd
}
