package kafka

import (
	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Marshaler is the backend's record writer, for tests.
type Marshaler interface {
	Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error)
}

// NewMarshalerForTest returns the backend's marshaler without a partition
// key.
func NewMarshalerForTest() Marshaler { return marshaler{} }

// UnmarshalForTest reads a record as the backend's consumer does with the
// default unmarshaler.
func UnmarshalForTest(cm *sarama.ConsumerMessage) *message.Message { return unmarshalRecord(cm) }
