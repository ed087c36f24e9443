package dlq

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// jsonMessage is the JSON form of a [Message].
type jsonMessage struct {
	Topic     string    `json:"topic"`
	ID        string    `json:"id"`
	Partition *int32    `json:"partition,omitempty"`
	Offset    *int64    `json:"offset,omitempty"`
	Time      time.Time `json:"time"`
	UUID      string    `json:"uuid,omitempty"`

	Key         *string `json:"key,omitempty"`
	KeyEncoding string  `json:"key_encoding,omitempty"`

	Metadata       map[string]string `json:"metadata"`
	MetadataBase64 []string          `json:"metadata_base64,omitempty"`

	Payload         string `json:"payload"`
	PayloadEncoding string `json:"payload_encoding"`

	Reason      string            `json:"reason,omitempty"`
	Foreign     bool              `json:"foreign,omitempty"`
	Raw         map[string]string `json:"raw,omitempty"`
	RawBase64   []string          `json:"raw_base64,omitempty"`
	DecodeError string            `json:"decode_error,omitempty"`
}

// MarshalJSON writes m as one JSON object, the form of [Client.Export]:
//
//	{"topic":"orders.billing.dlq","id":"0/42","partition":0,"offset":42,
//	 "time":"2026-01-02T15:04:05.123Z","uuid":"…","key":"customer-7",
//	 "metadata":{"reason_poisoned":"…",…},"payload":"{\"order\":1}",
//	 "payload_encoding":"text","reason":"…"}
//
// The payload is text when it is valid UTF-8 and base64 (standard
// encoding) otherwise, as payload_encoding says; the key likewise
// (key_encoding is "base64" when it is). Metadata values and raw fields
// that are not valid UTF-8 are base64, their names listed in
// metadata_base64 and raw_base64. partition and offset are set on Kafka
// only; raw and decode_error only for a Redis entry Watermill cannot
// decode.
func (m *Message) MarshalJSON() ([]byte, error) {
	j := jsonMessage{
		Topic: m.Topic, ID: m.ID, Time: m.Time.UTC(), UUID: m.UUID,
		Reason: m.Reason(), Foreign: m.Foreign, DecodeError: m.DecodeError,
	}
	if strings.Contains(m.ID, "/") { // a Kafka ID
		p, o := m.Partition, m.Offset
		j.Partition, j.Offset = &p, &o
	}
	if m.Key != nil {
		k, enc := textOrBase64(m.Key)
		j.Key = &k
		if enc == "base64" {
			j.KeyEncoding = enc
		}
	}
	j.Payload, j.PayloadEncoding = textOrBase64(m.Payload)
	j.Metadata, j.MetadataBase64 = stringsOrBase64(m.Metadata)
	if m.Raw != nil {
		j.Raw, j.RawBase64 = stringsOrBase64(m.Raw)
	}
	return json.Marshal(j)
}

func textOrBase64(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), "text"
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

func stringsOrBase64(in map[string]string) (map[string]string, []string) {
	out := make(map[string]string, len(in))
	var b64 []string
	for k, v := range in {
		if !utf8.ValidString(v) || !utf8.ValidString(k) {
			// A name that is not UTF-8 is written base64 too, so that
			// it survives JSON.
			if !utf8.ValidString(k) {
				k = base64.StdEncoding.EncodeToString([]byte(k))
			}
			v = base64.StdEncoding.EncodeToString([]byte(v))
			b64 = append(b64, k)
		}
		out[k] = v
	}
	slices.Sort(b64)
	return out, b64
}

// Export writes the messages of topic that filter selects to w as JSON
// Lines (one [Message.MarshalJSON] object per line), streaming, and
// returns how many it wrote.
func (c *Client) Export(ctx context.Context, w io.Writer, topic string, filter Filter) (int64, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	var n int64
	for msg, err := range c.Messages(ctx, topic, filter) {
		if err != nil {
			_ = bw.Flush()
			return n, err
		}
		if err := enc.Encode(msg); err != nil {
			return n, err
		}
		n++
	}
	return n, bw.Flush()
}
