package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	systemv1 "flotilla.dev/flotilla/api/gen/flotilla/system/v1"
	"flotilla.dev/flotilla/libs/natsx"
)

func newCluster(c *clientOptions) *cobra.Command {
	cluster := &cobra.Command{
		Use:     "cluster",
		Short:   "Inspect a running Flotilla cluster: its managers, NATS servers and databases",
		Example: "  flotilla cluster status\n  flotilla cluster managers list -o json",
	}
	c.flags(cluster)
	status := &cobra.Command{
		Use:     "status",
		Short:   "Show every manager process, NATS server, stream replica set and database (GET /api/v1/cluster)",
		Example: "  flotilla cluster status\n  FLOTILLA_TOKEN=$TOKEN flotilla cluster status --server https://10.77.0.1:7700 --ca-file api-ca.crt",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.showCluster(cmd, func(cl *systemv1.Cluster) *systemv1.Cluster { return cl },
				section{"MANAGERS", managerRows}, section{"BROKERS", brokerRows}, section{"STREAMS", streamRows},
				section{"DATABASES", databaseRows}, section{"WARNINGS", warningRows})
		},
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the manager processes (every service of every host) and whether they are healthy",
		Example: "  flotilla cluster managers list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.showCluster(cmd, func(cl *systemv1.Cluster) *systemv1.Cluster {
				return &systemv1.Cluster{Time: cl.GetTime(), Managers: cl.GetManagers()}
			}, section{"", managerRows})
		},
	}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Take a host's managers (or one manager) that are gone off the list, before their heartbeats expire",
		Long: `Take managers that are gone off the cluster's list at once, rather than when
their heartbeats expire (30 s). NAME is a host (every manager listed under
it) or one manager's key (<service>.<host>.<process id>). A manager seen in
the last 15 s is running and is refused: stop its services first.`,
		Example: `  # h3 was shut down for good:
  flotilla cluster managers remove h3 --server https://flotilla.example:7700 --ca-file ca.crt`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, format, err := c.start(cmd)
			if err != nil {
				return err
			}
			var resp systemv1.RemoveManagersResponse
			if err := s.call(cmd.Context(), http.MethodDelete, "/api/v1/cluster/managers/"+url.PathEscape(args[0]), nil, &resp); err != nil {
				return err
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, &resp)
			}
			return printSections(cmd.OutOrStdout(), &systemv1.Cluster{Time: timestamppb.Now(), Managers: resp.GetRemoved()},
				section{"REMOVED", managerRows})
		},
	}
	managers := &cobra.Command{Use: "managers", Short: "The manager processes: list them, remove those that are gone",
		Example: "  flotilla cluster managers list\n  flotilla cluster managers remove h3"}
	managers.AddCommand(list, remove)
	cluster.AddCommand(status, managers, newBrokers(c))
	return cluster
}

