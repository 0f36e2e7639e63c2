package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	eventsv1 "flotilla.dev/flotilla/api/gen/flotilla/events/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// logsCommand is `flotilla instances logs NAME [-f]`.
func logsCommand(opts *clientOptions) *cobra.Command {
	var (
		follow bool
		tail   int
		since  string
	)
	cmd := &cobra.Command{
		Use:   "logs NAME|ID",
		Short: "Print an instance's log output (agent, setup actions, node software); -f follows it",
		Long: `Print the log lines Flotilla keeps for an instance, oldest first: the
agent's, its setup actions' and the node software's output. --tail N prints
the newest N; -f goes on printing new lines as they come (server-sent
events) until interrupted, starting with the newest 200 (or --tail, or
--since). -o json prints one JSON object per line.`,
		Example: `  flotilla instances logs web-1
  flotilla instances logs web-1 --tail 50
  flotilla instances logs web-1 -f --since 10m`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: instances.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON := opts.output == formatJSON
			if opts.output != "" && !asJSON && opts.output != formatTable {
				return fmt.Errorf("--output: logs print as text (table) or json, not %q", opts.output)
			}
			q, err := sinceQuery(since)
			if err != nil {
				return err
			}
			s, err := opts.session()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			in, err := s.find(ctx, instances, args[0])
			if err != nil {
				return err
			}
			path := instances.path() + "/" + stringField(in, "id") + "/logs"
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			print := func(l *inventoryv1.InstanceLogLine) {
				if asJSON {
					writeJSONLine(out, l)
					return
				}
				fmt.Fprintf(out, "%s %-5s %s\n", l.GetTime().AsTime().Local().Format("2006-01-02T15:04:05.000Z07:00"),
					vocab.LogSource(l.GetSource(), l.GetStderr()), l.GetText())
			}
			if follow {
				q.Set("follow", "true")
				if tail > 0 {
					q.Set("lines", strconv.Itoa(tail))
				}
				return followEvents(ctx, s, cmd.ErrOrStderr(), path+"?"+q.Encode(), "log", func(l *inventoryv1.InstanceLogLine) {
					print(l)
					out.Flush()
				})
			}
			if tail > 0 {
				q.Set("order", "desc")
				q.Set("pageSize", strconv.Itoa(tail))
				page := &inventoryv1.ListInstanceLogsResponse{}
				if err := s.call(ctx, http.MethodGet, path+"?"+q.Encode(), nil, page); err != nil {
					return err
				}
				lines := page.GetLines()
				slices.Reverse(lines)
				for _, l := range lines {
					print(l)
				}
				return nil
			}
			q.Set("pageSize", "5000")
			for {
				page := &inventoryv1.ListInstanceLogsResponse{}
				if err := s.call(ctx, http.MethodGet, path+"?"+q.Encode(), nil, page); err != nil {
					return err
				}
				for _, l := range page.GetLines() {
					print(l)
				}
				if page.GetNextPageToken() == "" {
					return nil
				}
				q.Set("pageToken", page.GetNextPageToken())
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "go on printing new lines until interrupted")
	cmd.Flags().IntVar(&tail, "tail", 0, "print only the newest N lines (with -f: start with them; 1-10000)")
	cmd.Flags().StringVar(&since, "since", "", "only lines since a time (RFC 3339) or for a while (10m, 2h)")
	return cmd
}

// sinceQuery is the query of --since: since=<RFC 3339 time>, from an RFC
// 3339 time or a duration back from now; empty without it.
func sinceQuery(v string) (url.Values, error) {
	q := url.Values{}
	return q, setTimeQuery(q, "since", v)
}

// setTimeQuery sets q's param to the time of its flag's value v: an RFC
// 3339 time, or a duration back from now (10m, 2h); nothing when v is empty.
func setTimeQuery(q url.Values, param, v string) error {
	if v == "" {
		return nil
	}
	if d, err := parseDuration(v); err == nil {
		q.Set(param, time.Now().Add(-d).UTC().Format(time.RFC3339))
	} else if t, err := time.Parse(time.RFC3339, v); err == nil {
		q.Set(param, t.UTC().Format(time.RFC3339))
	} else {
		return fmt.Errorf("--%s: %q is neither an RFC 3339 time (2026-01-02T15:04:05Z) nor a duration back from now (10m, 24h, 7d)", param, v)
	}
	return nil
}

// followEvents reads the server-sent events of path, handing the data of each
// of the kind named event to each, decoded as a T, until the context ends
// (then it returns nil). When the stream ends or breaks (a gateway stopped,
// a proxy's connection cut) it says so on notice and follows again after
// the last event it handed over (lastEventId), every reconnectMax at the
// latest, until interrupted; an answer that retrying will not change (the
// session ended, the instance deleted) ends it with that error, as does a
// first request that fails.
func followEvents[T any, PT interface {
	*T
	proto.Message
}](ctx context.Context, s *session, notice io.Writer, path, event string, each func(PT)) error {
	var last string // the id of the last event handed over
	wait := reconnectMin
	for first := true; ; first = false {
		target := path
		if last != "" {
			target += "&lastEventId=" + url.QueryEscape(last)
		}
		got, err := followOnce(ctx, s, target, event, &last, each)
		switch {
		case ctx.Err() != nil:
			return nil
		case first && !errors.Is(err, errStreamEnded), !retryable(err):
			return err // the first request refused or unanswered, or a refusal
		}
		if got > 0 {
			wait = reconnectMin
		}
		fmt.Fprintf(notice, "flotilla: %v; following again in %v\n", err, wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, reconnectMax)
	}
}

// A follow that broke is asked again after reconnectMin, then twice as
// long each time nothing came, up to reconnectMax.
const (
	reconnectMin = 500 * time.Millisecond
	reconnectMax = 5 * time.Second
)

// errStreamEnded is a follow's stream ending (the server closed it, or
// the connection broke) rather than a refusal.
var errStreamEnded = errors.New("the stream ended")

// retryable says a follow that ended with err may be asked again: any
// stream that ended, no answer (the server unreachable), or an answer
// saying the server cannot serve now (5xx, 429); not a refusal of the
// request itself.
func retryable(err error) bool {
	var e *apiError
	if errors.As(err, &e) {
		return e.Status >= 500 || e.Status == http.StatusTooManyRequests
	}
	return err != nil
}

// followOnce reads one follow's stream until it ends, handing each event
// over and keeping its id in last; it says how many it handed over. The
// stream's end is an error wrapping errStreamEnded, with the server's last
// comment other than a keep-alive: why it closed it.
func followOnce[T any, PT interface {
	*T
	proto.Message
}](ctx context.Context, s *session, path, event string, last *string, each func(PT)) (int, error) {
	resp, err := s.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	var kind, id, why string
	var data strings.Builder
	got := 0
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if kind == event && data.Len() > 0 {
				m := PT(new(T))
				if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(data.String()), m); err == nil {
					each(m)
					got++
				}
				if id != "" {
					*last = id
				}
			}
			kind, id = "", ""
			data.Reset()
		case strings.HasPrefix(line, "event:"):
			kind = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimSpace(strings.TrimPrefix(line, "id:"))
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		case strings.HasPrefix(line, ":") && strings.TrimSpace(line[1:]) != "keep-alive":
			why = strings.TrimSpace(line[1:])
		}
	}
	switch err := sc.Err(); {
	case err != nil:
		return got, fmt.Errorf("follow %ss: %w: %w", event, errStreamEnded, err)
	case why != "":
		return got, fmt.Errorf("follow %ss: %w: the server closed it: %s", event, errStreamEnded, why)
	}
	return got, fmt.Errorf("follow %ss: %w: the server closed it", event, errStreamEnded)
}

