package dlq

import (
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Message is one message of a topic as it is stored, read without
// consuming it.
//
// A message written by Watermill (by the retry middleware, or any
// Watermill publisher of the backend) has its UUID, payload and metadata.
// Anything else is listed too, never skipped and never an error: a Kafka
// record without Watermill's UUID header (Foreign; its headers are the
// metadata), or a Redis entry that Watermill cannot decode (Foreign, with
// its fields in Raw and the reason in DecodeError).
type Message struct {
	// Topic is the topic (Redis: stream) the message is in.
	Topic string
	// ID says where the message is: "partition/offset" on Kafka
	// ("0/42"), the entry ID on Redis ("1700000000000-0"). [Client.Get]
	// takes it.
	ID string
	// Partition and Offset locate a Kafka record; both 0 on Redis.
	Partition int32
	Offset    int64
	// Time is when the broker stored the message: the record timestamp on
	// Kafka (the producer's clock, unless the topic uses
	// LogAppendTime), the entry ID's time on Redis.
	Time time.Time

	// UUID is the Watermill message UUID; "" for a foreign record.
	UUID string
	// Key is the Kafka record key; nil on Redis.
	Key []byte
	// Payload is the message payload (a Kafka record's value).
	Payload []byte
	// Metadata is the message's metadata (Kafka: the record headers but
	// Watermill's UUID header).
	Metadata message.Metadata

	// Foreign is true for what Watermill did not write: a Kafka record
	// without Watermill's UUID header, a Redis entry Watermill cannot
	// decode.
	Foreign bool
	// Raw holds the fields of a Redis entry that Watermill cannot decode;
	// nil otherwise.
	Raw map[string]string
	// DecodeError says why Raw could not be decoded.
	DecodeError string
}

// Reason is why the message was dead-lettered: Watermill's poison reason
// (reason_poisoned), "" when it has none.
func (m *Message) Reason() string { return m.Metadata.Get(wmiddleware.ReasonForPoisonedKey) }

// Handler is the handler the message failed in (retry_handler, else
// Watermill's handler_poisoned).
func (m *Message) Handler() string {
	if h := m.Metadata.Get(tiered.KeyHandler); h != "" {
		return h
	}
	return m.Metadata.Get(wmiddleware.PoisonedHandlerKey)
}

// OriginalTopic is the handler's own topic, where the message was first
// consumed (retry_original_topic).
func (m *Message) OriginalTopic() string { return m.Metadata.Get(tiered.KeyOriginalTopic) }

// Attempts is how many attempts failed (retry_attempt), 0 when unknown.
func (m *Message) Attempts() int {
	n, _ := strconv.Atoi(m.Metadata.Get(tiered.KeyAttempt))
	return max(n, 0)
}

// Redrives is how many times the message was redriven before
// (tiered.KeyRedriveCount), 0 when never or unreadable.
func (m *Message) Redrives() int {
	n, _ := strconv.Atoi(m.Metadata.Get(tiered.KeyRedriveCount))
	return max(n, 0)
}

// DueAt is the due time the message carries (tier messages), zero when
// it carries none or it does not parse.
func (m *Message) DueAt() time.Time {
	due, ok, err := tiered.DueAt(m.Metadata)
	if !ok || err != nil {
		return time.Time{}
	}
	return due
}
