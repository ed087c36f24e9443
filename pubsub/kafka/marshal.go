package kafka

import (
	"strconv"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// marshaler writes messages as watermill-kafka's DefaultMarshaler does and
// sets the record key: the original key a tier or dead-letter copy
// carries, else the configured PartitionKey.
type marshaler struct {
	partitionKey wkafka.GeneratePartitionKey
}

func (m marshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	rec, err := wkafka.DefaultMarshaler{}.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	if key, ok := msg.Metadata[tiered.KeyKafkaKey]; ok {
		rec.Key = sarama.ByteEncoder(key)
	} else if m.partitionKey != nil {
		key, err := m.partitionKey(topic, msg)
		if err != nil {
			return nil, err
		}
		rec.Key = sarama.StringEncoder(key)
	}
	return rec, nil
}

// unmarshaler reads records as watermill-kafka's DefaultMarshaler does and
// records where a message came from. On a handler's main topic (one that
// went through Prepare) the origin replaces whatever the headers claimed;
// elsewhere (a dead-letter reader, say) an origin already recorded is kept.
// Tier subscriptions keep the origin recorded at the main topic.
type unmarshaler struct {
	stamp   bool // record the origin
	replace bool // even when the headers carry one
}

// originKeys are the metadata keys that record the original record.
var originKeys = [...]string{tiered.KeyKafkaPartition, tiered.KeyKafkaOffset, tiered.KeyKafkaTimestamp, tiered.KeyKafkaKey}

func (u unmarshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	msg, err := wkafka.DefaultMarshaler{}.Unmarshal(rec)
	if err != nil || !u.stamp {
		return msg, err
	}
	if _, has := msg.Metadata[tiered.KeyKafkaPartition]; has && !u.replace {
		return msg, nil
	}
	for _, k := range originKeys {
		delete(msg.Metadata, k)
	}
	msg.Metadata.Set(tiered.KeyKafkaPartition, strconv.FormatInt(int64(rec.Partition), 10))
	msg.Metadata.Set(tiered.KeyKafkaOffset, strconv.FormatInt(rec.Offset, 10))
	if !rec.Timestamp.IsZero() {
		msg.Metadata.Set(tiered.KeyKafkaTimestamp, strconv.FormatInt(rec.Timestamp.UnixMilli(), 10))
	}
	if rec.Key != nil {
		msg.Metadata.Set(tiered.KeyKafkaKey, string(rec.Key))
	}
	return msg, nil
}

// Origin is where a message was first consumed, as recorded in its
// metadata by the backend.
type Origin struct {
	Partition int32
	Offset    int64
	// Timestamp in Unix milliseconds; 0 when the record had none.
	TimestampMs int64
	// Key is the record key; nil when the record had none.
	Key []byte
}

// ReadOrigin returns the origin a message's metadata records, and false
// when it records none (the message was not consumed from Kafka through
// this backend).
func ReadOrigin(msg *message.Message) (Origin, bool) {
	p, err1 := strconv.ParseInt(msg.Metadata.Get(tiered.KeyKafkaPartition), 10, 32)
	o, err2 := strconv.ParseInt(msg.Metadata.Get(tiered.KeyKafkaOffset), 10, 64)
	if err1 != nil || err2 != nil {
		return Origin{}, false
	}
	origin := Origin{Partition: int32(p), Offset: o}
	origin.TimestampMs, _ = strconv.ParseInt(msg.Metadata.Get(tiered.KeyKafkaTimestamp), 10, 64)
	if key, ok := msg.Metadata[tiered.KeyKafkaKey]; ok {
		origin.Key = []byte(key)
	}
	return origin, true
}
