package kafka

import (
	"fmt"
	"strings"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// marshaler writes messages as watermill-kafka's DefaultMarshaler does and
// sets the record key: the original key a tier or dead-letter copy
// carries (tiered.KeyKafkaKey), else the configured PartitionKey.
type marshaler struct {
	partitionKey wkafka.GeneratePartitionKey
}

// marshalRecord writes msg as wkafka.DefaultMarshaler does (the UUID
// header first, then one header per metadata key), with every header's
// bytes in one allocation instead of two per header: a tier copy carries
// some fifteen keys.
func marshalRecord(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	if msg.Metadata.Get(wkafka.UUIDHeaderKey) != "" {
		return nil, fmt.Errorf("metadata %s is reserved by watermill for message UUID", wkafka.UUIDHeaderKey)
	}
	size := len(wkafka.UUIDHeaderKey) + len(msg.UUID)
	for k, v := range msg.Metadata {
		size += len(k) + len(v)
	}
	buf := make([]byte, 0, size)
	headers := make([]sarama.RecordHeader, 0, len(msg.Metadata)+1)
	add := func(k, v string) {
		start := len(buf)
		buf = append(buf, k...)
		mid := len(buf)
		buf = append(buf, v...)
		headers = append(headers, sarama.RecordHeader{Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]})
	}
	add(wkafka.UUIDHeaderKey, msg.UUID)
	for k, v := range msg.Metadata {
		add(k, v)
	}
	return &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(msg.Payload), Headers: headers}, nil
}

func (m marshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	rec, err := marshalRecord(topic, msg)
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

// unmarshalRecord reads cm as wkafka.DefaultMarshaler does, with the text
// of every header in one allocation instead of two per header.
func unmarshalRecord(cm *sarama.ConsumerMessage) *message.Message {
	size := 0
	for _, h := range cm.Headers {
		size += len(h.Key) + len(h.Value)
	}
	var b strings.Builder
	b.Grow(size)
	for _, h := range cm.Headers {
		b.Write(h.Key)
		b.Write(h.Value)
	}
	all := b.String()
	var uuid string
	md := make(message.Metadata, len(cm.Headers))
	at := 0
	for _, h := range cm.Headers {
		k := all[at : at+len(h.Key)]
		at += len(h.Key)
		v := all[at : at+len(h.Value)]
		at += len(h.Value)
		if k == wkafka.UUIDHeaderKey {
			uuid = v
		} else {
			md[k] = v
		}
	}
	msg := message.NewMessage(uuid, cm.Value)
	msg.Metadata = md
	return msg
}
