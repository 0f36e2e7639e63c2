package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// Limits of the log endpoint.
const (
	defaultLogPageSize = 500
	maxLogPageSize     = 5000
	// maxLogPageBytes ends a page before its text reaches 1 MiB (it holds
	// at least one line), so a page fits a gRPC message.
	maxLogPageBytes = 1 << 20
	// defaultFollowLines and maxFollowLines: the newest lines a follow
	// starts with.
	defaultFollowLines = 200
	maxFollowLines     = 10000
)

// Log orders.
const (
	orderAsc  = "asc"
	orderDesc = "desc"
)

// logQuery is a checked ListInstanceLogsRequest.
type logQuery struct {
	id    string
	size  int
	desc  bool
	since time.Time // zero: from the oldest line kept
	// from is where the page token says to go on: for asc the first
	// stream sequence to read, for desc the stream sequence to read below.
	from uint64
}

// checkLogQuery validates a request, naming the field and the rule.
func checkLogQuery(r *inventoryv1.ListInstanceLogsRequest) (logQuery, error) {
	q := logQuery{id: r.GetId(), size: int(r.GetPageSize())}
	if err := apierr.CheckID("id", q.id); err != nil {
		return q, err
	}
	if q.size < 0 || q.size > maxLogPageSize {
		return q, apierr.Invalid("pageSize", "%d is out of range: must be between 1 and %d (0 means %d)", q.size, maxLogPageSize, defaultLogPageSize)
	}
	if q.size == 0 {
		q.size = defaultLogPageSize
	}
	switch r.GetOrder() {
	case "", orderAsc:
	case orderDesc:
		q.desc = true
	default:
		return q, apierr.Invalid("order", "%q is not an order: must be %q (oldest first, the default) or %q (newest first)", r.GetOrder(), orderAsc, orderDesc)
	}
	if v := r.GetSince(); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return q, apierr.Invalid("since", "%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", v)
		}
		q.since = t
	}
	if v := r.GetPageToken(); v != "" {
		from, err := decodeLogToken(v, q.desc)
		if err != nil {
			return q, err
		}
		q.from = from
	}
	if r.GetLines() != 0 && !r.GetFollow() {
		return q, apierr.Invalid("lines", "applies only with follow=true: page with pageSize, and use order=desc for the newest lines")
	}
	if r.GetAfter() != 0 {
		return q, apierr.Invalid("after", "applies only to a follow (follow=true): page with pageToken")
	}
	return q, nil
}

// A page token is "asc:<seq>" or "desc:<seq>" (base64url): where the next
// page starts in the stream, and the order it was issued for.
func logToken(desc bool, seq uint64) string {
	order := orderAsc
	if desc {
		order = orderDesc
	}
	return base64.RawURLEncoding.EncodeToString([]byte(order + ":" + strconv.FormatUint(seq, 10)))
}

func decodeLogToken(tok string, desc bool) (uint64, error) {
	bad := apierr.Invalid("pageToken", "is not a token from a previous response")
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, bad
	}
	order, num, ok := strings.Cut(string(raw), ":")
	seq, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil || seq == 0 || (order != orderAsc && order != orderDesc) {
		return 0, bad
	}
	if want := map[bool]string{false: orderAsc, true: orderDesc}[desc]; order != want {
		return 0, apierr.Invalid("pageToken", "was issued for order=%s: ask with the same order", order)
	}
	return seq, nil
}

// ListInstanceLogs pages through an instance's retained log lines.
func (s instanceServer) ListInstanceLogs(ctx context.Context, r *inventoryv1.ListInstanceLogsRequest) (*inventoryv1.ListInstanceLogsResponse, error) {
	if r.GetFollow() {
		return nil, apierr.GRPCStatus(ctx, s.g.log, apierr.Invalid("follow", "server-sent events are served over REST only"))
	}
	resp, err := s.g.listLogs(ctx, r)
	if err != nil {
		return nil, apierr.GRPCStatus(ctx, s.g.log, err)
	}
	return resp, nil
}

func (g *Gateway) listLogs(ctx context.Context, r *inventoryv1.ListInstanceLogsRequest) (*inventoryv1.ListInstanceLogsResponse, error) {
	q, err := checkLogQuery(r)
	if err != nil {
		return nil, err
	}
	if _, err := call(ctx, g, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: q.id}); err != nil {
		return nil, err
	}
	stream, err := g.js.Stream(ctx, subjects.AgentLogsStream)
	if err != nil {
		return nil, apierr.Unavailable("the agent log stream is not available: %v", err)
	}
	lr := logReader{stream: stream, subject: subjects.AgentLogs(q.id)}
	if q.desc {
		return lr.newest(ctx, q)
	}
	return lr.oldest(ctx, q)
}

// logReader reads one instance's lines from the agent log stream.
type logReader struct {
	stream  jetstream.Stream
	subject string
}

