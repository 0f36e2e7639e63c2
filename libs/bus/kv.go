package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvOperation is the header a key-value bucket's delete and purge markers
// carry.
const kvOperation = "KV-Operation"

// noMessage is JetStream's error code for a message (here: a key) that is
// not there.
const noMessage = 10037

// GetLatest reads key in the key-value bucket from the bucket's stream
// leader, with the revision of that value: what the last acknowledged write
// left. A KeyValue's Get asks with a direct get, which any replica may
// answer, and a replica a moment behind the others answers what the key
// held before: for a record that revokes (the CA's agent certificates) or
// that was just written for immediate use (a join token), that is not good
// enough. A missing or deleted key is jetstream.ErrKeyNotFound.
func GetLatest(ctx context.Context, js jetstream.JetStream, bucket, key string) ([]byte, uint64, error) {
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{"$KV." + bucket + "." + key})
	if err != nil {
		return nil, 0, err
	}
	msg, err := js.Conn().RequestWithContext(ctx, apiPrefix(js)+"STREAM.MSG.GET.KV_"+bucket, req)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s from bucket %s: %w", key, bucket, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Seq     uint64 `json:"seq"`
			Headers []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, 0, fmt.Errorf("read %s from bucket %s: %w", key, bucket, err)
	}
	switch {
	case resp.Error != nil && resp.Error.Code == noMessage:
		return nil, 0, jetstream.ErrKeyNotFound
	case resp.Error != nil:
		return nil, 0, fmt.Errorf("read %s from bucket %s: %s (%d)", key, bucket, resp.Error.Description, resp.Error.Code)
	case resp.Message == nil:
		return nil, 0, fmt.Errorf("read %s from bucket %s: %w", key, bucket, jetstream.ErrInvalidJetStreamResponse)
	}
	if len(resp.Message.Headers) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Headers)
		if err != nil {
			return nil, 0, fmt.Errorf("read %s from bucket %s: %w", key, bucket, err)
		}
		if h.Get(kvOperation) != "" { // a delete or purge marker
			return nil, 0, jetstream.ErrKeyNotFound
		}
	}
	return resp.Message.Data, resp.Message.Seq, nil
}

// apiPrefix is the prefix of js's JetStream API subjects ("$JS.API.").
func apiPrefix(js jetstream.JetStream) string {
	switch o := js.Options(); {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}
