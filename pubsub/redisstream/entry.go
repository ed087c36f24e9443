package redisstream

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"strings"
	"unicode/utf8"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Metadata keys that this backend writes on the dead-letter copy of a stream
// entry it could not decode. The copy also carries Watermill's poison keys
// (reason_poisoned, topic_poisoned, handler_poisoned, subscriber_poisoned)
// and [tiered.KeyRedisStream].
const (
	// KeyEntryID is the ID of the stream entry ("1700000000000-0"): the
	// same key as [tiered.KeyRedisEntryID], which every message that
	// failed carries too.
	KeyEntryID = tiered.KeyRedisEntryID
	// KeyBase64Fields lists, comma-separated, the fields of the entry that
	// the payload holds in base64 (standard encoding), name and value: a
	// field whose name or value is not valid UTF-8 is in the payload's
	// JSON object under the base64 of its name, with the base64 of its
	// value, and the list names it by that base64 name (which has no
	// comma). Every other field is in the payload as it is.
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
	decode := values
	if _, ok := values[wmredis.UUIDHeaderKey]; !ok && watermillLayout(values) {
		// Watermill's fields without its UUID (a producer that is not
		// Watermill): a message whose UUID the subscriber derives from
		// where it was consumed.
		decode = maps.Clone(values)
		decode[wmredis.UUIDHeaderKey] = ""
	}
	msg, err = wmredis.DefaultMarshallerUnmarshaller{}.Unmarshal(decode)
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

// watermillLayout reports whether an entry has a payload and no field that
// Watermill's marshaller does not write, so that it is a message even
// without Watermill's UUID field. Anything else without the UUID field is
// not taken for a message: it goes to the dead-letter stream whole.
func watermillLayout(values map[string]any) bool {
	if _, ok := values["payload"]; !ok {
		return false
	}
	for k := range values {
		if k != "payload" && k != "metadata" {
			return false
		}
	}
	return true
}

// marker makes the stand-in for an entry that could not be decoded: the
// entry's fields as JSON for payload. The subscriber gives it its UUID,
// derived from the stream and the entry ID.
func (u unmarshaller) marker(id string, values map[string]any, cause error) *message.Message {
	payload, b64 := fieldsJSON(values)
	msg := message.NewMessage("", payload)
	msg.Metadata.Set(markerKey, u.nonce)
	msg.Metadata.Set(reasonKey, cause.Error())
	msg.Metadata.Set(entryIDKey, id)
	if len(b64) > 0 {
		msg.Metadata.Set(KeyBase64Fields, strings.Join(b64, ","))
	}
	return msg
}

// fieldsJSON encodes an entry's fields as one JSON object of strings, and
// returns the (base64) names of the fields it encoded in base64 (see
// [KeyBase64Fields]), sorted, so that nothing is lost: JSON strings hold
// only valid UTF-8.
func fieldsJSON(values map[string]any) ([]byte, []string) {
	raw := make(map[string]string, len(values))
	for k, v := range values {
		s, ok := v.(string)
		if !ok {
			s = fmt.Sprint(v)
		}
		raw[k] = s
	}
	enc := base64.StdEncoding.EncodeToString
	encoded := map[string]bool{}
	for k, v := range raw {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			encoded[k] = true
		}
	}
	// A base64 name may equal the name of a field kept as it is; encode
	// that one too, until no two fields share a name in the payload
	// (base64 names never collide with each other). Each round encodes at
	// least one more field, so this ends.
	for {
		taken := make(map[string]bool, len(encoded))
		for k := range encoded {
			taken[enc([]byte(k))] = true
		}
		more := false
		for k := range raw {
			if !encoded[k] && taken[k] {
				encoded[k] = true
				more = true
			}
		}
		if !more {
			break
		}
	}
	fields := make(map[string]string, len(raw))
	var b64 []string
	for k, v := range raw {
		if encoded[k] {
			name := enc([]byte(k))
			fields[name] = enc([]byte(v))
			b64 = append(b64, name)
			continue
		}
		fields[k] = v
	}
	sort.Strings(b64)
	out, err := json.Marshal(fields)
	if err != nil { // a map of valid UTF-8 strings always encodes
		out = []byte("{}")
	}
	return out, b64
}
