// Package dlqtest writes dead letters for tests, exactly as the retry
// middleware writes them after a message's last attempt, without running
// a handler.
package dlqtest

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Letter describes one dead letter. The zero Letter is a plain dead
// letter with a UUID, payload and reason of its own.
type Letter struct {
	// UUID is the message UUID; a new one when empty.
	UUID string
	// Payload; {"order":i} when empty.
	Payload string
	// Reason is the handler's error; "payment gateway timeout" when
	// empty. The poison reason says "attempt 3 of 3 failed, no attempts
	// left: " before it.
	Reason string
	// Key is the Kafka record key (tiered.KeyKafkaKey).
	Key string
	// Redrives is the redrive count it carries (tiered.KeyRedriveCount).
	Redrives int
	// User is the value of the user metadata key "user_note" ("note-"+User).
	User string
	// Stub makes it a dead-letter stub: no payload, tiered.KeyPayloadDropped.
	Stub bool
}

// ReasonPrefix is what the middleware writes before the handler's error.
const ReasonPrefix = "attempt 3 of 3 failed, no attempts left: "

// Messages returns letters as the messages the retry middleware
// publishes to topics.DLQ, and their UUIDs.
func Messages(topics tiered.Topics, letters ...Letter) ([]*message.Message, []string) {
	var msgs []*message.Message
	var uuids []string
	now := time.Now()
	for i, l := range letters {
		if l.UUID == "" {
			l.UUID = watermill.NewUUID()
		}
		if l.Payload == "" {
			l.Payload = fmt.Sprintf(`{"order":%d}`, i)
		}
		if l.Reason == "" {
			l.Reason = "payment gateway timeout"
		}
		msg := message.NewMessage(l.UUID, []byte(l.Payload))
		msg.Metadata.Set("user_note", "note-"+l.User)
		reason := ReasonPrefix + l.Reason
		tiered.Info{Attempt: 3, OriginalTopic: topics.Main, Handler: topics.Handler, FirstFailure: now.Add(-time.Minute), LastFailure: now, LastError: reason}.Write(msg.Metadata)
		msg.Metadata.Set(wmiddleware.ReasonForPoisonedKey, reason)
		if len(topics.Tiers) > 0 {
			msg.Metadata.Set(wmiddleware.PoisonedTopicKey, topics.Tiers[len(topics.Tiers)-1])
		}
		msg.Metadata.Set(wmiddleware.PoisonedHandlerKey, topics.Handler)
		msg.Metadata.Set(wmiddleware.PoisonedSubscriberKey, "tiered.Subscriber")
		msg.Metadata.Set(tiered.KeyKafkaPartition, "0")
		msg.Metadata.Set(tiered.KeyKafkaOffset, strconv.Itoa(i))
		if l.Key != "" {
			msg.Metadata.Set(tiered.KeyKafkaKey, l.Key)
		}
		if l.Stub {
			msg.Payload = nil
			msg.Metadata.Set(tiered.KeyPayloadDropped, "2000000")
		}
		if l.Redrives > 0 {
			msg.Metadata.Set(tiered.KeyRedriveCount, strconv.Itoa(l.Redrives))
		}
		msgs = append(msgs, msg)
		uuids = append(uuids, l.UUID)
	}
	return msgs, uuids
}

// Write publishes letters to topics.DLQ with backend's publisher and
// returns their UUIDs.
func Write(t testing.TB, backend tiered.Backend, topics tiered.Topics, letters ...Letter) []string {
	t.Helper()
	msgs, uuids := Messages(topics, letters...)
	if err := backend.Publisher().Publish(topics.DLQ, msgs...); err != nil {
		t.Fatalf("write %d dead letters to %s: %v", len(msgs), topics.DLQ, err)
	}
	return uuids
}