// newBrokers is `flotilla cluster brokers`: the NATS servers, listed through
// the API and removed from JetStream through the NATS system account.
func newBrokers(c *clientOptions) *cobra.Command {
	brokers := &cobra.Command{Use: "brokers", Short: "The NATS servers: list them, remove one that is gone",
		Example: "  flotilla cluster brokers list"}
	brokers.AddCommand(&cobra.Command{
		Use:     "list",
		Short:   "List the NATS servers (meta leader, health) and every stream's replicas",
		Example: "  flotilla cluster brokers list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.showCluster(cmd, func(cl *systemv1.Cluster) *systemv1.Cluster {
				return &systemv1.Cluster{Time: cl.GetTime(), Brokers: cl.GetBrokers(), Streams: cl.GetStreams(), Warnings: cl.GetWarnings()}
			}, section{"", brokerRows}, section{"STREAMS", streamRows}, section{"WARNINGS", warningRows})
		},
	})
	var natsURL, creds, natsCA string
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a NATS server that is gone from JetStream, so its stream replicas are placed on the others",
		Long: `Remove the NATS server NAME (its server_name) from the JetStream meta group: the
streams that had a replica on it get one on another server. Do it once the server
is stopped for good (a server that comes back under the same name rejoins as new).
It speaks to the NATS servers directly as the system account's user: the
system.creds that flotilla admin bus-credentials writes beside the services'
credentials. To add a server back, see docs/ha.md.`,
		Example: `  flotilla cluster brokers remove h3 --nats tls://10.77.0.11:4222 \
    --creds /etc/flotilla/bus/system.creds --nats-ca-file /etc/flotilla/nats-ca.crt`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if creds == "" {
				return errors.New("--creds: is required: the NATS system account's credentials (system.creds from flotilla admin bus-credentials)")
			}
			// Credentials that may not ask the server get no answer, only
			// the server's permissions violation: it ends the wait at once,
			// as the context's cause.
			ctx, refuse := context.WithCancelCause(cmd.Context())
			defer refuse(nil)
			opts := []nats.Option{nats.UserCredentials(creds), nats.Name("flotilla cluster brokers remove"), nats.Timeout(10 * time.Second),
				nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
					if errors.Is(err, nats.ErrPermissionViolation) {
						refuse(err)
					}
				})}
			if natsCA != "" {
				tlsConfig, err := natsx.ClientTLS(natsCA, "", "")
				if err != nil {
					return fmt.Errorf("--nats-ca-file: %w", err)
				}
				opts = append(opts, nats.Secure(tlsConfig))
			}
			nc, err := nats.Connect(natsURL, opts...)
			if err != nil {
				return fmt.Errorf("connect to %s: %w", natsURL, err)
			}
			defer nc.Close()
			if err := removeBroker(ctx, nc, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s from JetStream; its stream replicas are placed on the other servers\n", args[0])
			return nil
		},
	}
	remove.Flags().StringVar(&natsURL, "nats", "nats://127.0.0.1:4222", "a NATS server of the cluster (comma-separated for several)")
	remove.Flags().StringVar(&creds, "creds", "", "the NATS system account's credentials (system.creds)")
	remove.Flags().StringVar(&natsCA, "nats-ca-file", "", "the CA to verify TLS servers with (tls:// URLs)")
	brokers.AddCommand(remove)
	return brokers
}