// read hands the instance's lines from the stream sequence start (or,
// with start 0, from the time since) to each, in order, until it returns
// false or nothing more is stored.
func (lr logReader) read(ctx context.Context, start uint64, since time.Time, each func(*inventoryv1.InstanceLogLine, uint64) bool) error {
	return bus.ReadSubject(ctx, lr.stream, lr.subject, start, since, func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		l, ok := decodeLogLine(m.Data(), meta.Sequence.Stream)
		if !ok {
			return true
		}
		return each(l, meta.NumPending)
	})
}

// oldest answers an ascending page: from the token's sequence, or since,
// or the oldest line kept.
func (lr logReader) oldest(ctx context.Context, q logQuery) (*inventoryv1.ListInstanceLogsResponse, error) {
	resp := &inventoryv1.ListInstanceLogsResponse{Lines: []*inventoryv1.InstanceLogLine{}}
	size := 0
	err := lr.read(ctx, q.from, q.since, func(l *inventoryv1.InstanceLogLine, pending uint64) bool {
		if size += len(l.GetText()); len(resp.Lines) > 0 && size > maxLogPageBytes {
			resp.NextPageToken = logToken(false, l.GetCursor())
			return false
		}
		resp.Lines = append(resp.Lines, l)
		if len(resp.Lines) == q.size {
			if pending > 0 {
				resp.NextPageToken = logToken(false, l.GetCursor()+1)
			}
			return false
		}
		return true
	})
	return resp, err
}

// newest answers a descending page: the lines below the token's sequence
// (or the newest), back to since.
func (lr logReader) newest(ctx context.Context, q logQuery) (*inventoryv1.ListInstanceLogsResponse, error) {
	page, next, err := lr.newestLines(ctx, q)
	if err != nil {
		return nil, err
	}
	resp := &inventoryv1.ListInstanceLogsResponse{Lines: page}
	if next > 0 {
		resp.NextPageToken = logToken(true, next)
	}
	return resp, nil
}

// newestLines returns a descending page, newest first, and the stream
// sequence a next page reads below (0: none): it reads the stream
// backwards until it has a page and one line more (to know whether a next
// page exists), or reaches a line stored before since.
func (lr logReader) newestLines(ctx context.Context, q logQuery) ([]*inventoryv1.InstanceLogLine, uint64, error) {
	page := []*inventoryv1.InstanceLogLine{}
	var next uint64
	size := 0
	err := bus.ReadBackwards(ctx, lr.stream, lr.subject, q.from, uint64(max(4*q.size, 1024)), func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
		if meta.Timestamp.Before(q.since) {
			return false // what lies before is older still
		}
		l, ok := decodeLogLine(m.Data(), meta.Sequence.Stream)
		if !ok {
			return true
		}
		if len(page) == q.size || (len(page) > 0 && size+len(l.GetText()) > maxLogPageBytes) {
			next = page[len(page)-1].GetCursor()
			return false
		}
		size += len(l.GetText())
		page = append(page, l)
		return true
	})
	if err != nil {
		return nil, 0, err
	}
	return page, next, nil
}

// decodeLogLine decodes a line stored at the stream sequence cursor (an
// agentv1.LogLine) for the API.
func decodeLogLine(data []byte, cursor uint64) (*inventoryv1.InstanceLogLine, bool) {
	l := &agentv1.LogLine{}
	if proto.Unmarshal(data, l) != nil {
		return nil, false
	}
	return &inventoryv1.InstanceLogLine{Seq: l.GetSeq(), Time: timestamppb.New(l.GetTime().AsTime()), Source: l.GetSource(), Text: l.GetText(),
		Stderr: l.GetStderr(), Cursor: cursor}, true
}

// decodeLogMsg decodes a line read from the stream.
func decodeLogMsg(m jetstream.Msg) (*inventoryv1.InstanceLogLine, bool) {
	meta, err := m.Metadata()
	if err != nil {
		return nil, false
	}
	return decodeLogLine(m.Data(), meta.Sequence.Stream)
}

// instanceLogs answers GET /api/v1/instances/{id}/logs: with follow=true
// itself, as server-sent events; otherwise through the REST mapping of
// ListInstanceLogs, like every other route.
func (g *Gateway) instanceLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("follow") != "true" {
		if _, err := lastEventID(r, false); err != nil {
			g.writeError(w, r, err)
			return
		}
		g.mux.ServeHTTP(w, r)
		return
	}
	req := &inventoryv1.ListInstanceLogsRequest{Id: r.PathValue("id"), Since: q.Get("since"), Follow: true}
	if v := q.Get("lines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxFollowLines {
			g.writeError(w, r, apierr.Invalid("lines", "must be a number between 1 and %d", maxFollowLines))
			return
		}
		req.Lines = int32(n)
	}
	for _, p := range []string{"pageSize", "pageToken", "order"} {
		if q.Has(p) {
			g.writeError(w, r, apierr.Invalid(p, "does not apply with follow=true: a follow starts with the newest lines (lines) or at since"))
			return
		}
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			g.writeError(w, r, apierr.Invalid("after", "%q is not a line's cursor: a follow resumes after the cursor of the last line it got", v))
			return
		}
		req.After = n
	}
	// A reconnecting EventSource says where it got to, which comes before
	// the after of the URL it opened.
	last, err := lastEventID(r, true)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	if last > 0 {
		req.After = last
	}
	ctx := r.Context()
	cons, err := g.openFollow(ctx, req)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	// An event's id is the line's stream sequence, after which a follow
	// resumes (Last-Event-ID): a reconnecting client misses no line and
	// gets none twice.
	g.serveSSE(ctx, w, r, cons, func(m jetstream.Msg) (sseEvent, bool) {
		l, ok := decodeLogMsg(m)
		if !ok {
			return sseEvent{}, false
		}
		b, _ := protojson.Marshal(l)
		return sseEvent{id: strconv.FormatUint(l.GetCursor(), 10), event: "log", data: b}, true
	})
}

