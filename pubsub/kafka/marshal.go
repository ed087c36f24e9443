package kafka

import (
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
