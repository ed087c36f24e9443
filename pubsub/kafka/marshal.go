package kafka

import (
	"context"
	"strconv"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// marshaler writes messages as watermill-kafka's DefaultMarshaler does and
// sets the record key: the original key a tier or dead-letter copy
// carries, else the configured PartitionKey.
//
// A copy's first hop (it carries retry metadata but no origin yet) takes
// its origin from the context of the message it was copied from, where
// watermill-kafka's subscriber put the consumed record's partition, offset,
// timestamp and key; the retry middleware keeps that context's values.
// Recording the origin only when a message fails keeps the happy path from
// paying for it.
type marshaler struct {
	partitionKey wkafka.GeneratePartitionKey
}

func (m marshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	if _, retry := msg.Metadata[tiered.KeyAttempt]; retry {
		if _, has := msg.Metadata[tiered.KeyKafkaPartition]; !has {
			recordOrigin(msg)
		}
	}
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

// recordOrigin writes into msg's metadata the origin that watermill-kafka's
// subscriber left in its context, if any.
func recordOrigin(msg *message.Message) {
	o, ok := originFromCtx(msg.Context())
	if !ok {
		return
	}
	msg.Metadata.Set(tiered.KeyKafkaPartition, strconv.FormatInt(int64(o.Partition), 10))
	msg.Metadata.Set(tiered.KeyKafkaOffset, strconv.FormatInt(o.Offset, 10))
	if o.TimestampMs != 0 {
		msg.Metadata.Set(tiered.KeyKafkaTimestamp, strconv.FormatInt(o.TimestampMs, 10))
	}
	if o.Key != nil {
		msg.Metadata.Set(tiered.KeyKafkaKey, string(o.Key))
	}
}

// originFromCtx reads the consumed record's origin from the context
// watermill-kafka's subscriber gives each message.
func originFromCtx(ctx context.Context) (Origin, bool) {
	p, ok := wkafka.MessagePartitionFromCtx(ctx)
	if !ok {
		return Origin{}, false
	}
	o := Origin{Partition: p}
	o.Offset, _ = wkafka.MessagePartitionOffsetFromCtx(ctx)
	if ts, ok := wkafka.MessageTimestampFromCtx(ctx); ok && !ts.IsZero() {
		o.TimestampMs = ts.UnixMilli()
	}
	if key, ok := wkafka.MessageKeyFromCtx(ctx); ok && key != nil {
		o.Key = key
	}
	return o, true
}

// Origin is where a message was first consumed: the partition, offset,
// timestamp and key of the record on the handler's own topic.
type Origin struct {
	Partition int32
	Offset    int64
	// Timestamp in Unix milliseconds; 0 when the record had none.
	TimestampMs int64
	// Key is the record key; nil when the record had none.
	Key []byte
}

// ReadOrigin returns where a message was first consumed: from its metadata
// on tier and dead-letter messages, from its context (watermill-kafka's)
// on a handler's own topic. It returns false when neither records one.
func ReadOrigin(msg *message.Message) (Origin, bool) {
	if _, has := msg.Metadata[tiered.KeyKafkaPartition]; !has {
		return originFromCtx(msg.Context())
	}
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