// removeBroker asks the JetStream meta leader to remove the server named
// name from the meta group ($JS.API.SERVER.REMOVE, system account only).
// A ctx cancelled with a permissions violation as its cause is the server
// refusing the request's subject, which no answer follows.
func removeBroker(ctx context.Context, nc *nats.Conn, name string) error {
	req, _ := json.Marshal(map[string]string{"peer": name})
	// Only the JetStream meta leader answers: while the servers left elect
	// one (the gone server may have led), ask again, for a minute.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var msg *nats.Msg
	for {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		msg, err = nc.RequestWithContext(rctx, "$JS.API.SERVER.REMOVE", req)
		rcancel()
		if err == nil {
			break
		}
		if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
			return fmt.Errorf("remove %s: the server refused these credentials (%w): --creds must be the system account's (system.creds)", name, cause)
		}
		if ctx.Err() != nil || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)) {
			return fmt.Errorf("remove %s: %w (are these the system account's credentials, and is JetStream clustered?)", name, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	var resp struct {
		Success bool
		Error   *struct {
			Code        int
			Description string
		}
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("remove %s: %s (%d)", name, resp.Error.Description, resp.Error.Code)
	}
	if !resp.Success {
		return fmt.Errorf("remove %s: the server did not say it succeeded", name)
	}
	return nil
}

// section is one table of the cluster status: its title ("" for none)
// and its header and rows.
type section struct {
	title string
	rows  func(*systemv1.Cluster) [][]string
}

// showCluster asks for the cluster status and prints the part pick keeps,
// as JSON or as the tables of sections.
func (c *clientOptions) showCluster(cmd *cobra.Command, pick func(*systemv1.Cluster) *systemv1.Cluster, sections ...section) error {
	s, format, err := c.start(cmd)
	if err != nil {
		return err
	}
	cl := &systemv1.Cluster{}
	if err := s.call(cmd.Context(), http.MethodGet, "/api/v1/cluster", nil, cl); err != nil {
		return err
	}
	cl = pick(cl)
	if format != formatTable {
		return writeMessage(cmd.OutOrStdout(), format, cl)
	}
	return printSections(cmd.OutOrStdout(), cl, sections...)
}

func printSections(w io.Writer, cl *systemv1.Cluster, sections ...section) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for i, s := range sections {
		rows := s.rows(cl)
		if s.title == "WARNINGS" && len(rows) == 0 {
			continue
		}
		if i > 0 {
			fmt.Fprintln(tw)
		}
		if s.title != "" {
			fmt.Fprintln(tw, s.title)
		}
		for _, r := range rows {
			fmt.Fprintln(tw, strings.Join(r, "\t"))
		}
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func managerRows(cl *systemv1.Cluster) [][]string {
	rows := [][]string{{"NAME", "SERVICE", "HOST", "VERSION", "PID", "HEALTHY", "LAST SEEN", "READY"}}
	now := cl.GetTime().AsTime()
	for _, m := range cl.GetManagers() {
		ago := now.Sub(m.GetLastSeenTime().AsTime()).Round(100 * time.Millisecond)
		rows = append(rows, []string{m.GetName(), m.GetService(), m.GetHost(), m.GetVersion(), strconv.Itoa(int(m.GetPid())),
			yesNo(m.GetHealthy()), max(ago, 0).String() + " ago", readiness(m)})
	}
	return rows
}

// readiness says whether a manager's service is ready, as of its last
// heartbeat, and if not why, and whether it stepped out of its queue groups.
func readiness(m *systemv1.Manager) string {
	switch {
	case m.GetNotReady() == "":
		return "yes"
	case m.GetSteppedOut():
		return "no, out of its queue groups: " + m.GetNotReady()
	}
	return "no: " + m.GetNotReady()
}

func brokerRows(cl *systemv1.Cluster) [][]string {
	rows := [][]string{{"NAME", "META LEADER", "HEALTHY", "VERSION", "URL", "MESSAGE"}}
	for _, b := range cl.GetBrokers() {
		rows = append(rows, []string{b.GetName(), yesNo(b.GetMetaLeader()), yesNo(b.GetHealthy()), dash(b.GetVersion()), dash(b.GetUrl()), b.GetMessage()})
	}
	return rows
}

func streamRows(cl *systemv1.Cluster) [][]string {
	rows := [][]string{{"STREAM", "LEADER", "MESSAGES", "REPLICAS (current, lag, active)"}}
	for _, s := range cl.GetStreams() {
		var reps []string
		for _, r := range s.GetReplicas() {
			state := "current"
			switch {
			case r.GetOffline():
				state = "offline"
			case !r.GetCurrent():
				state = "behind"
			}
			reps = append(reps, fmt.Sprintf("%s (%s, lag %d, %v ago)", r.GetName(), state, r.GetLag(), r.GetActive().AsDuration().Round(time.Millisecond)))
		}
		rows = append(rows, []string{s.GetName(), dash(s.GetLeader()), strconv.FormatUint(s.GetMessages(), 10), dash(strings.Join(reps, ", "))})
	}
	return rows
}

func databaseRows(cl *systemv1.Cluster) [][]string {
	rows := [][]string{{"NAME", "ROLE", "STATE", "HOST", "LAG", "HEALTHY", "MESSAGE"}}
	for _, d := range cl.GetDatabases() {
		host := d.GetHost()
		if host != "" && d.GetPort() != 0 {
			host += ":" + strconv.Itoa(int(d.GetPort()))
		}
		lag := "-"
		if d.LagBytes != nil {
			lag = strconv.FormatInt(d.GetLagBytes(), 10) + " B"
		}
		rows = append(rows, []string{d.GetName(), d.GetRole(), dash(d.GetState()), dash(host), lag, yesNo(d.GetHealthy()), d.GetMessage()})
	}
	return rows
}

func warningRows(cl *systemv1.Cluster) [][]string {
	var rows [][]string
	for _, w := range cl.GetWarnings() {
		rows = append(rows, []string{"- " + w})
	}
	return rows
}

func dash(s string) string { return cmp.Or(s, "-") }
