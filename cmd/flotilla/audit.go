package main

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	auditv1 "flotilla.dev/flotilla/api/gen/flotilla/audit/v1"
)

// auditCommand is `flotilla audit`: the audit trail, newest first (admins).
func auditCommand(opts *clientOptions) *cobra.Command {
	var (
		user, target, since, until string
		limit                      int
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the audit trail, newest first: API calls that change something, logins, tokens, user changes, secret reads (admins)",
		Long: `Read the audit trail (GET /api/v1/audit), newest first, page after page up to
--limit records. Every call that changes something is there (allowed or
refused), with the logins and logouts, API tokens and user changes, secret
and cloud-key reads and join tokens; never a password, a token or a secret.

--user is who acted (a user name or id); --target what it was about: an id,
or KIND/NAME for one that exists (user/ann, instance/web-1, network/lab,
template/small, cloud-account/lab-aws, token/ci). --since (inclusive) and
--until (exclusive) take an RFC 3339 time or a duration back from now.`,
		Example: `  flotilla audit --since 24h
  flotilla audit --user ann --limit 20
  flotilla audit --target instance/web-1 -o json | jq -r '.records[].action'
  flotilla audit --since 2026-01-02T00:00:00Z --until 2026-01-03T00:00:00Z --limit 0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit: %d is negative (0 reads every record)", limit)
			}
			q := url.Values{}
			if err := setTimeQuery(q, "since", since); err != nil {
				return err
			}
			if err := setTimeQuery(q, "until", until); err != nil {
				return err
			}
			if user != "" {
				q.Set("user", user)
			}
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if target != "" {
				id, err := targetID(ctx, s, target)
				if err != nil {
					return err
				}
				q.Set("target", id)
			}
			all := &auditv1.ListAuditRecordsResponse{}
			more := false
			for {
				n := 500
				if limit > 0 {
					n = min(n, limit-len(all.Records))
				}
				q.Set("pageSize", strconv.Itoa(n))
				page := &auditv1.ListAuditRecordsResponse{}
				if err := s.call(ctx, http.MethodGet, "/api/v1/audit?"+q.Encode(), nil, page); err != nil {
					return err
				}
				all.Records = append(all.Records, page.GetRecords()...)
				if page.GetNextPageToken() == "" {
					break
				}
				if limit > 0 && len(all.Records) >= limit {
					more = true
					break
				}
				q.Set("pageToken", page.GetNextPageToken())
			}
			if more {
				fmt.Fprintf(cmd.ErrOrStderr(), "The newest %d records; there are older ones: --limit 0 reads them all, or narrow with --since, --user or --target.\n", limit)
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, all)
			}
			rows := [][]string{{"TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "SOURCE", "DETAIL"}}
			for _, r := range all.GetRecords() {
				rows = append(rows, []string{r.GetTime().AsTime().Local().Format("2006-01-02T15:04:05Z07:00"), dash(cmp.Or(r.GetActor(), r.GetUsername())),
					r.GetAction(), dash(r.GetTarget()), dash(r.GetResult()), dash(r.GetSource()), dash(r.GetDetail())})
			}
			return writeTable(cmd.OutOrStdout(), rows)
		},
	}
	opts.flags(cmd)
	f := cmd.Flags()
	f.StringVar(&user, "user", "", "only what this user did (a name or an id)")
	f.StringVar(&target, "target", "", "only records about this: an id, or KIND/NAME (user/ann, instance/web-1, ...)")
	f.StringVar(&since, "since", "", "only records at or after a time (RFC 3339) or for a while (10m, 24h)")
	f.StringVar(&until, "until", "", "only records before a time (RFC 3339) or a while ago (1h)")
	f.IntVar(&limit, "limit", 100, "read at most this many records, the newest (0: all)")
	_ = cmd.RegisterFlagCompletionFunc("user", users.completeNames(opts))
	return cmd
}

// targetKinds are the resources --target KIND/NAME may name.
var targetKinds = []*resource{users, instances, networks, templates, cloudAccounts, tokens}

// targetID resolves --target: KIND/NAME (a resource that exists) to its
// id; anything else is an id, as it is.
func targetID(ctx context.Context, s *session, v string) (string, error) {
	kind, name, ok := strings.Cut(v, "/")
	if !ok {
		return v, nil
	}
	var kinds []string
	for _, r := range targetKinds {
		if kind == r.plural || slices.Contains(r.aliases, kind) {
			it, err := s.find(ctx, r, name)
			if err != nil {
				return "", fmt.Errorf("--target: %w", err)
			}
			return stringField(it, "id"), nil
		}
		kinds = append(kinds, r.aliases[0])
	}
	return "", fmt.Errorf("--target: %q is not a kind of resource: %s (or give an id)", kind, strings.Join(kinds, ", "))
}
