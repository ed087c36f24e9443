package kafka_test

import (
	"testing"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
)

// What the backend writes, watermill-kafka's DefaultMarshaler reads back
// as the same message, and the other way round: the record format is
// watermill-kafka's.
func TestMarshal_watermillKafkaFormat(t *testing.T) {
	msg := message.NewMessage("uuid-1", []byte("payload"))
	msg.Metadata.Set("a", "1")
	msg.Metadata.Set("retry_attempt", "2")
	msg.Metadata.Set("empty", "")
	b := kafka.NewMarshalerForTest()
	rec, err := b.Marshal("topic", msg)
	require.NoError(t, err)
	want, err := wkafka.DefaultMarshaler{}.Marshal("topic", msg)
	require.NoError(t, err)
	require.ElementsMatch(t, want.Headers, rec.Headers)

	value, err := rec.Value.Encode()
	require.NoError(t, err)
	var headers []*sarama.RecordHeader
	for i := range rec.Headers {
		headers = append(headers, &rec.Headers[i])
	}
	cm := &sarama.ConsumerMessage{Value: value, Headers: headers}
	back, err := wkafka.DefaultMarshaler{}.Unmarshal(cm)
	require.NoError(t, err)
	require.Equal(t, msg.UUID, back.UUID)
	require.Equal(t, msg.Metadata, back.Metadata)
	require.Equal(t, "payload", string(back.Payload))
	ours := kafka.UnmarshalForTest(cm)
	require.Equal(t, back.UUID, ours.UUID)
	require.Equal(t, back.Metadata, ours.Metadata)
	require.Equal(t, back.Payload, ours.Payload)

	reserved := message.NewMessage("u", nil)
	reserved.Metadata.Set(wkafka.UUIDHeaderKey, "x")
	_, err = b.Marshal("topic", reserved)
	require.ErrorContains(t, err, "reserved")
}
