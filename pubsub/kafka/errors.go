package kafka

import (
	"errors"
	"fmt"

	"github.com/IBM/sarama"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Sentinel errors. Compare with [errors.Is].
var (
	// ErrClosed is returned by Subscribe on a closed subscriber and by
	// Publish on a closed backend.
	ErrClosed = errors.New("kafka: closed")

	// ErrNoAnswer is wrapped by the errors of [New], [Open] and
	// [Backend.Prepare] when the brokers did not answer before the
	// context ended (a hung broker, a wrong port, a firewall that drops
	// packets).
	ErrNoAnswer = errors.New("kafka brokers did not answer in time")
)

// unpublishableErrors are the broker's and Sarama's errors after which
// producing the same record again cannot succeed. Every other error is
// taken as temporary (a broker down, a leader election, a timeout).
var unpublishableErrors = []error{
	sarama.ErrMessageSizeTooLarge,    // the record is larger than the topic allows
	sarama.ErrMessageSetSizeTooLarge, // RECORD_LIST_TOO_LARGE
	sarama.ErrInvalidRecord,
	sarama.ErrInvalidTimestamp,
	sarama.ErrUnknownTopicOrPartition, // after Sarama's own metadata retries: deleted, or never created
	sarama.ErrInvalidTopic,
	sarama.ErrTopicAuthorizationFailed,
	sarama.ErrClusterAuthorizationFailed,
	sarama.ErrTransactionalIDAuthorizationFailed,
	sarama.ErrPolicyViolation,
	sarama.ErrInvalidConfig,
	sarama.ErrInvalidRequiredAcks,
	sarama.ErrUnsupportedForMessageFormat,
	sarama.ErrUnsupportedVersion,
}

// classify wraps err with [tiered.ErrUnpublishable] when producing the
// same record again cannot succeed.
func classify(err error) error {
	if err == nil || errors.Is(err, tiered.ErrUnpublishable) {
		return err
	}
	var cfg sarama.ConfigurationError // Sarama's local checks, such as Producer.MaxMessageBytes
	var enc sarama.PacketEncodingError
	if errors.As(err, &cfg) || errors.As(err, &enc) {
		return fmt.Errorf("%w: %w", tiered.ErrUnpublishable, err)
	}
	for _, e := range unpublishableErrors {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", tiered.ErrUnpublishable, err)
		}
	}
	return err
}