// eventsCommand is `flotilla instances events NAME`.
func eventsCommand(opts *clientOptions) *cobra.Command {
	var since string
	cmd := &cobra.Command{
		Use:   "events NAME|ID",
		Short: "Print an instance's timeline: every change and step, oldest first",
		Long: `Print an instance's timeline, replayed from the events stream: created,
each lifecycle action asked, each provisioning step and agent report, running,
failed, deleted. A deleted instance's history is kept: give its id.`,
		Example: `  flotilla instances events web-1
  flotilla instances events web-1 --since 1h -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: instances.completeNames(opts),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := sinceQuery(since)
			if err != nil {
				return err
			}
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			id := args[0]
			if in, err := s.find(ctx, instances, args[0]); err == nil {
				id = stringField(in, "id")
			} else if !isID(id) || !isNotFound(err) {
				return err // a deleted instance's id is still asked
			}
			all := &inventoryv1.ListInstanceEventsResponse{}
			q.Set("pageSize", "10000")
			for {
				page := &inventoryv1.ListInstanceEventsResponse{}
				if err := s.call(ctx, http.MethodGet, instancesPath+"/"+id+"/events?"+q.Encode(), nil, page); err != nil {
					return err
				}
				all.Events = append(all.Events, page.GetEvents()...)
				if page.GetNextPageToken() == "" {
					break
				}
				q.Set("pageToken", page.GetNextPageToken())
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, all)
			}
			return writeTable(cmd.OutOrStdout(), timelineRows(all.GetEvents(), false))
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "only events since a time (RFC 3339) or for a while (10m, 2h)")
	return cmd
}

// feedEntities are the kinds of entity the fleet's event feed serves, as
// --entity names them, and their resources.
var feedEntities = map[string]*resource{"instance": instances, "network": networks, "template": templates, "cloud-account": cloudAccounts, "rollout": rollouts}

// fleetEventsCommand is `flotilla events`: the fleet's event feed.
func fleetEventsCommand(opts *clientOptions) *cobra.Command {
	var (
		entity, since string
		limit         int
		followFeed    bool
	)
	cmd := &cobra.Command{
		Use:   "events [NAME|ID]",
		Short: "Print the fleet's newest events (of instances, or of networks, templates, cloud accounts or rollouts); -f follows new ones",
		Long: `Print the newest events of the fleet, oldest first (GET /api/v1/events): of
every instance (--entity instance, the default), network, template, cloud
account or rollout, or of the one named. -f goes on printing new ones as they happen
(server-sent events) until interrupted; -o json then prints one JSON object
per line. An instance's whole timeline is flotilla instances events NAME.`,
		Example: `  flotilla events --limit 20
  flotilla events -f
  flotilla events --entity network lab -o json
  flotilla events --entity rollout -f                 # each rollout's progress`,
		Args: cobra.MaximumNArgs(1),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if r := feedEntities[entity]; r != nil && len(args) == 0 {
				return r.completeNames(opts)(cmd, args, prefix)
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			r := feedEntities[entity]
			if r == nil {
				return fmt.Errorf("--entity: %q is not instance, network, template, cloud-account or rollout", entity)
			}
			q, err := sinceQuery(since)
			if err != nil {
				return err
			}
			q.Set("entity", strings.ReplaceAll(entity, "-", ""))
			q.Set("limit", strconv.Itoa(limit))
			s, format, err := opts.start(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if len(args) == 1 {
				it, err := s.find(ctx, r, args[0])
				if err != nil {
					return err
				}
				q.Set("id", stringField(it, "id"))
			}
			if followFeed {
				q.Set("follow", "true")
				return followEvents(ctx, s, cmd.ErrOrStderr(), "/api/v1/events?"+q.Encode(), "event", func(e *eventsv1.Event) {
					if format == formatTable {
						row := timelineRows([]*eventsv1.Event{e}, true)[1]
						fmt.Fprintln(cmd.OutOrStdout(), strings.Join(row, "  "))
						return
					}
					writeJSONLine(cmd.OutOrStdout(), e)
				})
			}
			all := &inventoryv1.ListInstanceEventsResponse{}
			if err := s.call(ctx, http.MethodGet, "/api/v1/events?"+q.Encode(), nil, all); err != nil {
				return err
			}
			if format != formatTable {
				return writeMessage(cmd.OutOrStdout(), format, all)
			}
			return writeTable(cmd.OutOrStdout(), timelineRows(all.GetEvents(), true))
		},
	}
	opts.flags(cmd)
	cmd.Flags().StringVar(&entity, "entity", "instance", "the kind of entity: instance, network, template, cloud-account or rollout")
	cmd.Flags().IntVar(&limit, "limit", 50, "how many of the newest events to print (0-1000; with -f: to start with)")
	cmd.Flags().BoolVarP(&followFeed, "follow", "f", false, "go on printing new events until interrupted")
	cmd.Flags().StringVar(&since, "since", "", "only events since a time (RFC 3339) or for a while (10m, 2h)")
	_ = cmd.RegisterFlagCompletionFunc("entity", cobra.FixedCompletions([]string{"instance", "network", "template", "cloud-account", "rollout"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// timelineRows are events as table rows: when, what, who (with named, the
// name of what it was about), and an instance's or a rollout's state after
// it (a rollout's detail: its instances by state).
func timelineRows(events []*eventsv1.Event, named bool) [][]string {
	head := []string{"TIME", "EVENT", "ACTOR", "STATE", "DETAIL"}
	if named {
		head = slices.Insert(head, 2, "NAME")
	}
	rows := [][]string{head}
	for _, e := range events {
		data, _ := e.GetData().UnmarshalNew()
		var state, detail string
		switch d := data.(type) {
		case *inventoryv1.Instance:
			state, detail = d.GetState(), d.GetStateDetail()
			if strings.HasSuffix(e.GetType(), ".progress") {
				detail = d.GetAgentProgress()
			}
		case *inventoryv1.Rollout:
			state, detail = d.GetState(), vocab.RolloutTally(d.GetInstances())
		}
		row := []string{e.GetTime().AsTime().Local().Format("2006-01-02T15:04:05.000Z07:00"),
			strings.TrimPrefix(e.GetType(), "instance."), dash(e.GetActor()), dash(state), dash(detail)}
		if named {
			name := e.GetEntityId()
			if data != nil {
				name = cmp.Or(stringField(data, "name"), name)
			}
			row = slices.Insert(row, 2, name)
		}
		rows = append(rows, row)
	}
	return rows
}

// newCA is `flotilla ca`.
func newCA(opts *clientOptions) *cobra.Command {
	ca := &cobra.Command{
		Use:     "ca",
		Short:   "The fleet CA: its certificate, to verify instances' and agents' certificates with",
		Example: "  flotilla ca cert > fleet-ca.pem",
	}
	opts.flags(ca)
	ca.AddCommand(&cobra.Command{
		Use:   "cert",
		Short: "Print the fleet CA certificate (PEM)",
		Example: `  flotilla ca cert > fleet-ca.pem
  curl --cacert fleet-ca.pem "$(flotilla instances get web-1 -o json | jq -r .addresses.url)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := opts.session()
			if err != nil {
				return err
			}
			pem, err := s.send(cmd.Context(), http.MethodGet, "/api/v1/ca/certificate", nil)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(pem)
			return err
		},
	})
	return ca
}
