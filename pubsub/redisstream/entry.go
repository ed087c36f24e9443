package redisstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// Metadata keys that this backend writes on the dead-letter copy of a stream
// entry it could not decode. The copy also carries Watermill's poison keys
// (reason_poisoned, topic_poisoned, handler_poisoned, subscriber_poisoned).
const (
	// KeyEntryID is the ID of the stream entry ("1700000000000-0").
	KeyEntryID = "retry_redis_entry_id"
	// KeyBase64Fields lists, comma-separated, the fields of the entry
	// whose values were not valid UTF-8 and are base64 (standard encoding)
	// in the payload.
	KeyBase64Fields = "retry_redis_base64_fields"
)

// Private metadata keys, set by the unmarshaller and removed before a
// message leaves the subscriber.
const (
	// entryIDKey carries the stream entry ID of every message read.
	entryIDKey = "_retry_redis_entry_id"
	// markerKey marks a message made up for an entry that could not be
	// decoded; its value is the subscriber's nonce, so that a decoded
	// message cannot pose as one.
	markerKey = "_retry_redis_undecodable"
	// reasonKey is why the entry could not be decoded.
	reasonKey = "_retry_redis_undecodable_reason"
)

// entryIDField is the field under which [streamClient] passes an entry's
// ID to the unmarshaller. No producer writes it: a field of that name in an
// entry is overwritten.
const entryIDField = "\x00retry_redis_entry_id"

// streamClient is the client handed to watermill-redisstream. Its Close does
// nothing, because watermill-redisstream closes the client it was given when
// a publisher or subscriber closes, and the client is shared. Its reads add
// each entry's ID to the entry's fields, where [unmarshaller] finds it:
// Watermill's Unmarshaller sees only the fields.
type streamClient struct {
	redis.UniversalClient
}

// Close does not close the shared client.
func (streamClient) Close() error { return nil }

// XReadGroup reads like the wrapped client, then tags every entry with its
// ID.
func (c streamClient) XReadGroup(ctx context.Context, a *redis.XReadGroupArgs) *redis.XStreamSliceCmd {
	cmd := c.UniversalClient.XReadGroup(ctx, a)
	for _, xs := range cmd.Val() {
		tagIDs(xs.Messages)
	}
	return cmd
}

// XClaim claims like the wrapped client, then tags every entry with its ID.
func (c streamClient) XClaim(ctx context.Context, a *redis.XClaimArgs) *redis.XMessageSliceCmd {
	cmd := c.UniversalClient.XClaim(ctx, a)
	tagIDs(cmd.Val())
	return cmd
}

func tagIDs(msgs []redis.XMessage) {
	for i := range msgs {
		if msgs[i].Values == nil {
			msgs[i].Values = map[string]any{}
		}
		msgs[i].Values[entryIDField] = msgs[i].ID
	}
}

// unmarshaller decodes entries with Watermill's default unmarshaller. An
// entry it cannot decode does not become an error (which would end the
// subscription) but a marker message, that the subscriber dead-letters.
type unmarshaller struct {
	nonce string
}

// Unmarshal never fails.
func (u unmarshaller) Unmarshal(values map[string]any) (msg *message.Message, err error) {
	id, _ := values[entryIDField].(string)
	delete(values, entryIDField)
	defer func() {
		// The default unmarshaller asserts field types; never let an
		// entry crash the process.
		if p := recover(); p != nil {
			msg, err = u.marker(id, values, fmt.Errorf("panic: %v", p)), nil
		}
	}()
	msg, err = wmredis.DefaultMarshallerUnmarshaller{}.Unmarshal(values)
	if err != nil {
		return u.marker(id, values, err), nil
	}
	if msg.Metadata == nil { // metadata encoded as msgpack nil
		msg.Metadata = message.Metadata{}
	}
	for _, k := range [...]string{markerKey, reasonKey} {
		delete(msg.Metadata, k)
	}
	msg.Metadata.Set(entryIDKey, id)
	return msg, nil
}

// marker makes the stand-in for an entry that could not be decoded: a new
// UUID, the entry's fields as JSON for payload.
func (u unmarshaller) marker(id string, values map[string]any, cause error) *message.Message {
	payload, b64 := fieldsJSON(values)
	msg := message.NewMessage(watermill.NewUUID(), payload)
	msg.Metadata.Set(markerKey, u.nonce)
	msg.Metadata.Set(reasonKey, cause.Error())
	msg.Metadata.Set(entryIDKey, id)
	if len(b64) > 0 {
		msg.Metadata.Set(KeyBase64Fields, strings.Join(b64, ","))
	}
	return msg
}

// fieldsJSON encodes an entry's fields as one JSON object of strings. Values
// that are not valid UTF-8 are base64, and their names returned, so that
// nothing is lost.
func fieldsJSON(values map[string]any) ([]byte, []string) {
	fields := make(map[string]string, len(values))
	var b64 []string
	for k, v := range values {
		s, ok := v.(string)
		if !ok {
			s = fmt.Sprint(v)
		}
		if !utf8.ValidString(s) {
			s = base64.StdEncoding.EncodeToString([]byte(s))
			b64 = append(b64, k)
		}
		fields[k] = s
	}
	sort.Strings(b64)
	out, err := json.Marshal(fields)
	if err != nil { // a map of strings always encodes
		out = []byte("{}")
	}
	return out, b64
}