// FollowInstanceLogs is the gRPC form of a follow.
func (s instanceServer) FollowInstanceLogs(r *inventoryv1.ListInstanceLogsRequest, stream inventoryv1.InstanceService_FollowInstanceLogsServer) error {
	ctx := stream.Context()
	for field, set := range map[string]bool{"pageSize": r.GetPageSize() != 0, "pageToken": r.GetPageToken() != "", "order": r.GetOrder() != ""} {
		if set {
			return apierr.GRPCStatus(ctx, s.g.log, apierr.Invalid(field, "does not apply to a follow: it starts with the newest lines (lines) or at since"))
		}
	}
	cons, err := s.g.openFollow(ctx, r)
	if err != nil {
		return apierr.GRPCStatus(ctx, s.g.log, err)
	}
	ctx, release := s.g.tokens.hold(ctx)
	defer release()
	err = followLines(ctx, cons, stream.Send, nil)
	switch why := streamEnded(ctx); {
	case errors.Is(why, errTokenWithdrawn):
		return apierr.GRPCStatus(ctx, s.g.log, apierr.Unauthenticated("%v", why))
	case why != nil:
		return apierr.GRPCStatus(ctx, s.g.log, apierr.Unavailable("%v", why))
	}
	if ctx.Err() != nil {
		return nil // the client went away
	}
	return err
}

// openFollow checks a follow's instance, since and lines, and opens an
// ordered consumer of its log lines starting after the line whose cursor
// (stream sequence) is r.after (a resumed follow), else at since, or at
// the oldest of the newest lines (200 when lines is 0), then going on with
// new ones.
func (g *Gateway) openFollow(ctx context.Context, r *inventoryv1.ListInstanceLogsRequest) (jetstream.Consumer, error) {
	after := r.GetAfter()
	id := r.GetId()
	if err := apierr.CheckID("id", id); err != nil {
		return nil, err
	}
	var since time.Time
	if v := r.GetSince(); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, apierr.Invalid("since", "%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", v)
		}
		since = t
	}
	n := int(r.GetLines())
	if n < 0 || n > maxFollowLines {
		return nil, apierr.Invalid("lines", "must be a number between 1 and %d (0 means %d)", maxFollowLines, defaultFollowLines)
	}
	if n == 0 {
		n = defaultFollowLines
	}
	if _, err := call(ctx, g, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}); err != nil {
		return nil, err
	}
	stream, err := g.js.Stream(ctx, subjects.AgentLogsStream)
	if err != nil {
		return nil, apierr.Unavailable("the agent log stream is not available: %v", err)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.AgentLogs(id)}}
	switch {
	case after > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	case !since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	default:
		// Start n lines before the end: at the oldest of the newest n.
		page, _, err := logReader{stream: stream, subject: subjects.AgentLogs(id)}.newestLines(ctx, logQuery{id: id, size: n})
		if err != nil {
			return nil, err
		}
		if len(page) > 0 {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, page[len(page)-1].GetCursor()
		} else {
			cfg.DeliverPolicy = jetstream.DeliverNewPolicy
		}
	}
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("log consumer: %w", err)
	}
	return cons, nil
}

// followLines hands each of the consumer's lines to send, the backlog
// first, then new lines as they are stored, and calls keepalive (when not
// nil) every 15 s without a line, until ctx ends or either fails.
func followLines(ctx context.Context, cons jetstream.Consumer, send func(*inventoryv1.InstanceLogLine) error, keepalive func() error) error {
	return follow(ctx, cons, func(m jetstream.Msg) error {
		if l, ok := decodeLogMsg(m); ok {
			return send(l)
		}
		return nil
	}, keepalive)
}

// follow hands each of the consumer's messages to send, the backlog first,
// then new ones as they are stored, and calls keepalive (when not nil)
// every sseKeepAlive without a message, until ctx ends or either fails.
func follow(ctx context.Context, cons jetstream.Consumer, send func(jetstream.Msg) error, keepalive func() error) error {
	// One iterator serves the backlog and then new messages.
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	defer msgs.Stop()
	next := make(chan jetstream.Msg)
	go func() {
		defer close(next)
		for {
			m, err := msgs.Next()
			if err != nil {
				return
			}
			select {
			case next <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	tick := time.NewTicker(sseKeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if keepalive != nil {
				if err := keepalive(); err != nil {
					return err
				}
			}
		case m, ok := <-next:
			if !ok {
				return nil
			}
			if err := send(m); err != nil {
				return err
			}
		}
	}
}
