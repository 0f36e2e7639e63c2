package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// apiError is an error answer of the REST API: {"code", "reason",
// "message", "field"} and its HTTP status.
type apiError struct {
	Status  int    `json:"-"`
	Code    int32  `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

func (e *apiError) Error() string { return e.Message }

// Reasons of API errors the console acts on (docs/errors.md).
const (
	reasonVersionMismatch        = "version_mismatch"
	reasonPasswordChangeRequired = "password_change_required"
)

// client calls the gateway's REST API in process, as the user whose token
// it holds: every read and change the console makes goes through the same
// handler, authentication and checks as a curl would.
type client struct {
	api   http.Handler
	r     *http.Request // the browser's request: context, client address
	token string
}

var decodeOpts = protojson.UnmarshalOptions{DiscardUnknown: true}

// do sends method path with body (nil, a proto message or any value
// encoding/json takes) and decodes the answer into out (nil, a proto
// message or any value encoding/json fills). An error answer is an
// *apiError.
func (c client) do(method, path string, body, out any) error {
	var data []byte
	switch b := body.(type) {
	case nil:
	case proto.Message:
		var err error
		if data, err = protojson.Marshal(b); err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
	default:
		var err error
		if data, err = json.Marshal(b); err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
	}
	status, answer, _, err := c.raw(method, path, data)
	if err != nil {
		return err
	}
	if status >= 300 {
		e := &apiError{Status: status}
		if json.Unmarshal(answer, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s answered %d", method, path, status)
		}
		return e
	}
	switch o := out.(type) {
	case nil:
		return nil
	case proto.Message:
		if err := decodeOpts.Unmarshal(answer, o); err != nil {
			return fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	default:
		if err := json.Unmarshal(answer, o); err != nil {
			return fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	}
	return nil
}

// raw sends one request and returns the status, body and headers of the
// answer.
func (c client) raw(method, path string, body []byte) (int, []byte, http.Header, error) {
	var rd io.Reader = http.NoBody
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(c.r.Context(), method, path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	req.RemoteAddr, req.Host, req.TLS = c.r.RemoteAddr, c.r.Host, c.r.TLS
	// The client as a trusted proxy forwarded it: the API decides whether
	// to believe it, as for any request.
	for _, v := range c.r.Header.Values("X-Forwarded-For") {
		req.Header.Add("X-Forwarded-For", v)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := &recorder{header: http.Header{}}
	c.api.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.status, rec.body.Bytes(), rec.header, nil
}

// get reads path into out.
func (c client) get(path string, out any) error { return c.do(http.MethodGet, path, nil, out) }

// listPageSize is the page size the console lists with (the API's most).
const listPageSize = "500"

// page is a list answer: ListInstancesResponse and the like.
type page[R any] interface {
	*R
	proto.Message
	GetNextPageToken() string
}

// listAll reads every page of the list endpoint path and returns the items
// of each (items picks them from an answer).
func listAll[R any, P page[R], T any](c client, path string, items func(P) []T) ([]T, error) {
	var out []T
	token := ""
	for range 100000 {
		q := url.Values{"pageSize": {listPageSize}}
		if token != "" {
			q.Set("pageToken", token)
		}
		resp := P(new(R))
		if err := c.get(path+"?"+q.Encode(), resp); err != nil {
			return nil, err
		}
		out = append(out, items(resp)...)
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
	return nil, fmt.Errorf("list %s: paging does not end", path)
}

// recorder is the http.ResponseWriter of an in-process API call.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}
